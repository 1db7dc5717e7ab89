"""Order-independent histograms of |x| on a power-of-two grid.

Why a power-of-two grid: TensorRT's and ModelOpt's histogram calibrators fix the bin width
from the first batch and stretch the range as larger values arrive, so the final histogram
(and the cache) depends on batch size and sample order. Here the range of a histogram is always
``[0, 2**exponent)`` where ``2**(exponent-1) <= max|x| < 2**exponent``, split into ``bins``
equal bins (``bins`` a power of two). A value's bin is ``floor(|x| * bins / 2**exponent)``, a
multiplication by a power of two and therefore exact in floating point. Growing the range from
``2**e`` to ``2**(e+s)`` merges each run of ``2**s`` neighbouring bins into one, which is again
exact, and gives the very counts that binning at the larger range directly would have given.
So the final histogram is a function of the multiset of values only: identical, bit for bit,
for any batch size, any order and any split into shards - and it is built in one pass.

The price: the data's maximum sits in the upper half of the range, so between ``bins/2`` and
``bins`` bins cover the data (TensorRT's calibrators, by comparison, cover it with all of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_BINS = 2048
# Exponent of an empty or all-zero histogram: every value it holds is 0, which sits in bin 0 at
# any range, so rebinning it to any real exponent is exact.
EMPTY_EXPONENT = -(2**31)


def range_exponent(max_abs: float) -> int:
    """Smallest ``e`` with ``max_abs < 2**e`` (``EMPTY_EXPONENT`` for 0)."""
    if max_abs == 0:
        return EMPTY_EXPONENT
    _, exponent = np.frexp(max_abs)
    return int(exponent)


@dataclass
class TensorHistogram:
    """Streaming statistics of one tensor: histogram of |x|, extremes and non-finite counts.

    ``counts[b]`` counts finite values with ``b * w <= |x| < (b + 1) * w`` where
    ``w = 2**exponent / bins``. NaN and +/-Inf values are counted apart and kept out of the
    histogram and the extremes, so one bad value cannot destroy the statistics; whether such a
    tensor may be calibrated at all is decided later (see :mod:`quantlab.calibrate`).
    """

    bins: int = DEFAULT_BINS
    counts: np.ndarray = field(default=None)  # type: ignore[assignment]
    exponent: int = EMPTY_EXPONENT
    max_abs: float = 0.0
    min_value: float = np.inf
    max_value: float = -np.inf
    nan_count: int = 0
    inf_count: int = 0

    def __post_init__(self) -> None:
        if self.bins < 2 or self.bins & (self.bins - 1):
            raise ValueError(f"bins must be a power of two >= 2, got {self.bins}")
        if self.counts is None:
            self.counts = np.zeros(self.bins, dtype=np.int64)

    @property
    def total(self) -> int:
        """Number of finite values folded in."""
        return int(self.counts.sum())

    @property
    def edges(self) -> np.ndarray:
        """Bin edges, ``len(counts) + 1`` of them, from 0 to ``2**exponent``."""
        top = 0.0 if self.exponent == EMPTY_EXPONENT else np.ldexp(1.0, self.exponent)
        if top == 0.0:
            # All values are zero: any positive range holds them in bin 0; use [0, 1).
            top = 1.0
        return np.arange(self.bins + 1, dtype=np.float64) * (top / self.bins)

    def update(self, values: np.ndarray) -> None:
        """Fold a batch of values (any shape, any float dtype) into the statistics.

        Hot path of calibration: a handful of passes over the data (abs, max, min/max, one
        exact power-of-two multiply, the integer cast, bincount); NaN/Inf are looked for only
        when the batch maximum says there are some (NaN and Inf both make it non-finite).
        """
        flat = np.asarray(values).reshape(-1)
        if flat.dtype.kind != "f":
            flat = flat.astype(np.float64)
        elif flat.dtype.itemsize < 4:
            flat = flat.astype(np.float32)
        if flat.size == 0:
            return
        magnitudes = np.abs(flat)
        batch_max = magnitudes.max()
        if not np.isfinite(batch_max):
            finite_mask = np.isfinite(flat)
            nonfinite = flat[~finite_mask]
            nan = int(np.isnan(nonfinite).sum())
            self.nan_count += nan
            self.inf_count += int(nonfinite.size - nan)
            flat, magnitudes = flat[finite_mask], magnitudes[finite_mask]
            if flat.size == 0:
                return
            batch_max = magnitudes.max()
        batch_max = float(batch_max)
        self.min_value = min(self.min_value, float(flat.min()))
        self.max_value = max(self.max_value, float(flat.max()))
        self.max_abs = max(self.max_abs, batch_max)
        exponent = max(self.exponent, range_exponent(batch_max))
        self._rebin(exponent)
        if exponent == EMPTY_EXPONENT:
            self.counts[0] += magnitudes.size
            return
        # Exact: a power-of-two scale, and every |x| < 2**exponent so the index is < bins.
        scale_exponent = int(np.log2(self.bins)) - exponent
        if magnitudes.dtype == np.float32 and not -126 <= scale_exponent <= 127:
            magnitudes = magnitudes.astype(np.float64)  # the scale itself must be representable
        np.multiply(magnitudes, magnitudes.dtype.type(2.0 ** scale_exponent), out=magnitudes)
        self.counts += np.bincount(magnitudes.astype(np.intp), minlength=self.bins)

    def merge(self, other: TensorHistogram) -> None:
        """Fold another histogram of the same tensor in (as if its values had been seen here)."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms of {self.bins} and {other.bins} bins")
        exponent = max(self.exponent, other.exponent)
        self._rebin(exponent)
        self.counts += rebinned(other.counts, other.exponent, exponent)
        self.max_abs = max(self.max_abs, other.max_abs)
        self.min_value = min(self.min_value, other.min_value)
        self.max_value = max(self.max_value, other.max_value)
        self.nan_count += other.nan_count
        self.inf_count += other.inf_count

    def _rebin(self, exponent: int) -> None:
        if exponent != self.exponent:
            self.counts = rebinned(self.counts, self.exponent, exponent)
            self.exponent = exponent


def rebinned(counts: np.ndarray, exponent: int, new_exponent: int) -> np.ndarray:
    """Counts of a histogram on ``[0, 2**exponent)`` re-expressed on ``[0, 2**new_exponent)``.

    Only growing is possible (``new_exponent >= exponent``): bin ``b`` moves to ``b >> shift``.
    """
    if new_exponent < exponent:
        raise ValueError("a histogram range can only grow")
    shift = new_exponent - exponent
    if shift == 0:
        return counts.copy()
    bins = len(counts)
    if shift >= int(np.log2(bins)):
        out = np.zeros(bins, dtype=np.int64)
        out[0] = counts.sum()
        return out
    # Bin b of the old grid lies inside bin b >> shift of the new one: sum runs of 2**shift bins.
    merged = counts.reshape(-1, 1 << shift).sum(axis=1)
    out = np.zeros(bins, dtype=np.int64)
    out[: len(merged)] = merged
    return out
