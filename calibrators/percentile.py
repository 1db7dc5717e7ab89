"""``percentile``: amax at the p-th percentile of |x| (p = 99.99 by default)."""

from __future__ import annotations

import math

import numpy as np

from ._common import as_histogram


class PercentileCalibrator:
    """amax is the left edge of the bin where the cumulative fraction first reaches p/100.

    This is the rule of pytorch-quantization / Model Optimizer's percentile calibrator (the
    cumulative fraction is ``cumsum(hist / total)``, as there). Where that edge is 0 (more than
    p % of the values lie in bin 0, e.g. a mostly-zero ReLU output) the upper edge of bin 0 is
    returned instead, so the scale is never 0.
    """

    name = "percentile"
    trt_algorithm = "EntropyCalibration2"

    def __init__(self, p: float = 99.99):
        p = float(p)
        if not (0 < p <= 100) or math.isnan(p):
            raise ValueError(f"percentile p must be in (0, 100], got {p}")
        self.p = p

    def params(self) -> dict:
        return {"p": self.p}

    def compute_amax(self, hist: np.ndarray, edges: np.ndarray) -> float:
        counts, bounds = as_histogram(hist, edges)
        total = counts.sum()
        if total == 0:
            return 0.0
        cdf = np.cumsum(counts / total)
        index = int(np.searchsorted(cdf, self.p / 100))
        index = min(index, len(counts))
        return float(bounds[index] if index > 0 else bounds[1])
