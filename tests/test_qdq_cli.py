"""The TensorRT 11 commands as a user runs them: calibrate to a typed Q/DQ model, lint it, plan it."""

from __future__ import annotations

import json

import pytest

from quantlab import defaults

from conftest import run_cli


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The embedded default's Q/DQ model, written the way the README says (no arguments but the format)."""
    where = tmp_path_factory.mktemp("qdq_cli")
    run_cli("calibrate", "--format", "qdq", "-q", cwd=where, check=True)
    return where


def test_calibrate_format_qdq_writes_the_embedded_models_qdq_model_and_table(folder):
    assert (folder / "fashion_mnist_cnn.qdq.onnx").is_file()
    assert (folder / "fashion_mnist_cnn.qdq.quantlab.json").is_file()
    assert not (folder / "fashion_mnist_cnn.cache").exists()


def test_lint_with_no_arguments_checks_that_model_and_finds_nothing(folder):
    result = run_cli("qdq", "lint", cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 error(s), 0 warning(s)" in result.stdout


def test_plan_json_gives_flop_shares_that_sum_to_one(folder):
    plan = json.loads(run_cli("qdq", "plan", "--json", cwd=folder, check=True).stdout)
    assert sum(plan["shares"].values()) == pytest.approx(1.0)
    assert plan["shares"]["int8"] > 0.9 and set(plan["shares"]) <= {"int8", "fp16"}
    gemm = next(n for n in plan["nodes"] if n["node"] == "/classifier/Gemm")
    assert gemm["precision"] == "fp16"  # the small-layers rule left it out of INT8


def test_lint_of_a_float_model_says_there_is_no_qdq_and_what_to_run(folder):
    result = run_cli("qdq", "lint", str(defaults.MODEL), cwd=folder)
    assert result.returncode != 0
    assert "no Q/DQ" in result.stderr and "quantlab calibrate" in result.stderr


def test_lint_without_a_model_where_none_was_written_says_how_to_make_one(tmp_path):
    result = run_cli("qdq", "plan", cwd=tmp_path)
    assert result.returncode != 0 and "calibrate --format qdq" in result.stderr


def test_a_bad_input_shape_is_refused_with_the_expected_spelling(folder):
    result = run_cli("qdq", "plan", "--input-shape", "image=1x1x28x28", cwd=folder)
    assert result.returncode != 0 and "NAME:D,D" in result.stderr


def test_ranges_that_overflow_fp16_almost_everywhere_suggest_bf16(folder, tmp_path):
    table = json.loads((folder / "fashion_mnist_cnn.qdq.quantlab.json").read_text())
    for measured in table["provenance"]["measured"].values():
        measured["max_abs"] = 1e5
    (tmp_path / "wide.quantlab.json").write_text(json.dumps(table))
    result = run_cli("export-qdq", "--cache", "wide.quantlab.json", "-o", "wide.onnx", cwd=tmp_path, check=True)
    assert "keep most ops in fp32" in result.stdout and "--high-precision bf16" in result.stdout
    assert "max |x| 1e+05 > 16376" in result.stdout
