"""benchmarks/real_graphs.py end to end on the smallest corpus model, in its --quick form (a few seconds)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from test_corpus import corpus, installed  # installed: skips where the corpus package is absent, fails under CI

from conftest import REPO

pytestmark = pytest.mark.slow


def test_the_quick_real_graphs_benchmark_reports_every_tool_for_a_model(tmp_path):
    installed(corpus.by_name("mtcnn_rnet"))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "real_graphs.py"), "--quick", "--models",
                           "mtcnn_rnet", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "real-graphs.json").read_text())
    assert list(result["models"]) == ["mtcnn_rnet"] and result["settings"]["quick"]
    entry = result["models"]["mtcnn_rnet"]
    # quantlab with default flags: every method calibrated, exported with weights, judged on both outputs.
    assert [r["method"] for r in entry["quantlab"]] == ["entropy", "max"]
    for row in entry["quantlab"]:
        assert row["status"] == "ran" and row["counts"]["int8_weights"] > 0
        assert {f["output"] for f in row["fidelity"]} == {"dense_2", "softmax_1"}
        assert all(math.isfinite(f["cosine"]) for f in row["fidelity"])
        assert 0 <= row["summary"]["top1_agreement"] <= 1 and row["calibrate"]["peak_rss_mib"] > 0
    # ONNX Runtime: both methods have a row that ran or says why not.
    for tool in ("ort-minmax", "ort-percentile"):
        rows = [r for r in entry["ort"] if r["tool"] == tool]
        assert rows and all(r["status"] for r in rows)
    text = (tmp_path / "real-graphs.md").read_text()
    assert "ORT_DISABLE_ALL" in text
    headline = text.split("## Headline", 1)[1].split("## Per model", 1)[0]
    assert sum(line.startswith("| mtcnn_rnet |") for line in headline.splitlines()) == 1
    assert "| quantlab entropy |" in text and "| quantlab max |" in text and "| ort-minmax |" in text
