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

Two implementations fill a histogram, with the same result, bit for bit, on any input (counts,
exponent, extremes, NaN and Inf counts; ``tests/test_histogram_kernel.py``): a compiled kernel
(numba, ``nogil``) that reads each value from memory once and lets any number of threads fill
histograms at the same time, and the numpy path, whose ``bincount`` holds the GIL. The kernel has
a start-up cost (importing numba and loading the compiled code from numba's on-disk cache: 0.85 to
1.0 s measured; compiling it when there is no cache yet: 5.7 to 8.4 s, once per install; see
``reports/calibration-core.md``), so :func:`load_kernel` loads it in the background, and until it
is ready histograms are filled by numpy: switching mid-way changes nothing. The collector asks for
it only when the work is large enough to repay it.
Without numba (not installed, or one that refuses this numpy) the numpy path is used, after a
one-line notice.

Extremes (``min_value``, ``max_value``) are taken in the total order of floats in which
-0.0 < +0.0, so a tensor that holds both zeros has the same extremes whatever the order and split
of its values (numpy's ``min`` returns whichever zero it met first).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import QuantlabError

DEFAULT_BINS = 2048
MIN_BINS = 256
MAX_BINS = 65536
# Values binned per step of the numpy path: the float and integer scratch of one chunk (1.5 MiB)
# stay in L2.
CHUNK = 1 << 17
# Values per step of the compiled kernel: one pass for the extremes, one to count, both from L1/L2.
KERNEL_CHUNK = 1 << 14
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

        Hot path of calibration. With the compiled kernel loaded (:func:`load_kernel`) the batch
        is read once, in chunks that stay in the CPU cache, without the GIL: per chunk the
        extremes (which also tell whether there is a NaN or an Inf to count apart), a range grow
        if needed (an exact rebinning, so chunking cannot change a count), then one increment per
        value into four interleaved sub-histograms (so runs of equal bins, such as the zeros of a
        ReLU, do not wait on each other). Otherwise numpy does the same steps, chunk by chunk:
        scale by an exact power of two, truncate to integers (truncating ``x * 2**k`` gives
        ``+/-floor(|x| * 2**k)``, so no ``abs`` pass over floats), take the absolute value and
        ``bincount``. Safe to call from several threads on different histograms: the scratch
        buffers are per thread.
        """
        flat = flat_values(values)
        if flat.size == 0:
            return
        if self.counts.shape != (self.bins,):
            raise ValueError(f"a histogram of {self.bins} bins has {self.counts.shape} counts")
        kernel = _kernel
        if kernel is not None and flat.dtype.itemsize in _KERNEL_TYPES:
            self._update_compiled(kernel, flat)
            return
        for start in range(0, flat.size, CHUNK):
            self._update_chunk(flat[start:start + CHUNK])

    def _update_compiled(self, kernel, flat: np.ndarray) -> None:
        counts = self.counts
        if not (counts.dtype == np.int64 and counts.flags.c_contiguous and counts.flags.writeable):
            counts = self.counts = np.array(counts, dtype=np.int64)
        ints, uints, inf_bits, sign_bit, neg_inf_bits = _KERNEL_TYPES[flat.dtype.itemsize]
        exponent, nan, inf, low, high = kernel(
            flat, flat.view(ints), flat.view(uints), counts, _lanes(self.bins), self.exponent,
            self.bins.bit_length() - 1, inf_bits, sign_bit, neg_inf_bits, KERNEL_CHUNK)
        self.exponent = int(exponent)
        self.nan_count += int(nan)
        self.inf_count += int(inf)
        if low <= high:  # some value was finite
            self._take_extremes(float(low), float(high))

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
        low, high = float(low), float(high)
        if low == 0 or high == 0:
            # numpy returns whichever zero it met first; take -0.0 < +0.0 (see the module docstring).
            # Read as integers, -0.0 is the only negative among zeros and positives, +0.0 the only
            # non-negative among zeros and negatives.
            if chunk.dtype.itemsize in _KERNEL_TYPES:
                ints = chunk.view(_KERNEL_TYPES[chunk.dtype.itemsize][0])
                negative_zero, positive_zero = ints.min() < 0, ints.max() >= 0
            else:  # long double
                signs = np.signbit(chunk[chunk == 0])
                negative_zero, positive_zero = signs.any(), not signs.all()
            if low == 0:
                low = -0.0 if negative_zero else 0.0
            if high == 0:
                high = 0.0 if positive_zero else -0.0
        self._take_extremes(low, high)
        exponent = max(self.exponent, range_exponent(max(high, -low)))
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
        if scale_exponent > 1000:  # tiny float64 values: 2**scale_exponent itself would overflow
            np.multiply(chunk, chunk.dtype.type(2.0**(scale_exponent - 500)), out=scaled[:n])
            np.multiply(scaled[:n], chunk.dtype.type(2.0**500), out=scaled[:n])
        else:
            np.multiply(chunk, chunk.dtype.type(2.0**scale_exponent), out=scaled[:n])
        np.copyto(indices[:n], scaled[:n], casting="unsafe")
        np.abs(indices[:n], out=indices[:n])
        self.counts += np.bincount(indices[:n], minlength=self.bins)

    def _take_extremes(self, low: float, high: float) -> None:
        """Fold in the least and greatest finite values of some batch."""
        self.min_value = _least(self.min_value, low)
        self.max_value = _greatest(self.max_value, high)
        self.max_abs = max(self.max_abs, max(high, -low))

    def merge(self, other: TensorHistogram) -> None:
        """Fold another histogram of the same tensor in (as if its values had been seen here)."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms of {self.bins} and {other.bins} bins")
        exponent = max(self.exponent, other.exponent)
        self._rebin(exponent)
        self.counts += rebinned(other.counts, other.exponent, exponent)
        self.max_abs = max(self.max_abs, other.max_abs)
        self.min_value = _least(self.min_value, other.min_value)
        self.max_value = _greatest(self.max_value, other.max_value)
        self.nan_count += other.nan_count
        self.inf_count += other.inf_count

    def without(self, part: TensorHistogram) -> Optional[TensorHistogram]:
        """The statistics of the values seen here but not in ``part`` (a histogram of some of the same
        samples), or None when ``part`` holds values this one never saw.

        Counts subtract exactly on the power-of-two grid. The extremes cannot be subtracted: where
        ``part`` did not reach an extreme it stays; where it did, the remainder's is bounded by its
        highest non-empty bin (one bin width: 1/``bins`` of the range)."""
        if part.bins != self.bins:
            raise ValueError(f"cannot subtract histograms of {part.bins} and {self.bins} bins")
        if part.exponent > self.exponent or part.nan_count > self.nan_count or part.inf_count > self.inf_count:
            return None
        counts = self.counts - rebinned(part.counts, part.exponent, self.exponent)
        if (counts < 0).any():
            return None
        rest = TensorHistogram(self.bins, counts, self.exponent, nan_count=self.nan_count - part.nan_count,
                               inf_count=self.inf_count - part.inf_count)
        filled = np.flatnonzero(counts)
        if not len(filled):
            return rest
        top = float(self.edges[filled[-1] + 1])
        rest.max_abs = self.max_abs if part.max_abs < self.max_abs else min(self.max_abs, top)
        rest.max_value = self.max_value if part.max_value < self.max_value else min(self.max_value, top)
        rest.min_value = self.min_value if part.min_value > self.min_value else max(self.min_value, -top)
        return rest

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


def flat_values(values) -> np.ndarray:
    """``values`` as the 1-D array of floats a histogram reads: float16 as float32, integers (and
    booleans) as float64, other floats as they are, in native byte order, contiguous."""
    flat = np.asarray(values).reshape(-1)
    if flat.dtype.kind != "f":
        flat = flat.astype(np.float64)
    elif flat.dtype.itemsize < 4:
        flat = flat.astype(np.float32)
    elif not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    return flat


def _least(a: float, b: float) -> float:
    """min(a, b) in the order where -0.0 < +0.0."""
    if a == b:
        return a if math.copysign(1.0, a) < 0 else b
    return a if a < b else b


def _greatest(a: float, b: float) -> float:
    """max(a, b) in the order where -0.0 < +0.0."""
    if a == b:
        return a if math.copysign(1.0, a) > 0 else b
    return a if a > b else b


def _lanes(bins: int) -> np.ndarray:
    """This thread's four interleaved sub-histograms for the kernel (all zero between calls)."""
    lanes = getattr(_SCRATCH, "lanes", None)
    if lanes is None:
        lanes = _SCRATCH.lanes = {}
    if bins not in lanes:
        lanes[bins] = np.zeros(4 * bins, dtype=np.int64)
    return lanes[bins]


# --- The compiled kernel ------------------------------------------------------------------------
#
# Written in the subset of Python that numba compiles; :func:`_load` compiles the ``_k_*``
# functions in place (each name then holds its compiled version) and checks the result against
# the numpy path before any histogram uses it. A float's bit pattern read as a signed and as an
# unsigned integer gives, by four integer min/max reductions (which the compiler vectorises),
# both extremes in the order -0.0 < +0.0, the largest magnitude, and whether a NaN or an Inf is
# present, in one pass over the chunk.

# float width -> (signed and unsigned integer of that width, bits of +inf, sign bit, bits of -inf)
_KERNEL_TYPES = {
    4: (np.int32, np.uint32, np.int32(0x7F800000), np.uint32(0x80000000), np.uint32(0xFF800000)),
    8: (np.int64, np.uint64, np.int64(0x7FF0000000000000), np.uint64(1 << 63), np.uint64(0xFFF0000000000000)),
}
_kernel = None  # the compiled fold, once loaded and checked
_kernel_state = "unloaded"  # -> "loading" -> "ready" | "unavailable"
_kernel_lock = threading.Lock()
_kernel_thread: threading.Thread | None = None
_kernel_info: dict = {}  # how loading went: seconds, cache, or why the kernel is unavailable


def _k_rebin(counts, exponent, new_exponent):  # pragma: no cover - compiled
    """Grow ``counts`` from ``[0, 2**exponent)`` to ``[0, 2**new_exponent)`` in place (see rebinned)."""
    bins = counts.size
    if exponent == EMPTY_EXPONENT or new_exponent - exponent >= 31 or (1 << (new_exponent - exponent)) >= bins:
        total = 0
        for b in range(bins):
            total += counts[b]
            counts[b] = 0
        counts[0] = total
        return
    shift = new_exponent - exponent
    for b in range(1, bins):  # b >> shift < b: every bin is read before anything lands on it
        value = counts[b]
        counts[b] = 0
        counts[b >> shift] += value


def _k_flush(lanes, counts):  # pragma: no cover - compiled
    """Add the four interleaved sub-histograms into ``counts`` and zero them."""
    for b in range(counts.size):
        j = 4 * b
        counts[b] += lanes[j] + lanes[j + 1] + lanes[j + 2] + lanes[j + 3]
        lanes[j] = 0
        lanes[j + 1] = 0
        lanes[j + 2] = 0
        lanes[j + 3] = 0


def _k_count4(seg, lanes, scale):  # pragma: no cover - compiled
    """``lanes[4 * floor(|x| * scale) + j % 4] += 1`` for the j-th value x of ``seg``: four
    interleaved sub-histograms, so that equal bins in a row (the zeros of a ReLU) do not wait on
    each other's increments. Exact: ``scale`` is a power of two and every product is below
    ``bins``; a product that underflows is below 1 either way."""
    m = seg.size
    q = m - m % 4
    for j in range(0, q, 4):
        lanes[np.uint32(np.int32(abs(seg[j]) * scale)) * np.uint32(4)] += 1
        lanes[np.uint32(np.int32(abs(seg[j + 1]) * scale)) * np.uint32(4) + np.uint32(1)] += 1
        lanes[np.uint32(np.int32(abs(seg[j + 2]) * scale)) * np.uint32(4) + np.uint32(2)] += 1
        lanes[np.uint32(np.int32(abs(seg[j + 3]) * scale)) * np.uint32(4) + np.uint32(3)] += 1
    for j in range(q, m):
        lanes[np.uint32(np.int32(abs(seg[j]) * scale)) * np.uint32(4)] += 1


def _k_count1(seg, counts, scale):  # pragma: no cover - compiled
    """``counts[floor(|x| * scale)] += 1`` for every x of ``seg`` (exact, as in _k_count4)."""
    for j in range(seg.size):
        counts[np.uint32(np.int32(abs(seg[j]) * scale))] += 1


def _k_fold(values, ints, uints, counts, lanes, exponent, log2bins, inf_bits, sign_bit, neg_inf_bits,
            chunk):  # pragma: no cover - compiled
    """Fold ``values`` into ``counts`` (on ``[0, 2**exponent)``) in place.

    ``ints``/``uints``: the same memory as signed/unsigned integers; ``inf_bits``, ``sign_bit``,
    ``neg_inf_bits``: the bits of +inf, the sign and -inf in those types. Returns the new exponent,
    the NaN and Inf counts, and the least and greatest finite value (least > greatest if none).
    """
    n = values.size
    bins = counts.size
    nan = 0
    inf = 0
    low = np.inf
    high = -np.inf
    bits = np.zeros(3, ints.dtype)  # bit patterns of the chunk's max, min and largest magnitude
    ubits = bits.view(uints.dtype)
    fbits = bits.view(values.dtype)
    use_lanes = n >= 32 * bins  # else zeroing the lanes afterwards would cost more than they save
    dirty = False
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        seg = values[start:stop]
        seg_i = ints[start:stop]
        seg_u = uints[start:stop]
        m = stop - start
        smax = seg_i[0]
        smin = smax
        umax = seg_u[0]
        umin = umax
        for j in range(1, m):
            smax = max(smax, seg_i[j])
            smin = min(smin, seg_i[j])
            umax = max(umax, seg_u[j])
            umin = min(umin, seg_u[j])
        finite = smax < inf_bits and umax < neg_inf_bits
        nfinite = m
        if not finite:  # a NaN or an Inf: count them apart, extremes of the finite values only
            nfinite = 0
            for j in range(m):
                k = seg_i[j]
                u = seg_u[j]
                if k >= inf_bits or u >= neg_inf_bits:
                    if seg[j] != seg[j]:
                        nan += 1
                    else:
                        inf += 1
                    continue
                if nfinite == 0:
                    smax = k
                    smin = k
                    umax = u
                    umin = u
                else:
                    smax = max(smax, k)
                    smin = min(smin, k)
                    umax = max(umax, u)
                    umin = min(umin, u)
                nfinite += 1
            if nfinite == 0:
                continue
        # Greatest: the largest non-negative value (signed max >= 0), else the negative one of
        # least magnitude (unsigned min). Least: the negative one of largest magnitude (unsigned
        # max >= sign bit), else the smallest non-negative one (signed min).
        if smax >= 0:
            bits[0] = smax
        else:
            ubits[0] = umin
        if umax >= sign_bit:
            ubits[1] = umax
        else:
            bits[1] = smin
        if smax >= 0:
            bits[2] = smax
        else:
            bits[2] = 0
        if umax >= sign_bit and umax - sign_bit > ubits[2]:
            ubits[2] = umax - sign_bit
        chunk_high = np.float64(fbits[0])
        chunk_low = np.float64(fbits[1])
        chunk_max = np.float64(fbits[2])
        if chunk_low < low or (chunk_low == low and math.copysign(1.0, chunk_low) < 0):
            low = chunk_low
        if chunk_high > high or (chunk_high == high and math.copysign(1.0, chunk_high) > 0):
            high = chunk_high
        if chunk_max > 0:
            new_exponent = math.frexp(chunk_max)[1]
            if exponent == EMPTY_EXPONENT or new_exponent > exponent:
                if dirty:
                    _k_flush(lanes, counts)
                    dirty = False
                _k_rebin(counts, exponent, new_exponent)
                exponent = new_exponent
        if exponent == EMPTY_EXPONENT:  # every finite value so far is zero
            counts[0] += nfinite
            continue
        shift = log2bins - exponent
        if finite and shift <= 1000:
            # float32 data is multiplied in float32 (exact, and faster) when the scale fits in it.
            scale = math.ldexp(1.0, shift)
            if use_lanes:
                dirty = True
                if -126 <= shift <= 127:
                    _k_count4(seg, lanes, np.float32(scale))
                else:
                    _k_count4(seg, lanes, scale)
            elif -126 <= shift <= 127:
                _k_count1(seg, counts, np.float32(scale))
            else:
                _k_count1(seg, counts, scale)
        else:  # NaN/Inf among the values, or values so tiny that 2**shift would overflow a float64
            scale_a = math.ldexp(1.0, shift - 500) if shift > 1000 else math.ldexp(1.0, shift)
            scale_b = math.ldexp(1.0, 500) if shift > 1000 else 1.0
            for j in range(m):
                x = abs(np.float64(seg[j]))
                if x <= 1.7976931348623157e308:
                    counts[np.int64(x * scale_a * scale_b)] += 1
    if dirty:
        _k_flush(lanes, counts)
    return exponent, nan, inf, low, high


_KERNEL_FUNCTIONS = ("_k_rebin", "_k_flush", "_k_count4", "_k_count1", "_k_fold")  # callees first


def load_kernel(wait: bool = True) -> bool:
    """Load the compiled kernel (once per process), in a background thread; with ``wait``, until
    it is loaded. Returns whether it is in use now. Until it is, histograms use numpy (same
    result), so a caller that does not wait loses nothing."""
    global _kernel_state, _kernel_thread
    with _kernel_lock:
        if _kernel_state == "unloaded":
            _kernel_state = "loading"
            _kernel_thread = threading.Thread(target=_load, name="quantlab-kernel-load")
            _kernel_thread.start()
        thread = _kernel_thread
    if wait and thread is not None:
        thread.join()
    return _kernel is not None


def kernel_info() -> dict:
    """How the compiled kernel stands: ``state`` (unloaded, loading, ready, unavailable), and once
    loaded ``seconds`` (import, cache load or compilation) and ``cached``; else ``reason``."""
    return {"state": _kernel_state, **_kernel_info}


def _notice(message: str) -> None:
    print(f"quantlab: {message}", file=sys.stderr, flush=True)


def _load() -> None:
    global _kernel, _kernel_state
    started = time.perf_counter()
    try:
        import numba
    except Exception as exc:  # not installed, or one that refuses this numpy ("Numba needs NumPy ...")
        _kernel_info["reason"] = f"numba cannot be imported ({exc})"
        _notice(f"numba cannot be imported ({exc}); histograms are filled by numpy, 2-3x slower on one "
                "core and no faster on more (pip install numba)")
        _kernel_state = "unavailable"
        return
    try:
        fold, cached = _compile(numba)
        _self_check(fold)
    except Exception as exc:  # a numba that cannot compile this code, or a result that differs
        _kernel_info["reason"] = f"the compiled histogram kernel is not usable ({type(exc).__name__}: {exc})"
        _notice(f"{_kernel_info['reason']}; histograms are filled by numpy")
        _kernel_state = "unavailable"
        return
    _kernel_info.update(seconds=time.perf_counter() - started, cached=cached, numba=numba.__version__)
    _kernel = fold
    _kernel_state = "ready"


def _compile(numba) -> tuple:
    """The compiled ``_k_fold``, and whether numba keeps it in its on-disk cache."""
    module = globals()
    sources = {name: module[name] for name in _KERNEL_FUNCTIONS}
    try:
        # numba's cache lives in __pycache__ beside this file, else in NUMBA_CACHE_DIR or the
        # user's cache directory; with none of them writable it refuses to cache at all.
        for name in _KERNEL_FUNCTIONS:
            module[name] = numba.njit(nogil=True, cache=True)(sources[name])
        cached = True
    except RuntimeError as exc:  # "cannot cache function ...: no locator available for file ..."
        module.update(sources)
        _notice(f"numba has no writable cache directory ({exc}; set NUMBA_CACHE_DIR): the histogram "
                "kernel is compiled again in every process, in the background")
        for name in _KERNEL_FUNCTIONS:
            module[name] = numba.njit(nogil=True)(sources[name])
        cached = False
    return module["_k_fold"], cached


def _self_check(fold) -> None:
    """Compile (or load) every variant now, and compare each with the numpy path: both float
    widths, with and without the four lanes, at ordinary and at tiny scales, with NaN and Inf."""
    probe = np.array([0.0, -0.0, 1.0, -1.5, 2.0**-149, 3.0, np.nan, np.inf, -np.inf, 0.75, 6.0, -2.0**20])
    finite = np.array([0.0, -0.0, 1.0, -1.5, 2.0**-149, 3.0, 0.75, 6.0, -2.0**20])
    cases = [(dtype, np.tile(values.astype(dtype), reps))
             for dtype, tiny in ((np.float32, 2.0**-140), (np.float64, 1e-310))
             for values in (probe, finite, finite * tiny / 2.0**20)
             for reps in (1, 1000)]  # 1000 repetitions: over 32 * 256 values, the four-lane path
    for dtype, values in cases:
        compiled, reference = TensorHistogram(MIN_BINS), TensorHistogram(MIN_BINS)
        compiled._update_compiled(fold, values)  # not through _kernel: no other thread may use it yet
        for start in range(0, values.size, CHUNK):
            reference._update_chunk(values[start:start + CHUNK])
        if not _same(compiled, reference):
            raise AssertionError(f"{np.dtype(dtype).name} statistics differ from numpy's on {values[:12]}")


def _same(a: TensorHistogram, b: TensorHistogram) -> bool:
    """Equal in every field, bit for bit (so -0.0 differs from +0.0)."""
    floats = ("max_abs", "min_value", "max_value")
    return (np.array_equal(a.counts, b.counts) and (a.exponent, a.nan_count, a.inf_count) ==
            (b.exponent, b.nan_count, b.inf_count)
            and all(np.float64(getattr(a, f)).tobytes() == np.float64(getattr(b, f)).tobytes() for f in floats))
