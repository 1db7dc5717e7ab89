"""The entropy calibrator returns exactly the reference KL threshold (design.md §4)."""

from __future__ import annotations

import numpy as np
import pytest

from quantlab import get_calibrator
from quantlab.calibrators.entropy import EntropyCalibrator
from quantlab.histogram import TensorHistogram

from entropy_reference import reference_entropy_amax

RNG = np.random.default_rng(1234)


def histogram_of(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hist = TensorHistogram()
    hist.update(values.astype(np.float32))
    return hist.counts, hist.edges


def linear_edges(bins: int = 2048, top: float = 1.0) -> np.ndarray:
    return np.linspace(0, top, bins + 1)


def sparse_histogram(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = np.zeros(2048, dtype=np.int64)
    where = rng.choice(2048, size=rng.integers(3, 60), replace=False)
    counts[where] = rng.integers(1, 1000, size=len(where))
    counts[rng.integers(0, 100)] += 5  # keep the reference well defined: mass below bin 128
    return counts


CASES = {
    "gaussian": lambda: histogram_of(RNG.normal(size=200_000)),
    "laplace": lambda: histogram_of(RNG.laplace(size=200_000)),
    "heavy_tail_cauchy": lambda: histogram_of(RNG.standard_cauchy(size=100_000)),
    "student_t3": lambda: histogram_of(RNG.standard_t(3, size=100_000)),
    "relu_spike_at_zero": lambda: histogram_of(np.maximum(RNG.normal(size=200_000), 0)),
    "relu6_clipped": lambda: histogram_of(np.clip(RNG.normal(2, 3, size=100_000), 0, 6)),
    "few_samples": lambda: histogram_of(RNG.normal(size=40)),
    "uniform": lambda: histogram_of(RNG.uniform(-1, 1, size=50_000)),
    "bimodal": lambda: histogram_of(np.concatenate([RNG.normal(0, 0.1, 90_000), RNG.normal(5, 0.5, 10_000)])),
    "outlier_far_right": lambda: histogram_of(np.concatenate([RNG.normal(size=50_000), [900.0]])),
    "bins_past_last_nonempty": lambda: (
        np.concatenate([RNG.integers(1, 50, 300), np.zeros(1748, int)]), linear_edges()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_entropy_matches_reference_on_activation_like_histograms(case):
    counts, edges = CASES[case]()
    expected, _ = reference_entropy_amax(counts, edges)
    assert get_calibrator("entropy").compute_amax(counts, edges) == expected


@pytest.mark.parametrize("seed", range(8))
def test_entropy_matches_reference_on_sparse_histograms(seed):
    counts = sparse_histogram(seed)
    edges = linear_edges(top=3.0)
    expected, _ = reference_entropy_amax(counts, edges)
    assert EntropyCalibrator().compute_amax(counts, edges) == expected


@pytest.mark.parametrize("seed", range(6))
def test_entropy_matches_reference_on_random_noise_histograms(seed):
    rng = np.random.default_rng(100 + seed)
    counts = rng.integers(0, 4, size=2048) * (rng.random(2048) < 0.4)
    counts[: rng.integers(1, 200)] += rng.integers(0, 30)
    expected, _ = reference_entropy_amax(counts, linear_edges())
    assert EntropyCalibrator().compute_amax(counts, linear_edges()) == expected


def test_entropy_breaks_exact_ties_toward_the_largest_threshold():
    # Few non-empty bins: many candidates share the minimum divergence exactly.
    counts = np.zeros(2048, dtype=np.int64)
    counts[[1, 5, 40, 90]] = [10, 3, 7, 2]
    expected, divergences = reference_entropy_amax(counts, linear_edges())
    assert np.sum(divergences == divergences.min()) > 1
    assert EntropyCalibrator().compute_amax(counts, linear_edges()) == expected


def test_entropy_works_on_histograms_shorter_and_longer_than_2048_bins():
    for bins in (256, 4096):
        counts = np.histogram(np.abs(RNG.normal(size=20_000)), bins=bins)[0]
        edges = linear_edges(bins, 4.0)
        assert EntropyCalibrator().compute_amax(counts, edges) == reference_entropy_amax(counts, edges)[0]


def test_entropy_leaves_the_callers_histogram_untouched():
    counts, edges = CASES["gaussian"]()
    before = counts.copy()
    EntropyCalibrator().compute_amax(counts, edges)
    assert np.array_equal(counts, before)


def test_entropy_of_a_constant_tensor_never_clips_the_constant():
    # Degenerate case: no mass below bin 128, the reference compares NaNs. Ours skips
    # undefined candidates, so the threshold lies at or above the value.
    counts, edges = histogram_of(np.full(1000, 3.0))
    assert EntropyCalibrator().compute_amax(counts, edges) >= 3.0


def test_entropy_with_no_mass_below_the_start_bin_keeps_the_data():
    counts, edges = histogram_of(RNG.uniform(0.7, 1.0, size=10_000))
    amax = EntropyCalibrator().compute_amax(counts, edges)
    assert 0.7 < amax <= 1.0 + 1e-3


def test_entropy_of_an_empty_histogram_is_zero():
    assert EntropyCalibrator().compute_amax(np.zeros(2048), linear_edges()) == 0.0


def test_entropy_rejects_edges_of_the_wrong_length():
    with pytest.raises(ValueError, match="len\\(hist\\) \\+ 1"):
        EntropyCalibrator().compute_amax(np.ones(2048), np.linspace(0, 1, 2048))


def _nvidia_reference():
    try:
        from modelopt.torch.quantization.calib.histogram import _compute_amax_entropy
    except Exception:
        return None
    return _compute_amax_entropy


@pytest.mark.skipif(_nvidia_reference() is None,
                    reason="NVIDIA's reference entropy needs nvidia-modelopt and torch, benchmark-only "
                           "dependencies (pip install nvidia-modelopt torch, as benchmarks/tune_peers.py says)")
def test_entropy_matches_nvidia_modelopt_on_the_embedded_models_activations():
    from quantlab import DataSpec, collect_statistics

    reference = _nvidia_reference()
    stats = collect_statistics(None, DataSpec(num_samples=64), progress=False)
    for name, hist in list(stats.tensors.items())[:12]:
        expected = float(reference(hist.counts.astype(np.int64).copy(), hist.edges, 8, False, 1, 128))
        assert EntropyCalibrator().compute_amax(hist.counts, hist.edges) == expected, name
