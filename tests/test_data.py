"""Dataset adapters and preprocessing, on the embedded real Fashion-MNIST images."""

from __future__ import annotations

import gzip
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from quantlab import defaults
from quantlab.data import (
    ArrayDataset,
    CallableDataset,
    IdxDataset,
    ImageFolderDataset,
    check_source_exists,
    read_idx,
)
from quantlab.errors import DataError
from quantlab.graph import load_model
from quantlab.plugins import detect_dataset_adapter, list_dataset_adapters
from quantlab.preprocess import (
    DataFingerprint,
    Preprocess,
    iterate_batches,
    prepare,
    select_indices,
)


@pytest.fixture(scope="module")
def spec():
    return load_model(defaults.MODEL).inputs[0]


def test_builtin_adapters_are_registered_as_entry_points():
    assert {"images", "npy", "idx", "callable"} <= {i.name for i in list_dataset_adapters()}


def test_idx_adapter_reads_images_and_the_sibling_labels():
    data = IdxDataset(defaults.CALIBRATION_DATA)
    image, label = data[0]
    assert len(data) == 512 and image.shape == (28, 28) and image.dtype == np.uint8
    assert 0 <= label <= 9


def test_idx_reads_uncompressed_files_too(tmp_path):
    plain = tmp_path / "x-images-idx3-ubyte"
    plain.write_bytes(gzip.decompress(defaults.CALIBRATION_DATA.read_bytes()))
    assert np.array_equal(read_idx(plain), IdxDataset(defaults.CALIBRATION_DATA).images)


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    raw = gzip.decompress(defaults.CALIBRATION_DATA.read_bytes())
    broken = tmp_path / "broken-images-idx3-ubyte"
    broken.write_bytes(raw[:-100])
    with pytest.raises(DataError, match="truncated"):
        read_idx(broken)


def test_image_folder_with_class_subfolders_gives_sorted_class_labels(tmp_path, calib_images):
    for cls, start in (("bag", 0), ("coat", 3)):
        (tmp_path / cls).mkdir()
        for k in range(3):
            Image.fromarray(calib_images[start + k]).save(tmp_path / cls / f"{k}.png")
    data = ImageFolderDataset(tmp_path, channels=1)
    assert len(data) == 6 and data.classes == ["bag", "coat"]
    image, label = data[4]
    assert label == 1 and np.array_equal(image, calib_images[4])


def test_empty_image_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no images"):
        ImageFolderDataset(tmp_path)


def test_npz_adapter_takes_x_and_y(tmp_path, calib_images):
    np.savez(tmp_path / "d.npz", x=calib_images[:10], y=np.arange(10))
    data = ArrayDataset(tmp_path / "d.npz")
    assert len(data) == 10 and data[3][1] == 3


def test_npy_rows_are_read_on_demand_and_equal_the_array(tmp_path):
    array = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", array)
    data = ArrayDataset(tmp_path / "x.npy")
    assert len(data) == 5
    assert all(np.array_equal(data[i][0], array[i]) for i in range(5))
    assert data[2][0].flags.writeable  # a private copy, not a view of a mapping


def test_truncated_npy_file_is_a_clear_error(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 8), np.float32))
    whole = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(whole[:-5])
    with pytest.raises(DataError, match="truncated"):
        ArrayDataset(tmp_path / "cut.npy")


def test_callable_adapter_loads_module_function(tmp_path, calib_images):
    np.save(tmp_path / "imgs.npy", calib_images[:5])
    (tmp_path / "loader.py").write_text(
        "import numpy as np, pathlib\n"
        "def samples():\n"
        f"    return [(im, 1) for im in np.load(pathlib.Path({str(tmp_path)!r}) / 'imgs.npy')]\n")
    data = CallableDataset(f"{tmp_path / 'loader.py'}:samples")
    assert len(data) == 5 and data[0][1] == 1


def test_detection_picks_the_adapter_from_the_source(tmp_path, calib_images):
    np.save(tmp_path / "a.npy", calib_images[:2])
    assert detect_dataset_adapter(str(tmp_path / "a.npy")) is ArrayDataset
    assert detect_dataset_adapter(str(defaults.CALIBRATION_DATA)) is IdxDataset
    assert detect_dataset_adapter("some.module:function") is CallableDataset
    (tmp_path / "blob.bin").write_bytes(b"\0" * 16)
    with pytest.raises(DataError, match="cannot tell"):
        detect_dataset_adapter(str(tmp_path / "blob.bin"))


def test_uint8_images_are_scaled_to_unit_range_in_nchw(spec, calib_images):
    x = prepare(calib_images[0], spec, Preprocess())
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    assert np.allclose(x[0], calib_images[0] / 255.0)


def test_mean_and_std_apply_after_scaling(spec, calib_images):
    x = prepare(calib_images[0], spec, Preprocess(mean=(0.5,), std=(0.25,)))
    assert np.allclose(x[0], (calib_images[0] / 255.0 - 0.5) / 0.25, atol=1e-6)


def test_resize_makes_larger_images_fit(spec, calib_images):
    big = np.asarray(Image.fromarray(calib_images[0]).resize((56, 56)))
    assert prepare(big, spec, Preprocess(resize=(28, 28))).shape == (1, 28, 28)


def test_wrong_image_size_says_how_to_fix_it(spec):
    with pytest.raises(DataError, match=r"images are 32x32 but model input 'image' wants 28x28; "
                                        r"set `resize` to \(28, 28\)") as info:
        prepare(np.zeros((32, 32), np.uint8), spec, Preprocess())
    assert "set --resize to (28, 28)" in info.value.render({"resize": "--resize", "crop": "--crop"})


def test_misshaped_array_is_a_clear_error(spec):
    with pytest.raises(DataError, match="wants"):
        prepare(np.zeros((5,), np.float32), spec, Preprocess())


def test_sample_selection_is_seeded_sorted_and_bounded():
    a = select_indices(100, 10, seed=3)
    assert np.array_equal(a, select_indices(100, 10, seed=3)) and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, select_indices(100, 10, seed=4))
    assert len(select_indices(5, 10, seed=0)) == 5
    with pytest.raises(DataError, match="empty"):
        select_indices(0, None, 0)


def test_fingerprint_ignores_order_and_batching(spec):
    data = IdxDataset(defaults.CALIBRATION_DATA)
    order = np.arange(20)
    one, two = DataFingerprint(), DataFingerprint()
    for batch in iterate_batches(data, order, [spec], Preprocess(), 20):
        one.add(batch.inputs)
    for batch in iterate_batches(data, order[::-1].copy(), [spec], Preprocess(), 3):
        two.add(batch.inputs)
    assert one.hexdigest == two.hexdigest and one.count == two.count == 20


def test_callable_returning_none_is_a_data_error(tmp_path):
    (tmp_path / "loader.py").write_text("def samples():\n    return None\n")
    with pytest.raises(DataError, match=r"loader\.py:samples returned None; it must return a sequence of samples"):
        CallableDataset(f"{tmp_path / 'loader.py'}:samples")


def test_callable_returning_no_samples_is_a_data_error(tmp_path):
    (tmp_path / "loader.py").write_text("def samples():\n    return []\n")
    with pytest.raises(DataError, match="returned no samples"):
        CallableDataset(f"{tmp_path / 'loader.py'}:samples")


def test_callable_generator_that_raises_is_a_data_error(tmp_path):
    (tmp_path / "loader.py").write_text("def samples():\n    yield 1\n    raise ValueError('disk gone')\n")
    with pytest.raises(DataError, match="raised ValueError: disk gone"):
        CallableDataset(f"{tmp_path / 'loader.py'}:samples")


def test_callable_in_a_missing_file_says_no_such_file(tmp_path):
    with pytest.raises(DataError, match=r"^no such file .*nope\.py \(in `source`") as info:
        CallableDataset(f"{tmp_path / 'nope.py'}:fn")
    assert "ModuleSpec" not in str(info.value) and info.value.params == ("source",)


def test_callable_module_that_fails_to_import_is_a_data_error(tmp_path):
    (tmp_path / "loader.py").write_text("def samples(:\n")
    with pytest.raises(DataError, match=r"importing .*loader\.py raised SyntaxError"):
        CallableDataset(f"{tmp_path / 'loader.py'}:samples")


def test_check_source_exists_says_no_such_file_for_a_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"^no such file or folder .*missing\.npz; check the path") as info:
        check_source_exists(str(tmp_path / "missing.npz"))
    assert info.value.render({"source": "--data"}).endswith("given as --data")


def test_check_source_exists_accepts_files_folders_and_module_functions(tmp_path):
    (tmp_path / "d.npy").write_bytes(b"")
    for source in (tmp_path / "d.npy", str(tmp_path), "some.module:function"):
        check_source_exists(source)


def test_empty_npy_is_a_clear_error(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((0, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"x\.npy holds no samples \(an array of shape \(0, 28, 28\)\)"):
        ArrayDataset(tmp_path / "x.npy")


def test_truncated_npz_file_is_a_clear_error(tmp_path, calib_images):
    np.savez(tmp_path / "d.npz", x=calib_images[:50])
    whole = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cannot read .*cut\.npz as a \.npz archive.*save it again"):
        ArrayDataset(tmp_path / "cut.npz")


def test_npz_member_that_is_not_an_array_is_a_clear_error(tmp_path):
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
        archive.writestr("x.npy", b"not an array")
    with pytest.raises(DataError, match=r"member 'x' of .*d\.npz is not a \.npy array"):
        ArrayDataset(tmp_path / "d.npz")


def test_npz_object_array_is_a_clear_error(tmp_path):
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
        archive.writestr("x.npy", buffer.getvalue())
    with pytest.raises(DataError, match=r"cannot read array 'x' of .*object arrays need pickle"):
        ArrayDataset(tmp_path / "d.npz")


def test_npz_inputs_of_different_lengths_are_a_clear_error(tmp_path, calib_images):
    np.savez(tmp_path / "d.npz", a=calib_images[:4], b=calib_images[:3])
    with pytest.raises(DataError, match=r"different sample counts \{'a': 4, 'b': 3\}"):
        ArrayDataset(tmp_path / "d.npz", input_names=["a", "b"])
