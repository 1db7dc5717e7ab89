"""The real ``quantlab`` CLI in subprocesses: the README's main job and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantlab import defaults
from quantlab.formats.trtcache import read_trt_cache

from conftest import run_cli


def test_calibrate_with_no_arguments_runs_the_embedded_default(tmp_path):
    proc = run_cli("calibrate", cwd=tmp_path, check=True)
    cache = read_trt_cache(tmp_path / "fashion_mnist_cnn.cache")
    table = json.loads((tmp_path / "fashion_mnist_cnn.quantlab.json").read_text())
    assert cache.header == "TRT-8601-EntropyCalibration2"
    assert list(cache.scales) == list(table["activations"])
    assert table["provenance"]["data"]["num_samples"] == 512
    assert all(s > 0 for s in cache.scales.values())
    assert "samples     : 512" in proc.stdout and "collecting" in proc.stderr  # summary + progress bar


def test_method_and_header_options_shape_the_cache_header(tmp_path):
    run_cli("calibrate", "--method", "max", "--num-samples", "32", "-o", "m.cache", "-q", cwd=tmp_path, check=True)
    assert read_trt_cache(tmp_path / "m.cache").header == "TRT-8601-MinMaxCalibration"
    run_cli("calibrate", "--method", "percentile", "--param", "p=99.9", "--num-samples", "32",
            "--trt-version", "10.3.0", "--trt-algorithm", "EntropyCalibration", "-o", "p.cache", "-q",
            cwd=tmp_path, check=True)
    table = json.loads((tmp_path / "p.quantlab.json").read_text())
    assert read_trt_cache(tmp_path / "p.cache").header == "TRT-100300-EntropyCalibration"
    assert table["method"] == "percentile" and table["params"] == {"p": 99.9}


def test_user_model_and_data_with_sample_count_and_batch_size(tmp_path, calib_images):
    np.save(tmp_path / "calib.npy", calib_images[:64])
    run_cli("calibrate", str(defaults.MODEL), "--data", "calib.npy", "--method", "entropy",
            "--num-samples", "48", "--batch-size", "16", "-o", "model.cache", "-q", cwd=tmp_path, check=True)
    table = json.loads((tmp_path / "model.quantlab.json").read_text())
    assert table["provenance"]["data"]["num_samples"] == 48


def test_collect_then_calibrate_from_stats_gives_the_same_cache(tmp_path):
    run_cli("calibrate", "--num-samples", "64", "-o", "direct.cache", "-q", cwd=tmp_path, check=True)
    run_cli("collect", "--num-samples", "64", "-o", "s.npz", "-q", cwd=tmp_path, check=True)
    run_cli("calibrate", "--stats", "s.npz", "-o", "offline.cache", "-q", cwd=tmp_path, check=True)
    assert (tmp_path / "direct.cache").read_bytes() == (tmp_path / "offline.cache").read_bytes()


def test_list_methods_shows_the_installed_calibrators():
    out = run_cli("calibrate", "--list-methods", check=True).stdout
    assert all(name in out for name in ("entropy", "max", "mse", "percentile"))


def test_help_teaches_by_example():
    out = run_cli("calibrate", "--help", check=True).stdout
    assert "examples:" in out and "--num-samples" in out and "--trt-version" in out


def expect_clean_failure(tmp_path, *args, match):
    before = set(tmp_path.rglob("*"))
    proc = run_cli(*args, cwd=tmp_path)
    # Progress-bar frames may precede the error (the run had started); the error is one line.
    frames = proc.stderr.replace("\r", "\n").splitlines()
    lines = [ln for ln in frames if ln.strip() and not ln.startswith("collecting")]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("quantlab: error:"), proc.stderr
    assert match in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert set(tmp_path.rglob("*")) == before  # no partial output


def test_missing_model_file(tmp_path):
    expect_clean_failure(tmp_path, "calibrate", "nope.onnx", "--data", "x.npy", match="does not exist")


def test_file_that_is_not_onnx(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"this is not a protobuf \x00\xff\xfe garbage" * 10)
    expect_clean_failure(tmp_path, "calibrate", "bad.onnx", "--data", "x.npy", match="not an ONNX model")


def test_model_without_data_asks_for_data(tmp_path):
    (tmp_path / "m.onnx").write_bytes(defaults.MODEL.read_bytes())
    expect_clean_failure(tmp_path, "calibrate", "m.onnx", match="--data")


def test_empty_data_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    expect_clean_failure(tmp_path, "calibrate", str(defaults.MODEL), "--data", "empty", match="no images")


def test_data_that_does_not_fit_the_model_input(tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((4, 3, 32, 32), np.float32))
    expect_clean_failure(tmp_path, "calibrate", str(defaults.MODEL), "--data", "wrong.npy", match="wants")


def test_nan_in_activations(tmp_path):
    x = np.full((4, 1, 28, 28), 0.5, np.float32)
    x[1, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", x)
    expect_clean_failure(tmp_path, "calibrate", str(defaults.MODEL), "--data", "nan.npy", match="NaN/Inf")


def test_all_zero_tensor(tmp_path):
    np.save(tmp_path / "zeros.npy", np.zeros((4, 1, 28, 28), np.float32))
    expect_clean_failure(tmp_path, "calibrate", str(defaults.MODEL), "--data", "zeros.npy", match="all zero")


def test_unknown_method(tmp_path):
    expect_clean_failure(tmp_path, "calibrate", "--method", "kl-magic", match="unknown calibration method")


def test_unwritable_output_path(tmp_path):
    expect_clean_failure(tmp_path, "calibrate", "-o", "no/such/dir/m.cache", match="does not exist")


def test_bad_trt_version(tmp_path):
    expect_clean_failure(tmp_path, "calibrate", "--trt-version", "eight", match="not a TensorRT version")


@pytest.mark.parametrize("args", [("--num-samples", "0"), ("--batch-size", "0")])
def test_nonpositive_counts(tmp_path, args):
    expect_clean_failure(tmp_path, "calibrate", *args, match="must be at least 1")


def test_zero_threads_is_refused(tmp_path):
    expect_clean_failure(tmp_path, "calibrate", "--threads", "0", match="--threads: must be at least 1")


def test_thread_count_does_not_change_the_cache(tmp_path):
    for threads in ("1", "2"):
        run_cli("calibrate", "--threads", threads, "-o", f"t{threads}.cache", "-q", cwd=tmp_path, check=True)
    assert (tmp_path / "t1.cache").read_bytes() == (tmp_path / "t2.cache").read_bytes()


def test_compare_does_not_take_options_it_would_ignore(tmp_path):
    proc = run_cli("compare", "--threads", "2", cwd=tmp_path)
    assert proc.returncode == 2 and "unrecognized arguments: --threads" in proc.stderr
