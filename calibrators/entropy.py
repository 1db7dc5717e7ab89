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
with the reference's own arithmetic (same arrays, same ``scipy.stats.entropy`` call) and the
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

import numpy as np
from scipy.stats import entropy as scipy_entropy

from calibrators._common import as_histogram

# Candidates whose fast score is within this distance of the best are re-scored exactly.
_RESCORE_ABS = 1e-9
_RESCORE_REL = 1e-7


class EntropyCalibrator:
    """Minimum KL divergence between the clipped distribution and its 128-level quantization."""

    name = "entropy"
    trt_algorithm = "EntropyCalibration2"

    def __init__(self, num_bits: int = 8, start_bin: int = 128):
        if num_bits < 2:
            raise ValueError(f"num_bits must be >= 2, got {num_bits}")
        self.num_bits = int(num_bits)
        self.start_bin = int(start_bin)

    def params(self) -> dict:
        return {"num_bits": self.num_bits, "start_bin": self.start_bin}

    def compute_amax(self, hist: np.ndarray, edges: np.ndarray) -> float:
        counts, bounds = as_histogram(hist, edges)
        index = entropy_threshold_index(counts, self.num_bits, self.start_bin)
        return 0.0 if index is None else float(bounds[index])


def entropy_threshold_index(hist: np.ndarray, num_bits: int = 8, start_bin: int = 128) -> int | None:
    """Index ``i`` into the edges of the minimum-KL threshold (None for an empty histogram)."""
    bins = np.array(hist, dtype=np.float64)
    if len(bins) < 2 or bins.sum() == 0:
        return None
    bins[0] = bins[1]
    levels = 1 << (num_bits - 1)
    candidates = np.arange(start_bin, len(bins) + 1)
    if len(candidates) == 0:
        return None
    scores, exact_zero = _fast_divergences(bins, candidates, levels)
    defined = ~np.isnan(scores)
    if not defined.any():
        return None
    best = np.min(scores[defined])
    if np.isinf(best):
        # Every defined candidate is infinite: the reference's tie rule picks the largest.
        return int(candidates[defined][-1])
    near = defined & (scores <= best + max(_RESCORE_ABS, _RESCORE_REL * abs(best)))
    exact = np.where(exact_zero, 0.0, np.nan)
    for position in np.flatnonzero(near & ~exact_zero):
        exact[position] = _reference_divergence(bins, int(candidates[position]), levels)
    winner = np.nanmin(exact)
    last = np.flatnonzero(exact == winner)[-1]
    return int(candidates[last])


def _fast_divergences(bins: np.ndarray, candidates: np.ndarray, levels: int):
    """KL(P||Q) for every candidate at once (NaN where Q is empty, inf where P>0 meets Q=0).

    Also returns a mask of candidates with P == Q bin for bin, whose divergence the reference
    computes as exactly 0.
    """
    total = bins.sum()
    nonzero = bins > 0
    prefix = np.concatenate(([0.0], np.cumsum(bins)))
    prefix_nonzero = np.concatenate(([0], np.cumsum(nonzero)))
    safe = np.where(nonzero, bins, 1.0)
    prefix_plogp = np.concatenate(([0.0], np.cumsum(bins * np.log(safe))))

    i = candidates
    tail = total - prefix[i]
    kept = prefix[i]  # S = sum of Q = mass below the threshold
    last = bins[i - 1]
    folded = last + tail
    plogp = prefix_plogp[i - 1] + folded * np.log(np.where(folded > 0, folded, 1.0))

    # Level k of candidate i holds bins ceil(k i / L) .. ceil((k + 1) i / L) - 1 (L a power of 2).
    k = np.arange(levels + 1)
    shift = levels.bit_length() - 1
    bounds = (k[None, :] * i[:, None] + (levels - 1)) >> shift
    mass = np.diff(prefix[bounds], axis=1)
    count = np.diff(prefix_nonzero[bounds], axis=1)
    has = count > 0
    # mass > 0 exactly where count > 0, so log(mass / count) is finite there; 1 elsewhere -> 0.
    ratio = np.divide(mass, count, out=np.ones_like(mass), where=has)
    qlogq = np.einsum("ij,ij->i", mass, np.log(ratio))
    top_mass, top_count = mass[:, -1], count[:, -1]  # bin i-1 is always in the top level
    q_last = np.where(top_count > 0, top_mass / np.maximum(top_count, 1), 0.0)
    qlogq = qlogq + np.where(tail > 0, tail * np.log(np.where(q_last > 0, q_last, 1.0)), 0.0)

    with np.errstate(divide="ignore", invalid="ignore"):
        scores = (plogp - qlogq) / total + np.log(kept / total)
    scores = np.where(kept > 0, scores, np.nan)
    scores = np.where((kept > 0) & (tail > 0) & (last == 0), np.inf, scores)
    exact_zero = (kept > 0) & (tail == 0)
    if exact_zero.any():
        exact_zero[exact_zero] = _levels_uniform(bins, bounds[exact_zero], mass[exact_zero], count[exact_zero])
    scores = np.where(exact_zero, 0.0, scores)
    return scores, exact_zero


def _levels_uniform(bins, bounds, mass, count) -> np.ndarray:
    """Per row: do all non-empty bins of each level hold the same count (so Q == P)?

    Equal non-empty bins <=> M^2 == n * sum(h^2) over the level (Cauchy-Schwarz equality),
    tested in exact integer arithmetic (int64 while it cannot overflow, Python integers
    beyond); histograms that are not integer counts get no shortcut (their near-ties are all
    re-scored).
    """
    if not np.array_equal(bins, np.round(bins)):
        return np.zeros(len(bounds), dtype=bool)
    dtype = np.int64 if bins.sum() < 2**26 else object
    ints = bins.astype(np.int64).astype(dtype)
    prefix_sq = np.concatenate((np.zeros(1, dtype=dtype), np.cumsum(ints * ints)))
    square = np.diff(prefix_sq[bounds], axis=1)
    m = mass.astype(np.int64).astype(dtype)
    return np.all(m * m == count.astype(dtype) * square, axis=1)


def _reference_divergence(bins: np.ndarray, i: int, levels: int) -> float:
    """The divergence of candidate ``i`` computed with the reference's own arithmetic.

    Same arrays as the reference builds (Q's level sums accumulated in bin order, the level
    mean divided by the count of non-empty bins, the tail added to the last reference bin) and
    the same ``scipy.stats.entropy`` call, so the float result matches bit for bit.
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
    return float(scipy_entropy(reference, quantized))
