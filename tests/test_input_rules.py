"""How samples are interpreted: the scaling rule, .npz keys by name, preprocessing checked
against the model. On the embedded Fashion-MNIST model (input 'image', float32 [N, 1, 28, 28])
and its real images."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from quantlab import defaults
from quantlab import preprocess as pp
from quantlab.data import ArrayDataset, IdxDataset, ImageFolderDataset, read_idx
from quantlab.errors import DataError
from quantlab.graph import InputSpec, load_model
from quantlab.preprocess import Preprocess, iterate_batches, prepare, select_indices


@pytest.fixture(scope="module")
def spec():
    return load_model(defaults.MODEL).inputs[0]


@pytest.fixture(scope="module")
def heldout():
    """The embedded held-out images (uint8 [1000, 28, 28]) and their labels."""
    return (read_idx(defaults.HELDOUT_DATA),
            read_idx(defaults.HERE / "heldout-labels-idx1-ubyte.gz").astype(np.int64))


def _fp32_top1(path, spec) -> tuple[float, float]:
    """Top-1 of the FP32 model over an .npz with labels, and the largest input value fed."""
    data = ArrayDataset(path, input_names=[spec.name])
    session = ort.InferenceSession(str(defaults.MODEL), providers=["CPUExecutionProvider"])
    hits, amax = 0, 0.0
    for batch in iterate_batches(data, np.arange(len(data)), [spec], Preprocess(), 250):
        x = batch.inputs[spec.name]
        amax = max(amax, float(np.abs(x).max()))
        logits = session.run(None, {spec.name: x})[0]
        hits += int((logits.argmax(axis=1) == batch.labels).sum())
    return hits / len(data), amax


class _Untouchable:
    """A data set that fails the test if a sample is read."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        raise AssertionError("a sample was read before the preprocessing was checked")


# --- integer samples: one scaling rule, whatever the array's shape ---------------------------

def test_uint8_samples_shaped_like_the_model_input_are_scaled_like_images(spec, calib_images):
    shaped = prepare(calib_images[0][None], spec, Preprocess())  # (1, 28, 28): the model's own shape
    assert np.array_equal(shaped, prepare(calib_images[0], spec, Preprocess()))
    assert shaped.max() <= 1.0


def test_uint8_npz_shaped_like_the_model_input_keeps_the_fp32_accuracy(tmp_path, spec, heldout):
    images, labels = heldout
    np.savez(tmp_path / "hw.npz", x=images, y=labels)
    np.savez(tmp_path / "chw.npz", x=images[:, None], y=labels)
    top1_hw, amax_hw = _fp32_top1(tmp_path / "hw.npz", spec)
    top1_chw, amax_chw = _fp32_top1(tmp_path / "chw.npz", spec)
    assert top1_hw > 0.85 and top1_chw == top1_hw
    assert amax_chw == amax_hw <= 1.0


@pytest.mark.parametrize("shape", ["HW", "CHW"])
def test_int64_pixels_are_scaled_by_1_over_255_like_uint8(spec, calib_images, shape):
    pixels = calib_images[0] if shape == "HW" else calib_images[0][None]
    assert np.array_equal(prepare(pixels.astype(np.int64), spec, Preprocess()),
                          prepare(calib_images[0], spec, Preprocess()))


def test_scale_one_feeds_integer_samples_as_raw_values(spec, calib_images):
    x = prepare(calib_images[0][None], spec, Preprocess(scale=1))
    assert np.array_equal(x, calib_images[0][None].astype(np.float32)) and x.max() == 255


def test_integer_samples_beyond_8_bits_are_refused_unless_scale_is_given(spec, calib_images):
    twelve_bit = calib_images[0].astype(np.uint16) * 16  # 0..4080
    with pytest.raises(DataError, match=r"uint16 samples hold values 0\.\.4080.*set `scale`") as info:
        prepare(twelve_bit, spec, Preprocess())
    assert info.value.params == ("scale",)
    assert prepare(twelve_bit, spec, Preprocess(scale=1 / 4080)).max() == pytest.approx(1.0)


def test_integer_samples_feeding_an_integer_input_pass_unchanged(calib_images):
    uint8_input = InputSpec("pixels", (None, 1, 28, 28), np.dtype(np.uint8))  # a model that scales itself
    x = prepare(calib_images[0], uint8_input, Preprocess())
    assert x.dtype == np.uint8 and np.array_equal(x, calib_images[0][None])


def test_scale_mean_and_std_are_refused_for_a_model_with_only_integer_inputs():
    ids = InputSpec("ids", (None, 16), np.dtype(np.int64))
    with pytest.raises(DataError, match=r"'ids' \(int64\) takes integer values as they are, so `mean` cannot "
                                        r"apply; remove `mean`") as info:
        prepare(np.arange(16), ids, Preprocess(mean=0.5))
    assert info.value.params == ("mean",)


# --- describe_scaling / first_sample_dtype: the CLI's summary line ---------------------------

def test_describe_scaling_says_integer_samples_are_scaled_by_1_over_255(spec):
    assert pp.describe_scaling(np.uint8, spec, Preprocess()) == \
        "uint8 samples scaled by 1/255 (integer pixels; `scale` to change)"


def test_describe_scaling_says_float_samples_are_fed_as_they_are(spec):
    assert pp.describe_scaling(np.float32, spec, Preprocess()) == "float32 samples fed as they are"


def test_describe_scaling_names_a_given_scale_and_the_normalisation(spec):
    text = pp.describe_scaling(np.uint8, spec, Preprocess(scale=0.5, mean=0.5, std=0.25))
    assert text == "uint8 samples scaled by 0.5 (`scale`), then `mean` (0.5,) and `std` (0.25,)"


def test_describe_scaling_spells_parameters_as_the_front_end_does(spec):
    text = pp.describe_scaling(np.int64, spec, Preprocess(), spelling={"scale": "--scale"})
    assert text == "int64 samples scaled by 1/255 (integer pixels; --scale to change)"


def test_first_sample_dtype_is_the_dtype_of_the_first_selected_sample():
    data = IdxDataset(defaults.CALIBRATION_DATA)
    assert pp.first_sample_dtype(data, np.array([7, 9])) == np.uint8
    assert pp.first_sample_dtype([({"a": np.zeros(2, np.float16)}, None)], input_name="a") == np.float16


# --- .npz arrays are picked by name ----------------------------------------------------------

def test_npz_without_an_input_array_name_is_refused_listing_its_keys(tmp_path, calib_images):
    np.savez(tmp_path / "d.npz", features=calib_images[:4])
    with pytest.raises(DataError, match=r"holds arrays \['features'\] but none is named 'x'.*np\.savez"):
        ArrayDataset(tmp_path / "d.npz", input_names=["image"])


def test_npz_input_named_like_the_model_input_is_found_among_other_arrays(tmp_path, calib_images):
    np.savez(tmp_path / "d.npz", image=calib_images[:4], y=np.arange(4), mask=np.ones((4, 28, 28)))
    data = ArrayDataset(tmp_path / "d.npz", input_names=["image"])
    assert np.array_equal(data[2][0], calib_images[2]) and data[2][1] == 2


def test_npz_with_two_candidate_input_arrays_is_ambiguous(tmp_path, calib_images):
    np.savez(tmp_path / "d.npz", x=calib_images[:4], images=calib_images[4:8])
    with pytest.raises(DataError, match=r"several arrays that could be the inputs, \['x', 'images'\]"):
        ArrayDataset(tmp_path / "d.npz")


def test_npz_with_two_label_arrays_is_ambiguous(tmp_path, calib_images):
    np.savez(tmp_path / "d.npz", x=calib_images[:4], y=np.arange(4), labels=np.zeros(4, int))
    with pytest.raises(DataError, match=r"labels under several names \['y', 'labels'\]"):
        ArrayDataset(tmp_path / "d.npz")


def test_npz_for_a_two_input_model_must_name_every_input(tmp_path, calib_images):
    np.savez(tmp_path / "d.npz", a=calib_images[:4], x=calib_images[:4])
    with pytest.raises(DataError, match=r"no arrays named \['b'\].*named after it: \['a', 'b'\]"):
        ArrayDataset(tmp_path / "d.npz", input_names=["a", "b"])


def test_npz_one_hot_labels_are_refused_with_the_fix(tmp_path, calib_images):
    np.savez(tmp_path / "d.npz", x=calib_images[:4], y=np.eye(10)[:4])
    with pytest.raises(DataError, match=r"shape \(4, 10\).*y\.argmax\(axis=1\)"):
        ArrayDataset(tmp_path / "d.npz")


# --- preprocessing values checked against the model -------------------------------------------

@pytest.mark.parametrize("name", ["mean", "std"])
def test_three_values_on_a_one_channel_model_name_the_channel_count(spec, calib_images, name):
    with pytest.raises(DataError, match=rf"^`{name}` has 3 values but model input 'image' has 1 channel; "
                                        "give a single value$") as info:
        prepare(calib_images[0], spec, Preprocess(**{name: (0.5, 0.5, 0.5)}))
    assert info.value.params == (name,)


def test_std_of_zero_is_refused_when_the_preprocessing_is_made():
    with pytest.raises(DataError, match=r"`std` must be positive"):
        Preprocess(std=(0.0,))


@pytest.mark.parametrize("scale", [0, float("nan"), float("inf")])
def test_scale_must_be_finite_and_non_zero(scale):
    with pytest.raises(DataError, match="`scale` must be a finite, non-zero number"):
        Preprocess(scale=scale)


@pytest.mark.parametrize("config", [{"resize": [28]}, {"resize": [0, 28]}, {"crop": [-1, 28]},
                                    {"resize": "28x28"}, {"crop": [28.5, 28]}, {"resize": [True, 28]}])
def test_resize_and_crop_in_a_config_file_must_be_pairs_of_positive_integers(tmp_path, config):
    path = tmp_path / "pre.json"
    path.write_text(json.dumps(config))
    key = next(iter(config))
    with pytest.raises(DataError, match=rf"pre\.json: `{key}` must be a pair of positive integers \(height, width\)"):
        Preprocess.from_file(path)


def test_crop_larger_than_the_resize_is_refused_when_the_preprocessing_is_made():
    with pytest.raises(DataError, match=r"`crop` \(32, 32\) is larger than `resize` \(28, 28\)"):
        Preprocess(resize=(28, 28), crop=(32, 32))


def test_resize_that_cannot_give_the_model_size_says_the_size_to_set(spec, calib_images):
    with pytest.raises(DataError, match=r"`resize` is \(32, 32\) but model input 'image' wants 28x28 images; "
                                        r"set `resize` to \(28, 28\)"):
        prepare(calib_images[0], spec, Preprocess(resize=(32, 32)))


def test_nhwc_layout_on_the_nchw_model_says_the_model_is_nchw(spec, calib_images):
    with pytest.raises(DataError, match=r"per-sample shape \(1, 28, 28\), which is NCHW with 1 channel; "
                                        r"`layout` NHWC does not fit it") as info:
        prepare(calib_images[0], spec, Preprocess(layout="NHWC"))
    assert info.value.params == ("layout",) and "resize" not in str(info.value)


def test_invalid_layout_is_refused_when_the_preprocessing_is_made():
    with pytest.raises(DataError, match=r"`layout` must be NCHW or NHWC, got 'CHW'"):
        Preprocess(layout="CHW")


def test_resize_on_a_model_input_that_is_not_an_image_is_refused():
    flat = InputSpec("features", (None, 784), np.dtype(np.float32))
    with pytest.raises(DataError, match=r"`resize` applies only to image inputs.*\(784,\); remove `resize`"):
        prepare(np.zeros(784, np.float32), flat, Preprocess(resize=(28, 28)))


def test_preprocessing_is_checked_before_any_sample_is_read(spec):
    with pytest.raises(DataError, match="`mean` has 3 values"):
        iterate_batches(_Untouchable(), np.arange(10), [spec], Preprocess(mean=(0.5, 0.5, 0.5)), 4)


def test_num_samples_must_be_a_positive_integer():
    with pytest.raises(DataError, match=r"`num_samples` must be a positive integer, got 2\.5"):
        select_indices(100, 2.5, seed=0)


# --- messages speak the Python API; the CLI re-spells the declared parameters -----------------

@pytest.mark.parametrize("make_error, param, flag", [
    (lambda spec, tmp: next(iterate_batches(IdxDataset(defaults.CALIBRATION_DATA), np.arange(4), [spec],
                                            Preprocess(), 0)), "batch_size", "--batch-size"),
    (lambda spec, tmp: select_indices(100, 0, seed=0), "num_samples", "--num-samples"),
    (lambda spec, tmp: Preprocess(std=(0.0,)), "std", "--std"),
    (lambda spec, tmp: prepare(np.zeros((32, 32), np.uint8), spec, Preprocess()), "resize", "--resize"),
    (lambda spec, tmp: ImageFolderDataset(tmp), "source", "--data"),
])
def test_messages_name_python_parameters_not_cli_flags(spec, tmp_path, make_error, param, flag):
    with pytest.raises(DataError) as info:
        make_error(spec, tmp_path)
    assert "--" not in str(info.value) and param in info.value.params
    assert flag in info.value.render({param: flag})
