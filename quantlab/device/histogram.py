"""The histogram fold of :mod:`quantlab.histogram`, computed where the activations are (torch).

Only histograms cross to the host: per run, each measured tensor is reduced on its device to
its counts on the power-of-two grid, its largest finite magnitude, NaN and Inf counts and its
extremes in the order where -0.0 < +0.0; one copy per run brings all of them back, and
:func:`to_host` turns them into :class:`~quantlab.histogram.TensorHistogram` objects that merge
into the collection exactly as the CPU kernel's do.

Why the bins are the CPU kernel's, bit for bit, on any value (``tests/test_device.py`` checks
bin edges, the largest float below a power of two, subnormals, signed zeros, NaN and Inf):

- The range exponent is read from the bits of the largest finite magnitude (``frexp``, which is
  exact, subnormals included), not from a float ``log2``.
- A value's bin is ``floor(|x| * 2**(log2(bins) - exponent))``, the CPU rule. The scale is a
  power of two built from its exponent bits, applied in two factors so that each is a normal
  float even when the range is tiny (all values below ``2**-112``); multiplying by a power of two
  is exact unless the product is subnormal, and a subnormal product is far below 1, so its floor
  is 0 either way. Truncation to an integer then is the floor.
- NaN and Inf are zeroed before scaling, so they land in bin 0, and their number is taken out of
  bin 0 afterwards: they are counted apart, as on the CPU.
- No host synchronisation happens per tensor: the exponent stays on the device and feeds the
  scale directly, so the GPU works through a whole run's tensors without waiting on Python.

Integer counts are summed with integer atomics, whose result does not depend on their order:
the same values give the same counts on every run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..histogram import EMPTY_EXPONENT, TensorHistogram, check_bins
from . import kernels


@dataclass(frozen=True)
class _FloatBits:
    """How one float width is laid out: the integer of the same width, the mask of the magnitude
    bits, the bits of +inf, the mantissa bits and the exponent bias, and the range of normal
    exponents a power-of-two scale may take."""

    ints: object
    magnitude: int
    inf: int
    mantissa: int
    bias: int
    low: int
    high: int


def _layouts(torch) -> dict:
    return {
        torch.float32: _FloatBits(torch.int32, 0x7FFFFFFF, 0x7F800000, 23, 127, -126, 127),
        torch.float64: _FloatBits(torch.int64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000, 52, 1023, -1022, 1023),
    }


@dataclass
class DeviceFold:
    """One tensor's statistics of one run, still on its device (0-d tensors and the counts)."""

    counts: object  # int64 [bins]
    top: object  # the bits of the largest finite magnitude (0: none, or all zero)
    exponent: object  # frexp exponent of that magnitude
    nan: object
    inf: object
    low: object  # the least finite value, as an order key (see _key); > high when none is finite
    high: object
    dtype: object  # float32 or float64: how the keys read back


def floats(values):
    """``values`` as the 1-D float tensor a histogram reads, as :func:`quantlab.histogram.flat_values`
    does on the host: float16 and bfloat16 as float32 (exact), integers and booleans as float64."""
    import torch

    flat = values.reshape(-1)
    if flat.dtype in (torch.float16, torch.bfloat16):
        return flat.float()
    if not flat.dtype.is_floating_point:
        return flat.double()
    return flat


def _key(bits, layout):
    """An integer per value that orders like the floats with -0.0 < +0.0: a negative float's bits
    read as a signed integer order the wrong way round, so their magnitude bits are flipped."""
    return bits.where(bits >= 0, bits ^ layout.magnitude)


def fold(values, bins: int, fused: Optional[bool] = None) -> DeviceFold:
    """The statistics of ``values`` (a torch tensor, any shape) on its own device, without waiting
    for it: see the module docstring for why the counts equal the CPU kernel's.

    ``fused``: the two Triton kernels of :mod:`quantlab.device.kernels` (None: where they apply,
    float32 on CUDA with at most 4096 bins, unless ``QUANTLAB_DEVICE_FOLD=torch``); else torch ops."""
    import torch

    bins = check_bins(bins)
    flat = floats(values)
    if fused is None:
        fused = (flat.is_cuda and flat.dtype == torch.float32 and bins <= kernels.MAX_BINS
                 and os.environ.get("QUANTLAB_DEVICE_FOLD", "fused") != "torch" and kernels.available())
    if fused:
        return DeviceFold(*kernels.fold(flat.contiguous(), bins), flat.dtype)
    layout = _layouts(torch)[flat.dtype]
    bits = flat.view(layout.ints)
    magnitude = bits & layout.magnitude
    finite = magnitude < layout.inf
    nan = (magnitude > layout.inf).sum()
    inf = (magnitude == layout.inf).sum()
    magnitude = magnitude.where(finite, 0)
    top = magnitude.max() if flat.numel() else torch.zeros((), dtype=layout.ints, device=flat.device)
    exponent = torch.frexp(top.view(flat.dtype)).exponent.to(torch.int64)
    key = _key(bits, layout)
    info = torch.iinfo(layout.ints)
    low = key.where(finite, info.max).min() if flat.numel() else torch.tensor(info.max, device=flat.device)
    high = key.where(finite, info.min).max() if flat.numel() else torch.tensor(info.min, device=flat.device)
    # scale = 2**(log2(bins) - exponent) as two normal powers of two, built from their exponent bits.
    shift = (bins.bit_length() - 1) - exponent
    first = shift.clamp(layout.low, layout.high)
    second = (shift - first).clamp(layout.low, layout.high)
    scaled = magnitude.view(flat.dtype) * _power_of_two(first, layout, flat.dtype)
    scaled *= _power_of_two(second, layout, flat.dtype)
    index = scaled.to(layout.ints)
    counts = torch.zeros(bins, dtype=torch.int64, device=flat.device)
    counts.index_add_(0, index, torch.ones((), dtype=torch.int64, device=flat.device).expand(index.numel()))
    counts[0] -= nan + inf
    return DeviceFold(counts, top, exponent, nan, inf, low, high, flat.dtype)


def _power_of_two(exponent, layout: _FloatBits, dtype):
    """2**exponent (a 0-d integer tensor within the normal range) as a float of ``dtype``, exactly."""
    return ((exponent + layout.bias).to(layout.ints) << layout.mantissa).view(dtype)


def to_host(folds: list[DeviceFold], bins: int) -> list[TensorHistogram]:
    """The host histograms of one run's folds, brought back in one copy per float width."""
    import torch

    out: list[TensorHistogram] = [None] * len(folds)  # type: ignore[list-item]
    for dtype in {f.dtype for f in folds}:
        chosen = [i for i, f in enumerate(folds) if f.dtype == dtype]
        layout = _layouts(torch)[dtype]
        counts = torch.stack([folds[i].counts for i in chosen]).cpu().numpy()
        scalars = torch.stack([torch.stack([folds[i].top.to(torch.int64), folds[i].exponent, folds[i].nan,
                                            folds[i].inf, folds[i].low.to(torch.int64),
                                            folds[i].high.to(torch.int64)]) for i in chosen]).cpu().numpy()
        for row, i in enumerate(chosen):
            out[i] = _histogram(counts[row], scalars[row], layout, bins)
    return out


def _histogram(counts: np.ndarray, scalars: np.ndarray, layout: _FloatBits, bins: int) -> TensorHistogram:
    top, exponent, nan, inf, low, high = (int(v) for v in scalars)
    hist = TensorHistogram(bins, counts.astype(np.int64), EMPTY_EXPONENT if top == 0 else exponent,
                           nan_count=nan, inf_count=inf)
    if low <= high:  # some value was finite
        low_value, high_value = _value(low, layout), _value(high, layout)
        hist._take_extremes(low_value, high_value)
    return hist


def _value(key: int, layout: _FloatBits) -> float:
    """The float whose order key (:func:`_key`) is ``key``."""
    bits = key if key >= 0 else key ^ layout.magnitude
    if layout.mantissa == 23:
        return float(np.array(bits, dtype=np.int32).view(np.float32))
    return float(np.array(bits, dtype=np.int64).view(np.float64))
