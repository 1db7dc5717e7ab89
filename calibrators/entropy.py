"""``entropy``: the KL-divergence threshold of TensorRT's EntropyCalibration2, vectorised.

The answer is, by contract, exactly the amax of NVIDIA's reference
(``_compute_amax_entropy`` of pytorch-quantization / TensorRT Model Optimizer with 8 bits,
signed, stride 1, start bin 128) wherever the reference is well defined. The reference loops in
Python over every candidate threshold ``i`` (128..B) and rebuilds two distributions each time,
about a second per 2048-bin tensor. Here all candidates are scored at once from cumulative sums:

For candidate ``i`` with reference ``P`` (bins below ``i``, the tail folded into bin ``i-1``)
and quantized ``Q`` (bin ``j`` in level ``floor(128 j / i)``; a level's mass ``M`` spread evenly
over its ``n`` non-empty bins), with ``T = sum(P)`` and ``S = sum(Q) = sum(h[:i])``::

    KL(P||Q) = (sum_j P_j log P_j - sum_levels M log(M / n) - tail * log(Q_{i-1})) / T + log(S / T)

Every level's ``M`` and ``n`` are differences of two prefix sums, so one (candidates x 129)
array of level boundaries scores all candidates in a few milliseconds.

Exactness: the reference picks the smallest divergence *as it computes it in floating point*
(ties to the largest ``i``). Two candidates whose divergences are equal, or nearly so, could
come out in either order under different rounding, so the closest few candidates are re-scored
with the reference's own arithmetic (same arrays, the arithmetic of ``scipy.stats.entropy``) and the
winner is taken from those numbers. Candidates whose ``P`` and ``Q`` are identical (divergence
exactly 0 there too) are recognised without re-scoring.

Degenerate input (documented choice): where the first non-empty bin, after the reference's
substitution of bin 1's count into bin 0, lies at or beyond the start bin, every candidate up to
that bin has an empty ``Q`` and the reference compares NaN divergences, returning the edge of an
empty region that clips nearly all the data. Here such undefined candidates are skipped and the
minimum is taken over the candidates whose divergence is defined (the same rule as everywhere
else, applied to the part of the search that makes sense). A constant tensor thus gets the top
edge of its histogram, never a threshold below its value. An all-zero histogram returns 0.0
(the caller decides what an all-zero tensor means; quantlab never writes a zero scale).
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

from ._common import MAX_BITS, MIN_BITS, as_histogram, int_param

# Candidates whose fast score is within this distance of the best are re-scored exactly.
_RESCORE_ABS = 1e-9
_RESCORE_REL = 1e-7


class EntropyCalibrator:
    """Minimum KL divergence between the clipped distribution and its 128-level quantization.

    Parameters (int, or integer text as ``--param`` passes it): ``num_bits`` 2 to 8 (default 8;
    INT8 is what the cache holds), ``start_bin`` at least ``2**(num_bits-1)`` (default 128) and
    at most the histogram's bin count (checked in :meth:`compute_amax`). Bad values are a
    ValueError saying which and why.
    """

    name = "entropy"
    trt_algorithm = "EntropyCalibration2"

    def __init__(self, num_bits: int = 8, start_bin: int = 128):
        self.num_bits = int_param("num_bits", num_bits, MIN_BITS, MAX_BITS)
        levels = 1 << (self.num_bits - 1)
        # Below 2**(num_bits-1) a candidate has fewer bins than quantization levels: its last
        # bin is not in the top level and the divergence is not the reference's (nor meaningful).
        self.start_bin = int_param("start_bin", start_bin, levels,
                                   why=" (2**(num_bits-1): a histogram bin per quantization level)")

    def params(self) -> dict:
        return {"num_bits": self.num_bits, "start_bin": self.start_bin}

    def compute_amax(self, hist: np.ndarray, edges: np.ndarray) -> float:
        """amax = the edge of the minimum-KL threshold (0.0 for an empty histogram).

        ValueError when ``start_bin`` exceeds the histogram's bins (no candidate threshold).
        """
        counts, bounds = as_histogram(hist, edges)
        index = entropy_threshold_index(counts, self.num_bits, self.start_bin)
        return 0.0 if index is None else float(bounds[index])


def entropy_threshold_index(hist: np.ndarray, num_bits: int = 8, start_bin: int = 128) -> int | None:
    """Index ``i`` into the edges of the minimum-KL threshold (None for an empty histogram).

    Candidates are ``start_bin`` to ``len(hist)``; a ``start_bin`` beyond that is a ValueError.
    """
    if start_bin > len(hist):
        raise ValueError(
            f"start_bin {start_bin} is beyond the histogram's {len(hist)} bins; use a start_bin of "
            f"at most {len(hist)}, or more bins"
        )
    bins = np.array(hist, dtype=np.float64)
    if len(bins) < 2 or bins.sum() == 0:
        return None
    bins[0] = bins[1]
    levels = 1 << (num_bits - 1)
    candidates = np.arange(start_bin, len(bins) + 1)
    if len(candidates) == 0:
        return None
    scores = _fast_divergences(bins, start_bin, levels)
    defined = ~np.isnan(scores)
    if not defined.any():
        return None
    best = np.min(scores[defined])
    if np.isinf(best):
        # Every defined candidate is infinite: the reference's tie rule picks the largest.
        return int(candidates[defined][-1])
    near = np.flatnonzero(defined & (scores <= best + max(_RESCORE_ABS, _RESCORE_REL * abs(best))))
    if len(near) == 1:
        # No rival within rounding distance: the reference's arithmetic cannot reorder anything.
        return int(candidates[near[0]])
    exact = np.full(len(candidates), np.nan)
    zero = _exact_zero(bins, candidates[near], levels)
    exact[near[zero]] = 0.0
    for position in near[~zero]:
        exact[position] = _reference_divergence(bins, int(candidates[position]), levels)
    winner = np.nanmin(exact)
    last = np.flatnonzero(exact == winner)[-1]
    return int(candidates[last])


@lru_cache(maxsize=8)
def _level_bounds(num_bins: int, start_bin: int, levels: int) -> np.ndarray:
    """Row r, column k: first bin of level k for candidate ``start_bin + r`` (column L = i).

    Level k of candidate i holds bins ceil(k i / L) .. ceil((k + 1) i / L) - 1; L is a power of
    two so the ceiling is a shift. Cached: every 2048-bin tensor uses the same table.
    """
    i = np.arange(start_bin, num_bins + 1, dtype=np.int64)
    k = np.arange(levels + 1, dtype=np.int64)
    bounds = (k[None, :] * i[:, None] + (levels - 1)) >> (levels.bit_length() - 1)
    bounds.setflags(write=False)
    return bounds


def _fast_divergences(bins: np.ndarray, start_bin: int, levels: int) -> np.ndarray:
    """KL(P||Q) for every candidate at once (NaN where Q is empty, inf where P>0 meets Q=0)."""
    total = bins.sum()
    nonzero = bins > 0
    prefix = np.concatenate(([0.0], np.cumsum(bins)))
    prefix_nonzero = np.concatenate(([0.0], np.cumsum(nonzero, dtype=np.float64)))
    safe = np.where(nonzero, bins, 1.0)
    prefix_plogp = np.concatenate(([0.0], np.cumsum(bins * np.log(safe))))

    i = np.arange(start_bin, len(bins) + 1)
    tail = total - prefix[i]
    kept = prefix[i]  # S = sum of Q = mass below the threshold
    last = bins[i - 1]
    scores = np.full(len(i), np.nan)
    scores[(kept > 0) & (tail > 0) & (last == 0)] = np.inf
    rows = np.flatnonzero((kept > 0) & ~((tail > 0) & (last == 0)))
    if len(rows) == 0:
        return scores
    i, tail, kept, last = i[rows], tail[rows], kept[rows], last[rows]
    folded = last + tail
    plogp = prefix_plogp[i - 1] + folded * np.log(np.where(folded > 0, folded, 1.0))

    table = _level_bounds(len(bins), start_bin, levels)
    bounds = table if len(rows) == len(table) else table[rows]
    # Fresh (candidates x 129) arrays cost more in page faults than in arithmetic, so the
    # work arrays are reused between calls (one set per thread).
    edges, mass, count, ratio, empty = _workspace(bounds.shape)
    np.take(prefix, bounds, out=edges)
    np.subtract(edges[:, 1:], edges[:, :-1], out=mass)
    np.take(prefix_nonzero, bounds, out=edges)
    np.subtract(edges[:, 1:], edges[:, :-1], out=count)
    # Bin i-1 always lies in the top level; with a tail, P's extra mass meets Q = M/n there.
    with np.errstate(divide="ignore", invalid="ignore"):
        q_last = mass[:, -1] / count[:, -1]
    # An empty level has mass 0 and count 0: make the ratio 1 there so its term is 0 * log(1).
    np.equal(count, 0, out=empty)
    np.add(count, empty, out=count)
    np.add(mass, empty, out=ratio)
    np.divide(ratio, count, out=ratio)
    np.log(ratio, out=ratio)
    qlogq = np.einsum("ij,ij->i", mass, ratio)
    with np.errstate(divide="ignore", invalid="ignore"):
        qlogq = qlogq + np.where(tail > 0, tail * np.log(np.where(q_last > 0, q_last, 1.0)), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores[rows] = (plogp - qlogq) / total + np.log(kept / total)
    return scores


_local = threading.local()


def _workspace(shape: tuple) -> tuple:
    """Reusable work arrays for :func:`_fast_divergences` (per thread, per shape)."""
    cached = getattr(_local, "arrays", None)
    if cached is None or cached[0] != shape:
        rows, columns = shape
        cached = (shape, (np.empty((rows, columns)), np.empty((rows, columns - 1)),
                          np.empty((rows, columns - 1)), np.empty((rows, columns - 1)),
                          np.empty((rows, columns - 1), dtype=bool)))
        _local.arrays = cached
    return cached[1]


def _exact_zero(bins: np.ndarray, candidates: np.ndarray, levels: int) -> np.ndarray:
    """Per candidate: is Q == P bin for bin (so the reference computes exactly 0)?

    True when nothing lies past the threshold and all non-empty bins of each level hold the
    same count: M^2 == n * sum(h^2) over the level (Cauchy-Schwarz equality), tested in exact
    integer arithmetic (int64 while it cannot overflow, Python integers beyond). Histograms of
    non-integer counts get no shortcut; their near-ties are re-scored instead.
    """
    result = np.zeros(len(candidates), dtype=bool)
    total = bins.sum()
    prefix = np.concatenate(([0.0], np.cumsum(bins)))
    check = prefix[candidates] == total
    if not check.any() or not np.array_equal(bins, np.round(bins)):
        return result
    dtype = np.int64 if total < 2**26 else object
    ints = bins.astype(np.int64).astype(dtype)
    zero = np.zeros(1, dtype=dtype)
    prefix_int = np.concatenate((zero, np.cumsum(ints)))
    prefix_sq = np.concatenate((zero, np.cumsum(ints * ints)))
    prefix_nz = np.concatenate((zero, np.cumsum(ints > 0).astype(dtype)))
    bounds = _level_bounds(len(bins), int(candidates.min()), levels)[candidates[check] - candidates.min()]
    mass = np.diff(prefix_int[bounds], axis=1)
    square = np.diff(prefix_sq[bounds], axis=1)
    count = np.diff(prefix_nz[bounds], axis=1)
    result[check] = np.all(mass * mass == count * square, axis=1)
    return result


def _reference_divergence(bins: np.ndarray, i: int, levels: int) -> float:
    """The divergence of candidate ``i`` computed with the reference's own arithmetic.

    Same arrays as the reference builds (Q's level sums accumulated in bin order, the level
    mean divided by the count of non-empty bins, the tail added to the last reference bin) and
    arithmetic as ``scipy.stats.entropy``, so the float result matches bit for bit.
    """
    head = bins[:i]
    used = head != 0
    level = (np.arange(i) * levels) // i
    level_sum = np.bincount(level[used], weights=head[used], minlength=levels)
    level_count = np.bincount(level[used], minlength=levels)
    quantized = np.zeros(i, dtype=np.float64)
    quantized[used] = level_sum[level[used]] / level_count[level[used]]
    reference = np.array(head)
    reference[-1] += np.sum(bins[i:])
    # scipy.stats.entropy(reference, quantized), minus its argument-handling overhead. Imported
    # here: near-ties are rare and scipy.special takes a quarter of a second to import.
    from scipy.special import rel_entr

    with np.errstate(invalid="ignore", divide="ignore"):
        q = quantized / np.sum(quantized)
        p = reference / np.sum(reference)
    return float(np.sum(rel_entr(p, q)))
