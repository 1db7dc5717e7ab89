"""compare and sweep as real subprocesses on the embedded real model and held-out data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantlab import defaults
from quantlab.data import IdxDataset

from conftest import run_cli


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("accuracy")
    run_cli("calibrate", "--method", "percentile", "--param", "p=99.99", "-o", "m.cache", "-q",
            cwd=folder, check=True)
    return folder


def test_compare_reports_label_metrics_fidelity_and_worst_tensors(work):
    run_cli("compare", "--cache", "m.cache", "--num-samples", "300", "--report", "rep", "-q", cwd=work, check=True)
    data = json.loads((work / "rep" / "report.json").read_text())
    logits = data["outputs"][0]
    assert data["data"]["samples"] == 300 and logits["labelled_samples"] == 300
    assert 0.85 < logits["fp32_top1"] <= 1 and abs(logits["int8_top1"] - logits["fp32_top1"]) < 0.03
    assert logits["top1_agreement"] > 0.95 and logits["cosine_similarity"] > 0.99 and logits["sqnr_db"] > 20
    assert logits["int8_top5"] >= logits["int8_top1"]
    sqnr = [t["sqnr_db"] for t in data["worst_tensors"]]
    assert sqnr == sorted(sqnr) and len(sqnr) == 10
    execution = data["execution"]
    assert execution["int8_arithmetic"] == "tensorrt" and execution["integer_ops"] == {}
    assert "TensorRT-faithful" in execution["verdict"]
    assert data["latency"]["fp32_ms"] > 0 and data["latency"]["int8_ms"] > 0
    assert data["data"]["overlap_with_calibration"] == 0  # the cache's own table (beside it) lists its samples
    for name in ("report.md", "report.html", "sqnr_per_tensor.png", "worst_tensors_histograms.png"):
        assert (work / "rep" / name).stat().st_size > 0
    assert "data:image/png;base64," in (work / "rep" / "report.html").read_text()


def test_compare_from_the_table_warns_about_no_overlap_and_matches_the_cache(work):
    a = json.loads(run_cli("compare", "--cache", "m.cache", "--num-samples", "100", "--json", "-q",
                           cwd=work, check=True).stdout)
    b = json.loads(run_cli("compare", "--cache", "m.quantlab.json", "--num-samples", "100", "--json", "-q",
                           cwd=work, check=True).stdout)
    assert a["outputs"] == b["outputs"]
    assert b["data"]["overlap_with_calibration"] == 0


def test_compare_warns_when_heldout_data_overlaps_calibration(work, calib_images):
    np.save(work / "overlap.npy", calib_images[:20])
    out = json.loads(run_cli("compare", str(defaults.MODEL), "--cache", "m.quantlab.json", "--data", "overlap.npy",
                             "--json", "-q", cwd=work, check=True).stdout)
    assert out["data"]["overlap_with_calibration"] == 20
    assert any("WARNING" in note for note in out["notes"])
    assert any("no labels" in note for note in out["notes"])  # .npy without y: label metrics skipped
    assert "fp32_top1" not in out["outputs"][0] and "top1_agreement" in out["outputs"][0]


def test_compare_of_a_cache_from_another_model_is_a_clear_error(work, shared_caches):
    cache = shared_caches / "liujuanLT__model_convert__calibration.cache"
    proc = run_cli("compare", "--cache", str(cache), cwd=work)
    assert proc.returncode == 2 and "no range in the cache" in proc.stderr


def test_compare_unknown_output_name_lists_the_outputs(work):
    proc = run_cli("compare", "--cache", "m.cache", "--output", "probs", cwd=work)
    assert proc.returncode == 2 and "outputs: logits" in proc.stderr


def test_sweep_ranks_every_method_and_picks_the_best(tmp_path):
    proc = run_cli("sweep", "--num-samples", "128", "--eval-num-samples", "300", "--report", "sw",
                   "--pick", "best", cwd=tmp_path, check=True)
    data = json.loads((tmp_path / "sw" / "report.json").read_text())
    methods = [r["method"] for r in data["results"]]
    assert sorted(methods) == sorted(["max", "entropy", "percentile(p=99.9)", "percentile(p=99.99)",
                                      "percentile(p=99.999)", "mse", "auto"])
    tops = [r["int8_top1"] for r in data["results"]]
    assert tops == sorted(tops, reverse=True) and [r["rank"] for r in data["results"]] == list(range(1, 8))
    assert data["best"] == data["results"][0]["method"] == data["picked"]["method"]
    assert data["results"][0]["int8_top1"] >= data["results"][0]["fp32_top1"] - 0.02
    assert all(r["overlap_with_calibration"] == 0 for r in data["results"])
    for name in ("best.cache", "best.quantlab.json", "best.qdq.onnx", "methods.png", "thresholds.png"):
        assert (tmp_path / "sw" / name).stat().st_size > 0
    assert data["best"] in proc.stdout


def test_sweep_needs_heldout_data_for_a_user_model(tmp_path):
    images = IdxDataset(defaults.CALIBRATION_DATA).images[:16]
    np.save(tmp_path / "c.npy", images)
    proc = run_cli("sweep", str(defaults.MODEL), "--data", "c.npy", cwd=tmp_path)
    assert proc.returncode == 2 and "--eval-data" in proc.stderr
