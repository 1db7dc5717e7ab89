"""Power-of-two histograms: exact, order-independent, mergeable."""

from __future__ import annotations

import re

import numpy as np
import pytest

from quantlab.errors import QuantlabError
from quantlab.histogram import TensorHistogram, check_bins, range_exponent, rebinned

RNG = np.random.default_rng(7)


def folded(*batches: np.ndarray, bins: int = 2048) -> TensorHistogram:
    hist = TensorHistogram(bins)
    for batch in batches:
        hist.update(batch)
    return hist


def test_range_is_the_next_power_of_two_strictly_above_the_max():
    assert range_exponent(1.0) == 1  # [0, 2): 1.0 must fall inside a bin, not on the edge
    assert range_exponent(0.75) == 0
    assert range_exponent(3.0) == 2


def test_histogram_equals_numpy_histogram_on_the_same_grid():
    values = RNG.normal(size=10_000).astype(np.float32)
    hist = folded(values)
    expected, _ = np.histogram(np.abs(values), bins=hist.edges)
    assert np.array_equal(hist.counts, expected)
    assert hist.max_abs == float(np.abs(values).max())


def test_batch_split_and_order_do_not_change_a_single_count():
    values = (RNG.standard_cauchy(size=20_000) * 0.01).astype(np.float32)
    whole = folded(values)
    shuffled = RNG.permutation(values)
    pieces = folded(*np.array_split(shuffled, 37))
    assert np.array_equal(whole.counts, pieces.counts)
    assert whole.exponent == pieces.exponent


def test_growing_the_range_merges_bins_exactly():
    small = RNG.uniform(0, 0.1, size=5_000).astype(np.float32)
    large = RNG.uniform(0, 50, size=5_000).astype(np.float32)
    grown = folded(small, large)
    direct = folded(np.concatenate([small, large]))
    assert np.array_equal(grown.counts, direct.counts)


def test_merging_shards_equals_one_pass():
    values = RNG.laplace(size=30_000).astype(np.float32)
    one = folded(values)
    shards = [folded(part) for part in np.array_split(values, 3)]
    merged = shards[2]
    merged.merge(shards[0])
    merged.merge(shards[1])
    assert np.array_equal(one.counts, merged.counts)
    assert (one.max_abs, one.min_value, one.max_value) == (merged.max_abs, merged.min_value, merged.max_value)


def test_nan_and_inf_are_counted_apart_and_kept_out_of_the_histogram():
    hist = folded(np.array([1.0, np.nan, np.inf, -np.inf, -2.0], dtype=np.float32))
    assert (hist.nan_count, hist.inf_count, hist.total) == (1, 2, 2)
    assert hist.max_abs == 2.0


def test_extremes_take_minus_zero_below_plus_zero_whatever_the_batch_order():
    plus, minus = np.zeros(3, dtype=np.float32), -np.zeros(3, dtype=np.float32)
    for batches in ((plus, minus), (minus, plus)):
        hist = folded(*batches)
        assert (np.signbit(hist.min_value), np.signbit(hist.max_value)) == (True, False)
        merged = folded(batches[0])
        merged.merge(folded(batches[1]))
        assert (np.signbit(merged.min_value), np.signbit(merged.max_value)) == (True, False)


def test_all_zero_tensor_lands_in_bin_zero_and_merges_with_anything():
    zeros = folded(np.zeros(100, dtype=np.float32))
    assert zeros.max_abs == 0 and zeros.counts[0] == 100
    other = folded(np.full(10, 5.0, dtype=np.float32))
    other.merge(zeros)
    assert other.counts[0] == 100 and other.total == 110


def test_rebinned_only_grows():
    with pytest.raises(ValueError):
        rebinned(np.zeros(8, dtype=np.int64), 3, 2)


def test_bins_must_be_a_power_of_two():
    with pytest.raises(QuantlabError, match="power of two") as caught:
        TensorHistogram(1000)
    assert caught.value.params == ("bins",)


@pytest.mark.parametrize("bins", [0, 1000, 128, 2**17, -2048, True, 2048.0, "2048"])
def test_check_bins_refuses_what_no_histogram_can_use(bins):
    with pytest.raises(QuantlabError, match=re.escape(f"`bins` must be a power of two from 256 to 65536 "
                                                      f"(default 2048), got {bins!r}")) as caught:
        check_bins(bins)
    assert caught.value.params == ("bins",)


@pytest.mark.parametrize("bins", [256, 2048, 65536, np.int64(4096)])
def test_check_bins_accepts_powers_of_two_from_256_to_65536(bins):
    assert check_bins(bins) == int(bins) and type(check_bins(bins)) is int


def test_bins_error_is_written_with_the_flag_the_cli_renders():
    with pytest.raises(QuantlabError) as caught:
        check_bins(1000)
    assert caught.value.render({"bins": "--bins"}).startswith("--bins must be a power of two")
