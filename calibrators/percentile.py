"""``percentile``: amax at the p-th percentile of |x| (p = 99.99 by default)."""

from __future__ import annotations

import numpy as np

from ._common import as_histogram, number_param


class PercentileCalibrator:
    """amax is the left edge of the bin where the cumulative fraction first reaches p/100.

    This is the rule of pytorch-quantization / Model Optimizer's percentile calibrator (the
    cumulative fraction is ``cumsum(hist / total)``, as there). Where that edge is 0 (more than
    p % of the values lie in bin 0, e.g. a mostly-zero ReLU output) the upper edge of bin 0 is
    returned instead, so the scale is never 0.

    ``p``: a number (int, float or numeric text) in (0, 100]; anything else, NaN and bools
    included, is a ValueError ("p must be a number in (0, 100], got 150").
    """

    name = "percentile"
    trt_algorithm = "EntropyCalibration2"

    def __init__(self, p: float = 99.99):
        requirement = "a number in (0, 100]"
        value = number_param("p", p, requirement)
        if not 0 < value <= 100:
            raise ValueError(f"p must be {requirement}, got {p!r}")
        self.p = value

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
