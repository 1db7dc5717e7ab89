"""The compiled histogram kernel against the numpy path and an exact integer reference.

Both paths must give the same statistics, bit for bit, on any input: the counts, the exponent, the
extremes (-0.0 < +0.0), max |x| and the NaN and Inf counts. The inputs here are the ones that break
histogram code: values on bin edges, the largest float below a power of two, subnormals, signed
zeros, NaN and Inf in every mix, empty tensors, every float width, and splits at every boundary
the kernel has (its chunks, its four-lane path, the pieces the collector cuts).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from fractions import Fraction

import numpy as np
import pytest

from quantlab import histogram
from quantlab.histogram import EMPTY_EXPONENT, KERNEL_CHUNK, TensorHistogram, flat_values

RNG = np.random.default_rng(15)
FLOATS = [np.float32, np.float64]


@pytest.fixture(scope="module", autouse=True)
def kernel():
    assert histogram.load_kernel(), histogram.kernel_info()  # numba is a dependency: it must load
    return histogram._kernel


def compiled(*batches, bins: int = 2048, start: TensorHistogram | None = None) -> TensorHistogram:
    hist = start if start is not None else TensorHistogram(bins)
    for batch in batches:
        flat = flat_values(batch)
        if flat.size:
            hist._update_compiled(histogram._kernel, flat)
    return hist


def numpy_path(*batches, bins: int = 2048, start: TensorHistogram | None = None) -> TensorHistogram:
    hist = start if start is not None else TensorHistogram(bins)
    for batch in batches:
        flat = flat_values(batch)
        for begin in range(0, flat.size, histogram.CHUNK):
            hist._update_chunk(flat[begin:begin + histogram.CHUNK])
    return hist


def exact(values, bins: int = 2048) -> tuple[np.ndarray, int]:
    """Counts and exponent by the definition, in exact integer arithmetic: the bin of |x| is
    floor(|x| * bins / 2**e), with 2**(e-1) <= max|x| < 2**e."""
    ratios = [abs(float(x)).as_integer_ratio() for x in flat_values(values) if np.isfinite(x)]
    counts = np.zeros(bins, dtype=np.int64)
    top = max((Fraction(n, d) for n, d in ratios), default=Fraction(0))
    if top == 0:
        counts[0] = len(ratios)
        return counts, EMPTY_EXPONENT
    exponent = int(np.frexp(float(top))[1])
    shift = bins.bit_length() - 1 - exponent  # |x| * 2**shift, with d a power of two
    for n, d in ratios:
        counts[(n << shift) // d if shift >= 0 else n // (d << -shift)] += 1
    return counts, exponent


def bits(value: float) -> bytes:
    return np.float64(value).tobytes()


def assert_same(a: TensorHistogram, b: TensorHistogram) -> None:
    assert np.array_equal(a.counts, b.counts)
    assert (a.exponent, a.nan_count, a.inf_count) == (b.exponent, b.nan_count, b.inf_count)
    for field in ("max_abs", "min_value", "max_value"):
        assert bits(getattr(a, field)) == bits(getattr(b, field)), field


def assert_exact(values, bins: int = 2048) -> TensorHistogram:
    """Kernel == numpy path == the definition; returns the kernel's histogram."""
    got = compiled(values, bins=bins)
    assert_same(got, numpy_path(values, bins=bins))
    counts, exponent = exact(values, bins)
    assert np.array_equal(got.counts, counts) and got.exponent == exponent
    return got


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bins", [256, 2048, 65536])
def test_values_exactly_on_bin_edges_fall_in_the_bin_they_open(dtype, bins):
    width = 2.0**3 / bins  # range [0, 8): the last edge below 8 sets the exponent
    edges = np.arange(bins, dtype=np.float64) * width
    values = np.concatenate([edges, -edges]).astype(dtype)
    hist = assert_exact(values, bins)
    assert hist.exponent == 3 and (hist.counts == 2).all()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("power", [-20, -1, 0, 1, 7, 30])
def test_largest_float_below_a_power_of_two_is_in_the_last_bin_of_that_range(dtype, power):
    below = np.nextafter(dtype(2.0**power), dtype(0))
    hist = assert_exact(np.array([below, -below, dtype(2.0**power) / 4], dtype=dtype))
    assert hist.exponent == power and hist.counts[-1] == 2


@pytest.mark.parametrize("dtype", FLOATS)
def test_a_power_of_two_itself_opens_the_next_range(dtype):
    hist = assert_exact(np.array([1.0, np.nextafter(dtype(1.0), dtype(0))], dtype=dtype))
    assert hist.exponent == 1 and hist.counts[1024] == 1 and hist.counts[1023] == 1


def test_float32_subnormals_alone_and_beside_normal_values():
    tiny = np.float32(2.0**-149)
    subnormals = np.array([tiny, -tiny, tiny * 3, 2.0**-127, np.float32(2.0**-126) - tiny], dtype=np.float32)
    hist = assert_exact(subnormals)  # a range near 2**-126: its scale does not fit in a float32
    assert hist.exponent == -126
    assert_exact(np.concatenate([subnormals, np.float32([1e-3, 0.5])]))


def test_float64_subnormals_whose_scale_would_overflow_a_float64():
    tiny = 5e-324
    values = np.array([tiny, -tiny * 7, 1e-310, 2.2e-308], dtype=np.float64)
    hist = assert_exact(values)  # bins / 2**exponent = 2**1033 is no float64: scaled in two steps
    assert hist.exponent == -1022 and hist.total == 4


def test_largest_float64_values_are_binned_without_overflow():
    values = np.array([np.finfo(np.float64).max, -1e308, 1.0, 5e-324])
    hist = assert_exact(values)
    assert hist.exponent == 1024 and hist.counts[-1] == 1


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("values, low, high", [
    ([-0.0], -0.0, -0.0),
    ([0.0], 0.0, 0.0),
    ([0.0, -0.0], -0.0, 0.0),
    ([-0.0, 0.0], -0.0, 0.0),
    ([-0.0, 3.0], -0.0, 3.0),
    ([-2.0, 0.0], -2.0, 0.0),
    ([-2.0, -0.0], -2.0, -0.0),
])
def test_signed_zeros_take_the_order_where_minus_zero_is_below_plus_zero(dtype, values, low, high):
    hist = assert_exact(np.array(values * 6000, dtype=dtype))  # across kernel chunks
    assert (bits(hist.min_value), bits(hist.max_value)) == (bits(low), bits(high))
    assert bits(hist.max_abs) == bits(max(abs(low), abs(high)) + 0.0)


@pytest.mark.parametrize("dtype", FLOATS)
def test_signed_zero_extremes_do_not_depend_on_order_or_split(dtype):
    values = np.array([0.0] * 5000 + [-0.0] * 5000 + [4.0] * 10, dtype=dtype)
    reference = compiled(values)
    for _ in range(3):
        shuffled = RNG.permutation(values)
        for hist in (compiled(*np.array_split(shuffled, 7)), numpy_path(*np.array_split(shuffled, 5))):
            assert_same(hist, reference)


@pytest.mark.parametrize("dtype", FLOATS)
def test_nan_and_inf_of_either_sign_are_counted_apart_wherever_they_are(dtype):
    nan_neg = -np.array(np.nan, dtype=dtype)  # NaN with the sign bit set
    payload = np.array([0x7FC00123 if dtype == np.float32 else 0x7FF8000000000123],
                       dtype=np.int32 if dtype == np.float32 else np.int64).view(dtype)[0]
    bad = np.array([np.nan, nan_neg, payload, np.inf, -np.inf], dtype=dtype)
    finite = RNG.normal(size=3 * KERNEL_CHUNK).astype(dtype)
    counts, exponent = exact(finite)
    for at in (0, KERNEL_CHUNK - 1, KERNEL_CHUNK, 2 * KERNEL_CHUNK + 17, finite.size):
        values = np.insert(finite, at, bad)
        hist = compiled(values)
        assert_same(hist, numpy_path(values))
        assert np.array_equal(hist.counts, counts) and hist.exponent == exponent
        assert (hist.nan_count, hist.inf_count, hist.total) == (3, 2, finite.size)
        assert hist.max_abs == float(np.abs(finite).max())


@pytest.mark.parametrize("dtype", FLOATS)
def test_a_tensor_of_nothing_but_nan_and_inf_leaves_the_histogram_empty(dtype):
    hist = assert_exact(np.array([np.nan, np.inf, -np.inf] * 1000, dtype=dtype))
    assert (hist.nan_count, hist.inf_count, hist.total, hist.exponent) == (1000, 2000, 0, EMPTY_EXPONENT)
    assert (hist.min_value, hist.max_value, hist.max_abs) == (np.inf, -np.inf, 0.0)


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4, 5)])
def test_empty_tensors_change_nothing(shape):
    start = compiled(np.float32([0.5, -3.0]))
    before = (start.counts.copy(), start.exponent, start.min_value, start.max_value)
    hist = compiled(np.empty(shape, np.float32), start=start)
    assert np.array_equal(hist.counts, before[0]) and (hist.exponent, hist.min_value, hist.max_value) == before[1:]


def test_all_zero_tensor_lands_in_bin_zero_and_grows_with_the_next_values():
    zeros = np.zeros(70_000, dtype=np.float32)  # the four-lane path, at the empty exponent
    hist = assert_exact(zeros)
    assert hist.exponent == EMPTY_EXPONENT and hist.counts[0] == zeros.size
    both = compiled(zeros, np.float32([1.0, -0.25]))
    assert_same(both, numpy_path(np.concatenate([zeros, np.float32([1.0, -0.25])])))


@pytest.mark.parametrize("dtype", [np.float16, np.dtype(">f4"), np.dtype(">f8"), np.int64, np.uint8, np.bool_])
def test_other_input_dtypes_are_binned_like_the_numpy_path(dtype):
    values = np.array([0.0, -0.0, 1.0, 6.0e-5, 6.0e-8, -2.5, 255.0, 65504.0], dtype=np.float64)
    if np.dtype(dtype).kind in "ub":
        values = np.abs(values)
    arr = values.astype(dtype)
    if np.dtype(dtype) == np.float16:
        arr = np.concatenate([arr, np.float16([np.inf, np.nan, -np.inf])])
    assert_exact(arr)


@pytest.mark.parametrize("dtype", FLOATS)
def test_any_chunking_order_and_split_gives_the_counts_of_one_pass(dtype):
    values = (RNG.standard_cauchy(size=200_000) * RNG.choice([1e-3, 1.0, 1e3], size=200_000)).astype(dtype)
    values[RNG.integers(0, values.size, 50)] = 0.0
    one = compiled(values)
    assert_same(one, numpy_path(values))
    counts, exponent = exact(values[::1000])  # the definition, on a sample small enough for Fractions
    assert np.array_equal(compiled(values[::1000]).counts, counts)
    shuffled = RNG.permutation(values)
    cuts = np.sort(RNG.integers(0, values.size, 30))
    pieces = np.split(shuffled, cuts)  # pieces of every size: below and above the four-lane limit
    assert_same(compiled(*pieces), one)
    merged = TensorHistogram()
    for piece in pieces[::-1]:
        merged.merge(compiled(piece))
    assert_same(merged, one)


def test_ranges_growing_inside_one_call_rebin_exactly():
    # Each kernel chunk larger than the last: the four lanes are flushed and rebinned mid-call.
    values = np.concatenate([RNG.uniform(0, 2.0**k, KERNEL_CHUNK) for k in range(-10, 20, 3)]).astype(np.float32)
    assert_exact(values[::7])
    assert_same(compiled(values), numpy_path(values))


def test_folding_into_a_loaded_histogram_equals_the_numpy_path():
    start_counts = RNG.integers(0, 1000, 2048)
    first = TensorHistogram(counts=start_counts.copy(), exponent=-2, max_abs=0.2, min_value=-0.2, max_value=0.1)
    second = TensorHistogram(counts=start_counts.copy(), exponent=-2, max_abs=0.2, min_value=-0.2, max_value=0.1)
    values = RNG.normal(0, 3, 100_000).astype(np.float32)
    assert_same(compiled(values, start=first), numpy_path(values, start=second))


def test_threads_folding_pieces_of_one_tensor_agree_with_one_pass():
    values = RNG.laplace(size=1_000_000).astype(np.float32)
    parts = [TensorHistogram() for _ in range(8)]
    threads = [threading.Thread(target=compiled, args=(piece,), kwargs={"start": part})
               for piece, part in zip(np.array_split(values, 8), parts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    merged = TensorHistogram()
    for part in parts:
        merged.merge(part)
    assert_same(merged, numpy_path(values))


def test_update_uses_the_kernel_and_gives_the_numpy_result():
    values = RNG.normal(size=50_000).astype(np.float32)
    hist = TensorHistogram()
    hist.update(values)  # the public entry point, with the kernel loaded
    assert histogram.kernel_info()["state"] == "ready"
    assert_same(hist, numpy_path(values))


def test_without_numba_histograms_fall_back_to_numpy_after_a_one_line_notice():
    code = ("import sys; sys.modules['numba'] = None\n"  # as if numba were not installed
            "import numpy as np\n"
            "from quantlab import histogram\n"
            "assert histogram.load_kernel() is False\n"
            "h = histogram.TensorHistogram(); h.update(np.float32([1.0, -3.0, np.nan]))\n"
            "print(histogram.kernel_info()['state'], h.total, h.nan_count, h.exponent)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, check=True)
    assert proc.stdout.split() == ["unavailable", "2", "1", "2"]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("quantlab: numba cannot be imported"), proc.stderr
    assert "pip install numba" in lines[0]
