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

How many bins (:func:`check_bins`): a power of two (the exact rebinning above needs it), from
``MIN_BINS`` = 256 to ``MAX_BINS`` = 65536. The floor: ``entropy`` and ``mse`` search thresholds
from bin ``start_bin`` = 128 up (one histogram bin per INT8 level at least), so with 128 bins or
fewer they would have no threshold to choose; 256 leaves them the upper half, where the data's
maximum lies. The ceiling: memory. Every tensor holds ``bins`` int64 counts, and the vectorised
KL search works on a (bins x 129) array per tensor (65536 bins: about 70 MB per array, several
of them); more bins than that buy no INT8 precision (the INT8 grid has 255 levels).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from .errors import QuantlabError

DEFAULT_BINS = 2048
MIN_BINS = 256
MAX_BINS = 65536
# Values binned per step: the float and integer scratch of one chunk (1.5 MiB) stay in L2.
CHUNK = 1 << 17
_SCRATCH = threading.local()
# Exponent of an empty or all-zero histogram: every value it holds is 0, which sits in bin 0 at
# any range, so rebinning it to any real exponent is exact.
EMPTY_EXPONENT = -(2**31)


def check_bins(bins) -> int:
    """``bins`` as an int if it is a valid histogram size, else a QuantlabError naming ``bins``.

    Valid: a power of two from :data:`MIN_BINS` (256) to :data:`MAX_BINS` (65536); see the module
    docstring for why. Call it before any long work (the collector calls it too).
    """
    valid = (not isinstance(bins, bool) and isinstance(bins, (int, np.integer))
             and MIN_BINS <= bins <= MAX_BINS and not bins & (bins - 1))
    if not valid:
        raise QuantlabError(
            f"`bins` must be a power of two from {MIN_BINS} to {MAX_BINS} (default {DEFAULT_BINS}), got {bins!r}",
            params=("bins",),
        )
    return int(bins)


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
        self.bins = check_bins(self.bins)
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

        Hot path of calibration, and bound by memory traffic on large activations, so the
        batch is read from memory once: chunk by chunk, each chunk small enough that its
        scratch buffers stay in the CPU cache. Per chunk: the extremes (NaN and Inf are looked
        for only when they say there are some), a range grow if needed (an exact rebinning,
        so chunking cannot change a count), then the binning: scale by an exact power of two,
        truncate to integers (truncating ``x * 2**k`` gives ``+/-floor(|x| * 2**k)``, so no
        ``abs`` pass over floats), take the absolute value and count. Safe to call from
        several threads on different histograms: the scratch buffers are per thread.
        """
        flat = np.asarray(values).reshape(-1)
        if flat.dtype.kind != "f":
            flat = flat.astype(np.float64)
        elif flat.dtype.itemsize < 4:
            flat = flat.astype(np.float32)
        for start in range(0, flat.size, CHUNK):
            self._update_chunk(flat[start:start + CHUNK])

    def _update_chunk(self, chunk: np.ndarray) -> None:
        low, high = chunk.min(), chunk.max()
        if not (np.isfinite(low) and np.isfinite(high)):
            finite_mask = np.isfinite(chunk)
            nonfinite = chunk[~finite_mask]
            nan = int(np.isnan(nonfinite).sum())
            self.nan_count += nan
            self.inf_count += int(nonfinite.size - nan)
            chunk = chunk[finite_mask]
            if chunk.size == 0:
                return
            low, high = chunk.min(), chunk.max()
        chunk_max = max(float(high), -float(low))
        self.min_value = min(self.min_value, float(low))
        self.max_value = max(self.max_value, float(high))
        self.max_abs = max(self.max_abs, chunk_max)
        exponent = max(self.exponent, range_exponent(chunk_max))
        self._rebin(exponent)
        if exponent == EMPTY_EXPONENT:
            self.counts[0] += chunk.size
            return
        # Exact: a power-of-two scale, and every |x| < 2**exponent so the index is < bins.
        scale_exponent = int(np.log2(self.bins)) - exponent
        if chunk.dtype == np.float32 and not -126 <= scale_exponent <= 127:
            chunk = chunk.astype(np.float64)  # the scale itself must be representable
        scaled, indices = _scratch(chunk.dtype)
        n = chunk.size
        np.multiply(chunk, chunk.dtype.type(2.0**scale_exponent), out=scaled[:n])
        np.copyto(indices[:n], scaled[:n], casting="unsafe")
        np.abs(indices[:n], out=indices[:n])
        self.counts += np.bincount(indices[:n], minlength=self.bins)

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


def _scratch(dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """This thread's reusable (float, int32) chunk buffers for ``dtype``."""
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None:
        buffers = _SCRATCH.buffers = {}
    key = np.dtype(dtype).str
    if key not in buffers:
        buffers[key] = (np.empty(CHUNK, dtype=dtype), np.empty(CHUNK, dtype=np.int32))
    return buffers[key]
