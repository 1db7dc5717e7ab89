"""``max``: amax = the largest |x| seen (no saturation; TensorRT's MinMaxCalibration)."""

from __future__ import annotations

import numpy as np

from ._common import as_histogram, last_nonzero_edge


class MaxCalibrator:
    """Non-saturating: every calibration value is representable, outliers included.

    From statistics it returns the exact running max |x|; from a bare histogram, the upper
    edge of the last non-empty bin (the histogram cannot say more).
    """

    name = "max"
    trt_algorithm = "MinMaxCalibration"

    def params(self) -> dict:
        return {}

    def compute_amax(self, hist: np.ndarray, edges: np.ndarray) -> float:
        counts, bounds = as_histogram(hist, edges)
        return last_nonzero_edge(counts, bounds)

    def calibrate(self, stats) -> float:
        return float(stats.max_abs)
