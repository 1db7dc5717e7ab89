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


def weight_ranges(graph: ModelGraph) -> dict[str, WeightRange]:
    """Per-channel amax of every Conv/ConvTranspose/Gemm/MatMul weight initializer."""
    ranges = {}
    for spec in graph.weights:
        if spec.name in ranges:
            continue
        ranges[spec.name] = WeightRange(spec.op_type, spec.axis,
                                        per_channel_amax(graph.initializer(spec.name), spec.axis))
    return ranges
