"""Weight ranges: non-saturating max |w| per output channel.

Weights are known exactly, so nothing is clipped: amax of channel c is the largest |w| in it.
The axis per op type comes from :func:`quantlab.graph._weight_spec` (Conv 0, ConvTranspose 1,
Gemm 0 or 1 by transB, MatMul the last axis).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import ModelGraph


@dataclass(frozen=True)
class WeightRange:
    op_type: str
    axis: int
    amax: np.ndarray  # float64, one per output channel


def per_channel_amax(weight: np.ndarray, axis: int) -> np.ndarray:
    """max |w| over every axis but ``axis``."""
    w = np.abs(np.asarray(weight, dtype=np.float64))
    axis = axis % w.ndim
    other = tuple(a for a in range(w.ndim) if a != axis)
    return w.max(axis=other) if other else w


def quantize_weight(weight: np.ndarray, channel_amax: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """INT8 values and float32 scales of a weight, per output channel (axis ``axis``): scale =
    float32(amax / 127), values round(w / scale) clipped to [-127, 127]. An all-zero channel has no
    range; any scale represents its zeros exactly, so it gets amax 1. The one definition that the
    Q/DQ export writes and that ``auto`` computes with."""
    w = np.asarray(weight, np.float32)
    axis = axis % w.ndim
    amax = np.asarray(channel_amax, np.float64)
    scales = (np.where(amax > 0, amax, 1.0) / 127.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scales.reshape(shape)), -127, 127).astype(np.int8)
    return q, scales


def weight_ranges(graph: ModelGraph) -> dict[str, WeightRange]:
    """Per-channel amax of every Conv/ConvTranspose/Gemm/MatMul weight initializer."""
    ranges = {}
    for spec in graph.weights:
        if spec.name in ranges:
            continue
        ranges[spec.name] = WeightRange(spec.op_type, spec.axis,
                                        per_channel_amax(graph.initializer(spec.name), spec.axis))
    return ranges
