"""Built-in calibrators: their rules (design.md §4) and the plugin registry."""

from __future__ import annotations

import numpy as np
import pytest

from quantlab import get_calibrator, list_calibrators
from quantlab.errors import CalibratorError
from quantlab.histogram import TensorHistogram

EDGES = np.linspace(0, 2.048, 2049)


def test_all_four_builtins_are_registered_as_entry_points():
    assert {"max", "percentile", "mse", "entropy"} <= {info.name for info in list_calibrators()}


def test_unknown_method_names_the_installed_ones():
    with pytest.raises(CalibratorError, match="unknown calibration method 'kl'.*entropy"):
        get_calibrator("kl")


def test_bad_parameters_are_a_calibrator_error():
    with pytest.raises(CalibratorError, match="percentile"):
        get_calibrator("percentile", q=3)


def test_max_is_the_upper_edge_of_the_last_nonempty_bin():
    counts = np.zeros(2048)
    counts[[3, 700]] = [10, 1]
    assert get_calibrator("max").compute_amax(counts, EDGES) == pytest.approx(EDGES[701])


def test_max_from_statistics_is_the_exact_largest_magnitude():
    hist = TensorHistogram()
    hist.update(np.array([0.1, -3.3, 2.0], dtype=np.float32))
    assert get_calibrator("max").calibrate(hist) == float(np.float32(3.3))


def test_percentile_is_the_left_edge_of_the_bin_reaching_p():
    counts = np.zeros(2048)
    counts[10], counts[20], counts[30] = 98, 1, 1
    assert get_calibrator("percentile", p=99).compute_amax(counts, EDGES) == EDGES[20]
    assert get_calibrator("percentile", p=98).compute_amax(counts, EDGES) == EDGES[10]


def test_percentile_never_returns_zero_when_bin_zero_holds_the_percentile():
    counts = np.zeros(2048)
    counts[0], counts[500] = 1_000_000, 1
    assert get_calibrator("percentile", p=99.9).compute_amax(counts, EDGES) == EDGES[1]


def test_percentile_rejects_p_outside_0_100():
    with pytest.raises(ValueError):
        get_calibrator("percentile", p=101)


def mse_by_hand(counts, edges, start=128):
    centers = (edges[1:] + edges[:-1]) / 2
    best, best_amax = np.inf, None
    for amax in centers[start:]:
        scale = 127 / amax
        q = np.clip(np.round(centers * scale), -127, 127) / scale
        err = float(((q - centers) ** 2 * counts).sum())
        if err < best:
            best, best_amax = err, amax
    return best_amax


@pytest.mark.parametrize("seed", range(3))
def test_mse_picks_the_first_minimum_of_the_weighted_quantization_error(seed):
    rng = np.random.default_rng(seed)
    counts = np.histogram(np.abs(rng.laplace(size=20_000)), bins=EDGES)[0]
    assert get_calibrator("mse").compute_amax(counts, EDGES) == pytest.approx(mse_by_hand(counts, EDGES), rel=0, abs=0)


def test_saturating_methods_clip_outliers_that_max_keeps():
    rng = np.random.default_rng(3)
    hist = TensorHistogram()
    hist.update(np.concatenate([rng.normal(size=100_000), [60.0]]).astype(np.float32))
    ceiling = get_calibrator("max").calibrate(hist)
    for method in ("entropy", "percentile"):
        assert get_calibrator(method).compute_amax(hist.counts, hist.edges) < ceiling / 4, method
    # MSE weighs the outlier's error squared, so it clips less, but still clips.
    assert get_calibrator("mse").compute_amax(hist.counts, hist.edges) < ceiling
