"""Every user mistake is one line and exit 2, never a traceback, and leaves no file behind.

Each case below was a traceback, a misleading message or silently accepted nonsense before;
they run the real CLI in a subprocess. A hypothesis test then throws argument combinations
at the CLI in-process and checks the same contract on whatever it finds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantlab import defaults
from quantlab.calibrate import calibrate
from quantlab.cli import run
from quantlab.errors import QuantlabError
from quantlab.workload import DataSpec

from conftest import run_cli
from test_outputs import wait_for_import

MODEL = str(defaults.MODEL)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    frames = proc.stderr.replace("\r", "\n").splitlines()
    lines = [ln for ln in frames if ln.strip() and not ln.startswith(("collecting", "comparing", "evaluating"))]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("quantlab: error: "), proc.stderr
    return lines[0]


def fails_cleanly(tmp_path: Path, *args: str, match: str) -> str:
    before = set(tmp_path.rglob("*"))
    line = one_line_error(run_cli(*args, cwd=tmp_path))
    assert match in line, line
    assert set(tmp_path.rglob("*")) == before, "a failed command left files behind"
    return line


@pytest.fixture()
def npz_pixels(tmp_path, calib_images) -> str:
    np.savez(tmp_path / "d.npz", x=calib_images[:16])
    return "d.npz"


# ---------------------------------------------------------------- were tracebacks


@pytest.mark.parametrize(("param", "match"), [
    ("p=abc", "p must be"),
    ("p=150", "150"),
    ("p=0", "p must be"),
])
def test_bad_percentile_parameter_is_one_line(tmp_path, param, match):
    fails_cleanly(tmp_path, "calibrate", "--method", "percentile", "--param", param, "-o", "m.cache", match=match)


def test_zero_bits_for_entropy_is_one_line(tmp_path):
    fails_cleanly(tmp_path, "calibrate", "--param", "num_bits=0", "-o", "m.cache", match="num_bits")


def test_text_start_bin_for_mse_is_one_line(tmp_path):
    fails_cleanly(tmp_path, "calibrate", "--method", "mse", "--param", "start_bin=abc", "-o", "m.cache",
                  match="start_bin")


@pytest.mark.parametrize("bins", ["1000", "0"])
def test_bins_that_are_not_a_power_of_two_are_one_line(tmp_path, bins):
    fails_cleanly(tmp_path, "calibrate", "--bins", bins, match="--bins")


def test_an_algorithm_name_with_a_space_is_refused(tmp_path):
    fails_cleanly(tmp_path, "calibrate", "--trt-algorithm", "a b", match="--trt-algorithm")


def test_a_data_callable_returning_none_is_one_line(tmp_path):
    (tmp_path / "gen.py").write_text("def samples():\n    return None\n")
    fails_cleanly(tmp_path, "calibrate", MODEL, "--data", "gen.py:samples", match="returned None")


def test_json_output_into_a_closed_pipe_exits_quietly(tmp_path):
    run_cli("calibrate", "--num-samples", "16", "-o", "m.cache", "-q", cwd=tmp_path, check=True)
    read, write = os.pipe()
    os.close(read)  # the reader has gone, like `| head -1` after its line
    proc = subprocess.run([sys.executable, "-m", "quantlab", "cache", "inspect", "m.cache", "--json"],
                          cwd=tmp_path, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write)
    assert proc.stderr == "" and proc.returncode == 141


def test_ctrl_c_while_the_cli_imports_is_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "quantlab", "calibrate"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_import(proc.pid, "numpy")  # inside the CLI's imports: numpy comes before onnx and ONNX Runtime
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and proc.returncode == 130, err
    assert err.strip().endswith("no output was written")


# ---------------------------------------------------------------- were misleading


def test_three_means_on_a_one_channel_model_name_the_channel_count(tmp_path):
    fails_cleanly(tmp_path, "calibrate", "--mean", "0.5", "0.5", "0.5", match="--mean has 3 values")


def test_a_start_bin_beyond_the_histogram_is_not_called_a_bug(tmp_path):
    line = fails_cleanly(tmp_path, "calibrate", "--param", "start_bin=5000", "-o", "m.cache", match="start_bin")
    assert "bug" not in line


def test_a_missing_data_file_says_it_does_not_exist(tmp_path):
    fails_cleanly(tmp_path, "calibrate", MODEL, "--data", "missing.npz",
                  match="no such file or folder missing.npz; check the path given as --data")


def test_a_missing_python_file_for_data_says_no_such_file(tmp_path):
    line = fails_cleanly(tmp_path, "calibrate", MODEL, "--data", "nope.py:fn", match="nope.py")
    assert "ModuleSpec" not in line


def test_nhwc_on_an_nchw_model_does_not_suggest_a_resize(tmp_path):
    line = fails_cleanly(tmp_path, "calibrate", "--layout", "NHWC", match="NCHW")
    assert "--resize" not in line


def test_python_api_errors_name_parameters_not_flags():
    with pytest.raises(QuantlabError) as caught:
        calibrate(data=DataSpec(batch_size=0), progress=False)
    assert "batch_size" in str(caught.value) and "--batch-size" not in str(caught.value)


def test_cli_errors_name_flags_for_the_same_mistake(tmp_path):
    (tmp_path / "m.onnx").write_bytes(defaults.MODEL.read_bytes())
    fails_cleanly(tmp_path, "calibrate", "m.onnx", match="--data")


# ---------------------------------------------------------------- were accepted


def test_excluding_a_node_that_does_not_exist_is_refused(tmp_path):
    run_cli("calibrate", "--num-samples", "16", "-o", "m.cache", "-q", cwd=tmp_path, check=True)
    fails_cleanly(tmp_path, "export-qdq", "--cache", "m.cache", "-o", "q.onnx", "--exclude-node", "/no/such/Conv",
                  match="no node named '/no/such/Conv'")


def test_excluding_an_op_type_the_model_does_not_quantize_is_refused(tmp_path):
    run_cli("calibrate", "--num-samples", "16", "-o", "m.cache", "-q", cwd=tmp_path, check=True)
    fails_cleanly(tmp_path, "export-qdq", "--cache", "m.cache", "-o", "q.onnx", "--exclude-op", "LSTM",
                  match="--exclude-op")


def test_a_negative_worst_count_is_refused(tmp_path):
    fails_cleanly(tmp_path, "compare", "--worst", "-3", match="--worst")


def test_a_resize_of_one_number_in_a_config_is_refused(tmp_path):
    (tmp_path / "pre.json").write_text(json.dumps({"resize": [28]}))
    fails_cleanly(tmp_path, "calibrate", "--preprocess-config", "pre.json", match="resize")


def test_an_npz_without_an_input_array_is_refused(tmp_path, calib_images):
    np.savez(tmp_path / "d.npz", features=calib_images[:16], y=np.zeros(16, np.int64))
    fails_cleanly(tmp_path, "calibrate", MODEL, "--data", "d.npz", match="'x'")


def test_trt_version_4_writes_the_bare_1_header(tmp_path):
    run_cli("calibrate", "--num-samples", "16", "--trt-version", "4", "-o", "m.cache", "-q", cwd=tmp_path, check=True)
    assert (tmp_path / "m.cache").read_text().split("\n", 1)[0] == "1"


def test_uint8_pixels_shaped_like_the_input_are_scaled_and_the_summary_says_so(tmp_path, calib_images):
    np.savez(tmp_path / "d.npz", x=calib_images[:64, None])  # (N, 1, 28, 28) uint8
    proc = run_cli("calibrate", MODEL, "--data", "d.npz", "--method", "max", "-o", "m.cache", cwd=tmp_path,
                   check=True)
    table = json.loads((tmp_path / "m.quantlab.json").read_text())
    assert table["activations"]["image"]["amax"] <= 1.0
    assert "uint8 samples scaled by 1/255" in proc.stdout and "--scale" in proc.stdout


# ---------------------------------------------------------------- reports and -q


def test_a_failed_compare_leaves_no_report_folder(tmp_path):
    fails_cleanly(tmp_path, "compare", "--cache", "missing.cache", "--report", "out/rep", match="missing.cache")
    assert not (tmp_path / "out").exists()


def test_compare_quiet_prints_nothing(tmp_path):
    run_cli("calibrate", "--num-samples", "16", "-q", cwd=tmp_path, check=True)
    proc = run_cli("compare", "--num-samples", "16", "-q", cwd=tmp_path, check=True)
    assert proc.stdout == "" and proc.stderr == ""


# ---------------------------------------------------------------- fuzz

VALUES = st.one_of(
    st.sampled_from(["0", "-1", "-3", "1", "3", "1000", "1e309", "nan", "inf", "abc", "", "a b", "p=", "=3",
                     "p=abc", "p=150", "num_bits=0", "start_bin=5000", "missing.npz", "nope.py:fn", "NHWC",
                     "4", "10.3.0", "eight", "/dev/null", "x.cache", "28"]),
    st.text(alphabet="ab1-=.:/ ", min_size=0, max_size=6),
)
FLAGS = {
    "calibrate": ["--method", "--param", "--bins", "--batch-size", "--num-samples", "--trt-version", "--trt-algorithm",
                  "--zero-amax", "--mean", "--std", "--scale", "--resize", "--crop", "--layout", "--seed", "--threads",
                  "--data", "--tensors", "-o", "--table"],
    "collect": ["--bins", "--batch-size", "--num-samples", "--data", "--threads", "--mean", "-o"],
    "compare": ["--cache", "--worst", "--exclude-node", "--exclude-op", "--batch-size", "--num-samples", "--output",
                "--placement", "--data"],
    "export-qdq": ["--cache", "--exclude-node", "--exclude-op", "--placement", "-o"],
    "cache inspect": ["--top"],
    "cache convert": ["--to", "--trt-version", "--trt-algorithm", "-o"],
}


@st.composite
def command_lines(draw):
    command = draw(st.sampled_from(sorted(FLAGS)))
    argv = command.split()
    if command.startswith("cache"):
        argv.append(draw(st.sampled_from(["ref.cache", "missing.cache", "bad.cache"])))
    for flag in draw(st.lists(st.sampled_from(FLAGS[command]), min_size=1, max_size=3, unique=True)):
        argv += [flag, draw(VALUES)]
    return argv


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines())
def test_no_argument_combination_gives_a_traceback_or_leaves_files_on_failure(argv, capsys):
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            Path("ref.cache").write_text("TRT-8601-EntropyCalibration2\nimage: 3c010a14\n")
            Path("bad.cache").write_text("TRT-8601-EntropyCalibration2\nimage: zz\n")
            before = sorted(os.listdir("."))
            try:
                code = run(argv + (["-q"] if argv[0] in ("calibrate", "collect", "compare") else []))
            except SystemExit as exc:  # argparse: usage errors exit 2, --help 0
                code = exc.code
            err = capsys.readouterr().err
            assert code in (0, 2), (argv, code, err)
            if code == 2:
                assert sorted(os.listdir(".")) == before, (argv, err)
                lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("quantlab: error:")]
                assert len(lines) == 1, (argv, err)
        finally:
            os.chdir(cwd)


# ---------------------------------------------------------------- caches

TRT4_CACHE = "1\ninput: 3c010a14\nconv1 (Unnamed Layer* 0) [Convolution]_output: 3d4ccccd\n"


def test_a_tensorrt4_cache_converts_to_trt_byte_for_byte(tmp_path):
    (tmp_path / "old.cache").write_text(TRT4_CACHE)
    run_cli("cache", "convert", "old.cache", "--to", "trt", "-o", "new.cache", cwd=tmp_path, check=True)
    assert (tmp_path / "new.cache").read_bytes() == (tmp_path / "old.cache").read_bytes()


def test_inspect_of_a_tensorrt4_cache_says_no_algorithm_was_recorded(tmp_path):
    (tmp_path / "old.cache").write_text(TRT4_CACHE)
    out = run_cli("cache", "inspect", "old.cache", cwd=tmp_path, check=True).stdout
    assert "no algorithm recorded" in out and "None" not in out


def test_a_corrupt_cache_body_names_the_line(tmp_path):
    (tmp_path / "bad.cache").write_text("TRT-8601-EntropyCalibration2\ninput: 3c010a14\nfoo: zz\n")
    line = fails_cleanly(tmp_path, "cache", "inspect", "bad.cache", match="line 3")
    assert "flatbuffers" not in line


def test_lint_calls_a_subnormal_scale_an_error(tmp_path):
    (tmp_path / "tiny.cache").write_text("TRT-8601-EntropyCalibration2\ninput: 3c010a14\nx: 1\n")  # 1.4e-45
    proc = run_cli("cache", "lint", "tiny.cache", cwd=tmp_path)
    assert proc.returncode == 2 and "subnormal" in proc.stdout
