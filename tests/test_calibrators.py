"""Built-in calibrators: their rules (design.md §4) and the plugin registry."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from quantlab import get_calibrator, list_calibrators
from quantlab.calibrators.entropy import EntropyCalibrator
from quantlab.calibrators.mse import MseCalibrator
from quantlab.calibrators.percentile import PercentileCalibrator
from quantlab.errors import CalibratorError
from quantlab.histogram import TensorHistogram

EDGES = np.linspace(0, 2.048, 2049)


def test_all_four_builtins_are_registered_as_entry_points():
    assert {"max", "percentile", "mse", "entropy"} <= {info.name for info in list_calibrators()}


def test_auto_is_registered_as_a_method_like_any_other():
    from quantlab.calibrate import RangeChooser

    listed = {info.name: info.target for info in list_calibrators()}
    assert listed["auto"] == "quantlab.tune.auto:AutoChooser"
    assert isinstance(get_calibrator("auto", samples=8), RangeChooser)


def test_calibrating_does_not_import_the_tuner_until_auto_is_asked_for():
    code = ("import sys, numpy as np; from quantlab import get_calibrator; import quantlab.calibrate; "
            "get_calibrator('entropy'); assert not any(m.startswith('quantlab.tune') for m in sys.modules); "
            "get_calibrator('auto'); assert 'quantlab.tune.auto' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


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
    with pytest.raises(CalibratorError, match="percentile.*p must be a number in \\(0, 100\\], got 101"):
        get_calibrator("percentile", p=101)


@pytest.mark.parametrize("p,shown", [("abc", "'abc'"), (150, "150"), (0, "0"), (-1, "-1"), (float("nan"), "nan"),
                                     (True, "True"), ("inf", "'inf'"), (None, "None")])
def test_percentile_p_must_be_a_number_in_0_100(p, shown):
    with pytest.raises(ValueError, match=re.escape(f"p must be a number in (0, 100], got {shown}")):
        PercentileCalibrator(p=p)


@pytest.mark.parametrize("cls", [EntropyCalibrator, MseCalibrator])
@pytest.mark.parametrize("num_bits,shown", [(0, "0"), ("abc", "'abc'"), (1, "1"), (16, "16"), (8.5, "8.5"),
                                            (True, "True")])
def test_num_bits_must_be_an_integer_from_2_to_8(cls, num_bits, shown):
    with pytest.raises(ValueError, match=re.escape(f"num_bits must be an integer from 2 to 8, got {shown}")):
        cls(num_bits=num_bits)


@pytest.mark.parametrize("cls", [EntropyCalibrator, MseCalibrator])
def test_start_bin_must_be_an_integer(cls):
    with pytest.raises(ValueError, match="start_bin must be an integer .*got 'abc'"):
        cls(start_bin="abc")


def test_mse_start_bin_must_not_be_negative():
    with pytest.raises(ValueError, match="start_bin must be an integer >= 0, got -1"):
        MseCalibrator(start_bin=-1)


def test_entropy_start_bin_keeps_a_histogram_bin_per_quantization_level():
    with pytest.raises(ValueError, match=re.escape("start_bin must be an integer >= 128 (2**(num_bits-1)")):
        EntropyCalibrator(start_bin=64)
    assert EntropyCalibrator(num_bits=7, start_bin=64).params() == {"num_bits": 7, "start_bin": 64}


def test_integer_parameters_accept_the_text_and_floats_the_cli_passes():
    assert EntropyCalibrator(num_bits="8", start_bin=256.0).params() == {"num_bits": 8, "start_bin": 256}


def test_entropy_start_bin_beyond_the_histogram_is_a_clear_error():
    with pytest.raises(ValueError, match=re.escape("start_bin 5000 is beyond the histogram's 2048 bins; use a "
                                                   "start_bin of at most 2048, or more bins")):
        EntropyCalibrator(start_bin=5000).compute_amax(np.ones(2048), EDGES)


def test_mse_start_bin_beyond_the_histogram_is_a_clear_error():
    with pytest.raises(ValueError, match=re.escape("start_bin 2048 is beyond the histogram's 2048 bins; use a "
                                                   "start_bin below 2048, or more bins")):
        MseCalibrator(start_bin=2048).compute_amax(np.ones(2048), EDGES)


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
