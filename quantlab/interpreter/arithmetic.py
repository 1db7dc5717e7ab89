"""The arithmetic ``auto`` judges ranges with: exactly what the exported Q/DQ model computes."""

from __future__ import annotations

import numpy as np

from ..weights import per_channel_amax, quantize_weight


def fake_quantize(x: np.ndarray, amax: float) -> np.ndarray:
    """QuantizeLinear -> DequantizeLinear of ``x`` with scale float32(amax / 127), zero point 0,
    computed in float32 as ONNX Runtime and TensorRT do (x / scale, round half to even, saturate
    to int8, times scale)."""
    scale = np.float32(amax / 127.0)
    out = np.divide(np.asarray(x, np.float32), scale, dtype=np.float32)
    np.rint(out, out=out)
    np.clip(out, -128, 127, out=out)
    out *= scale
    return out


def fake_quantize_weight(w: np.ndarray, axis: int) -> np.ndarray:
    """The dequantized INT8 weight quantlab's Q/DQ export computes (per-channel max |w|): its
    DequantizeLinear, int8 times the float32 scale."""
    w = np.asarray(w, np.float32)
    q, scales = quantize_weight(w, per_channel_amax(w, axis), axis)
    shape = [1] * w.ndim
    shape[axis % w.ndim] = -1
    return q.astype(np.float32) * scales.reshape(shape)


def histogram_error(counts: np.ndarray, edges: np.ndarray, amax: float) -> float:
    """Relative squared error of fake-quantizing a tensor with ``amax``, from its |x| histogram
    (each bin's values at its centre): the criterion for tensors no quantized layer reads."""
    counts = np.asarray(counts, np.float64)
    centers = (np.asarray(edges[1:], np.float64) + np.asarray(edges[:-1], np.float64)) / 2
    signal = float(np.dot(counts, centers ** 2))
    if signal == 0:
        return 0.0
    scale = amax / 127.0
    quantized = np.clip(np.rint(centers / scale), -128, 127) * scale
    return float(np.dot(counts, (quantized - centers) ** 2)) / signal


def energy(x: np.ndarray) -> float:
    """Sum of squares, accumulated in float64 (cast in buffered chunks: no float64 copy)."""
    flat = np.asarray(x).ravel()
    return float(np.einsum("i,i->", flat, flat, dtype=np.float64))


def relative_error(got: np.ndarray, reference: np.ndarray) -> float:
    """||got - reference||^2 / ||reference||^2 (the error itself when the reference is all zero)."""
    return energy(got - reference) / (energy(reference) or 1.0)
