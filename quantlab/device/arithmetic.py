"""QuantizeLinear and DequantizeLinear as ONNX Runtime's CPU kernels compute them, in torch.

The Q/DQ model of compare, sweep, tune and auto is the precision plan TensorRT builds; quantlab's
CPU engine runs it as written (``quantlab.evaluation.engine``). On a device the same rules hold:

- QuantizeLinear: ``x / scale`` in float32 (a division, not a product with the reciprocal:
  the two differ in the last bit, and then in the rounding of a tie), rounded half to even,
  plus the zero point, clipped to the integer type's range, stored as that type. An fp16 input is
  widened to float32 first (exact), as ONNX Runtime does.
- DequantizeLinear: ``(q - zero_point) * scale``, the difference exact in int32, one float32
  rounding for the product, then rounded to the scale's type (fp16 in a typed remainder).
- Per-axis scales broadcast along ``axis``.

Everything else in a Q/DQ graph is float arithmetic, which differs between ONNX Runtime's and
cuDNN's kernels by float rounding only: the tests compare the two engines with that tolerance.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535)}


def _along(param, x, axis: int):
    """``param`` shaped to broadcast against ``x`` along ``axis`` (a scalar stays as it is)."""
    if param.dim() == 0 or param.numel() == 1:
        return param.reshape(())
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return param.reshape(shape)


def quantize_linear(x, scale, zero_point=None, axis: int = 1, saturate: int = 1):
    """ONNX QuantizeLinear in torch (int8 output unless the zero point says otherwise)."""
    import torch

    target = zero_point.dtype if zero_point is not None else torch.int8
    name = str(target).replace("torch.", "")
    if name not in _RANGES:
        raise NotImplementedError(f"QuantizeLinear to {name} is not emulated (int8, uint8, int16, uint16 are)")
    low, high = _RANGES[name]
    scale = _along(scale.float(), x, axis)
    q = torch.round(x.float() / scale)
    if zero_point is not None:
        q += _along(zero_point.float(), x, axis)
    return q.clamp_(low, high).to(target)


def dequantize_linear(q, scale, zero_point=None, axis: int = 1):
    """ONNX DequantizeLinear in torch: exact integer difference, one float32 product, the scale's type."""
    import torch

    shifted = q.to(torch.int32)
    if zero_point is not None:
        shifted = shifted - _along(zero_point.to(torch.int32), q, axis)
    out = shifted.float() * _along(scale.float(), q, axis)
    return out if scale.dtype == torch.float32 else out.to(scale.dtype)


def dequantize_numpy(q: np.ndarray, scale: np.ndarray, zero_point: Optional[np.ndarray] = None,
                     axis: int = 1) -> np.ndarray:
    """DequantizeLinear of stored initializers (a weight's), on the host, by the same rule."""
    shifted = q.astype(np.int32)
    scale = np.asarray(scale)

    def along(param):
        if param.size == 1:
            return param.reshape(())
        shape = [1] * q.ndim
        shape[axis % q.ndim] = -1
        return param.reshape(shape)

    if zero_point is not None:
        shifted = shifted - along(np.asarray(zero_point).astype(np.int32))
    out = shifted.astype(np.float32) * along(scale.astype(np.float32))
    return out.astype(scale.dtype)
