"""``mse``: amax minimising the mean squared error of 8-bit fake quantization."""

from __future__ import annotations

import numpy as np

from ._common import MAX_BITS, MIN_BITS, as_histogram, int_param


class MseCalibrator:
    """Candidates are the bin centres from ``start_bin`` (128) on; for each, the bin centres
    are fake-quantized symmetrically to 8 bits (``round(c * 127 / amax)``, round half to even,
    clamped to [-127, 127], scaled back) and the squared error is weighted by the counts.
    The first minimum wins (Model Optimizer's ``_compute_amax_mse`` rule). Vectorised over
    candidates and the non-empty bins only, in blocks to bound memory.

    Parameters (int, or integer text as ``--param`` passes it): ``start_bin`` >= 0 and below the
    histogram's bin count (checked in :meth:`compute_amax`), ``num_bits`` 2 to 8. Bad values are
    a ValueError saying which and why.
    """

    name = "mse"
    trt_algorithm = "EntropyCalibration2"

    def __init__(self, start_bin: int = 128, num_bits: int = 8):
        self.start_bin = int_param("start_bin", start_bin, 0)
        self.num_bits = int_param("num_bits", num_bits, MIN_BITS, MAX_BITS)

    def params(self) -> dict:
        return {"start_bin": self.start_bin, "num_bits": self.num_bits}

    def compute_amax(self, hist: np.ndarray, edges: np.ndarray) -> float:
        """amax = the best bin centre from ``start_bin`` on (0.0 for an empty histogram).

        ValueError when ``start_bin`` is not below the histogram's bins (no candidate).
        """
        counts, bounds = as_histogram(hist, edges)
        if self.start_bin >= len(counts):
            raise ValueError(
                f"start_bin {self.start_bin} is beyond the histogram's {len(counts)} bins; use a "
                f"start_bin below {len(counts)}, or more bins"
            )
        if counts.sum() == 0:
            return 0.0
        centers = (bounds[1:] + bounds[:-1]) / 2
        candidates = centers[self.start_bin:]
        used = counts > 0
        x, weight = centers[used], counts[used]
        bound = float(2 ** (self.num_bits - 1) - 1)
        errors = np.empty(len(candidates))
        block = max(1, (1 << 20) // max(1, len(x)))
        for start in range(0, len(candidates), block):
            amax = candidates[start:start + block, None]
            scale = bound / amax
            quantized = np.clip(np.round(x * scale), -bound, bound) / scale
            errors[start:start + block] = ((quantized - x) ** 2 * weight).sum(axis=1)
        return float(candidates[int(np.argmin(errors))])
