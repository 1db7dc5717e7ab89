"""``compare``: how much accuracy INT8 keeps against FP32 on held-out data.

    from quantlab.evaluation import compare
    result = compare("model.onnx", "model.cache", DataSpec("heldout/"), report="reports/model")

``compare`` turns one cache or table (any format) into a Q/DQ model, runs it next to the FP32
model (TensorRT-faithful INT8 arithmetic by default; :mod:`quantlab.evaluation.engine`) and
reports output metrics, the worst internal tensors, size, latency and how the INT8 numbers were
computed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from tqdm import tqdm

from ..atomic import check_output_folder
from ..errors import QuantlabError
from ..formats.ranges import RangeFile, read_ranges
from ..preprocess import DataFingerprint
from ..qdq import MeasuredRange, QdqOptions, export_qdq, precision_plan
from ..report import Report, histogram_figure, sqnr_figure
from ..workload import DataSpec, ModelSource, resolve_model, select_outputs, table_path_for
from .engine import OrtRunner, TensorErrors, check_arithmetic, evaluate, execution_verdict, tensor_errors
from .heldout import HeldOut
from .options import CompareOptions, EvalOptions


def _overlap(ranges: RangeFile, heldout: DataFingerprint) -> Optional[int]:
    """Held-out samples that were also calibration samples, or None when that cannot be known.

    A quantlab table lists the digests of its samples; a TensorRT cache does not, but the table
    quantlab wrote beside it does, and says which cache it belongs to (its SHA-256)."""
    digests = ranges.extra.get("provenance", {}).get("data", {}).get("sample_digests") if ranges.extra else None
    if not digests and ranges.format == "trt" and ranges.source:
        sibling = table_path_for(ranges.source)
        try:
            table = json.loads(Path(sibling).read_text(encoding="utf-8"))
            cache_sha = hashlib.sha256(Path(ranges.source).read_bytes()).hexdigest()
        except (OSError, ValueError):
            table = None
        if table and table.get("provenance", {}).get("trt_cache_sha256") == cache_sha:
            digests = table["provenance"].get("data", {}).get("sample_digests")
    if not digests:
        return None
    return len(set(digests) & set(heldout.samples))


@dataclass
class CompareResult:
    data: dict
    report: Report


def compare(model: Optional[ModelSource] = None, cache: Union[str, Path, RangeFile, None] = None,
            data: Optional[DataSpec] = None, *, evaluation: EvalOptions = EvalOptions(), qdq: QdqOptions = QdqOptions(),
            options: CompareOptions = CompareOptions(), report: Optional[Union[str, Path]] = None,
            progress: bool = True) -> CompareResult:
    """FP32 vs the Q/DQ model built from ``cache`` (placed as ``qdq`` says) on held-out ``data``,
    judged as ``evaluation`` says (:class:`~quantlab.evaluation.options.EvalOptions`: the metric, the
    INT8 arithmetic); per-tensor errors, latency and the INT8 backend as ``options`` says. Writes a
    report folder when ``report`` is given.

    Per-tensor errors are measured on the first ``options.tensor_samples`` held-out samples, in a
    pass of their own, so they never change the arithmetic of the headline numbers.
    """
    int8_arithmetic = check_arithmetic(evaluation.int8_arithmetic)
    providers, backend, worst = evaluation.providers, options.backend, options.worst
    graph = resolve_model(model)
    data = data or DataSpec()
    if cache is None:
        raise QuantlabError("compare needs `cache` (a TensorRT cache, ONNX Runtime table or quantlab table)",
                            params=("cache",))
    if worst < 0:
        raise QuantlabError(f"`worst` must be 0 or more, got {worst}", params=("worst",))
    if report is not None:
        check_output_folder(report)
    ranges = cache if isinstance(cache, RangeFile) else read_ranges(cache)
    weights = measured = None
    if ranges.format == "quantlab":
        table = ranges.extra["table"]
        table.check_model(graph.sha256, graph.activations)
        weights = table.weights
        measured = {name: MeasuredRange.from_dict(v) for name, v in table.provenance.get("measured", {}).items()}
    # The typed model is what is written (and what a TensorRT backend builds); the scored model
    # computes what it stores (fp16 tensors rounded to fp16), with the same tensor names.
    typed_model, qdq_report = export_qdq(graph, ranges.amax, weights, qdq, measured=measured or None)
    qdq_model, _ = export_qdq(graph, ranges.amax, weights, qdq, measured=measured or None, emulate=True)
    qdq_bytes = typed_model.SerializeToString()
    plan = precision_plan(typed_model)
    output_names = select_outputs(graph, evaluation.outputs)
    inputs = {s.name for s in graph.inputs}
    internal = [name for name in graph.activations if name not in inputs and name not in output_names]
    heldout = HeldOut(graph, data)
    first = next(heldout.batches(limit=1, batch_size=1))
    sizes, per_run = heldout.activation_sizes(providers)
    fp32 = OrtRunner(graph.model, (), providers, spinning=True)  # it also measures latency
    if backend == "tensorrt":
        internal = []  # an engine exposes its outputs only
        int8 = _tensorrt_runner(qdq_bytes)
    elif backend == "onnxruntime":
        int8 = OrtRunner(qdq_model, (), providers, int8_arithmetic, spinning=True)
    else:
        raise QuantlabError(f"unknown backend {backend!r} (onnxruntime or tensorrt)", params=("backend",))
    fingerprint = DataFingerprint()
    with tqdm(total=len(heldout), unit="sample", desc="comparing", disable=not progress, file=sys.stderr) as bar:
        result = evaluate(fp32, {"int8": int8}, heldout.batches(fingerprint), output_names, progress=bar,
                          metric=evaluation.metric, metric_params=dict(evaluation.metric_params),
                          per_run=per_run)["int8"]
    tensor_limit = min(len(heldout), options.tensor_samples)
    if internal and tensor_limit:
        errors = tensor_errors(graph.model, qdq_model, internal, lambda: heldout.batches(limit=tensor_limit),
                               providers=providers, arithmetic=int8_arithmetic, per_run=per_run, sizes=sizes)
    else:
        errors = TensorErrors([], {}, 0)
    overlap = _overlap(ranges, fingerprint)
    latency = {
        "batch": 1,
        "fp32": fp32.latency(first.inputs),
        "int8": (int8.latency(first.inputs) if backend == "onnxruntime"
                 else {"median_ms": int8.latency_ms(first.inputs)}),
        "int8_backend": backend,
    }
    latency["fp32_ms"], latency["int8_ms"] = latency["fp32"]["median_ms"], latency["int8"]["median_ms"]
    execution = (execution_verdict(qdq_model, int8_arithmetic) if backend == "onnxruntime" else
                 {"verdict": "TensorRT engine built explicitly from the Q/DQ model", "executes_integer_kernels": None})
    worst_rows = sorted(errors.tensors, key=lambda t: t["sqnr_db"])[:worst]
    fp32_size = len(graph.model.SerializeToString())
    out = {
        "kind": "compare",
        "model": {"path": str(graph.path) if graph.path else None, "sha256": graph.sha256,
                  "size_bytes": fp32_size},
        "int8_model": {"size_bytes": len(qdq_bytes), "placement": qdq.placement,
                       "qdq": qdq_report.to_dict(), "precision_plan": {k: v for k, v in plan.to_dict().items()
                                                                        if k != "nodes"},
                       "quantized_activations": len(qdq_report.quantized_activations),
                       "quantized_weights": len(qdq_report.quantized_weights),
                       "unmatched_ranges": qdq_report.unmatched_ranges, "left_in_float": qdq_report.skipped_nodes},
        "ranges": {"file": ranges.source, "format": ranges.format, "method": ranges.extra.get("method")
                   if ranges.extra else None},
        "data": {"source": str(heldout.source), "scaling": heldout.scaling,
                 "samples": result.samples, "fingerprint": fingerprint.hexdigest,
                 "overlap_with_calibration": overlap},
        "int8_arithmetic": int8_arithmetic,
        "metric": result.metric,
        "outputs": result.outputs,
        "worst_tensors": worst_rows,
        "tensors": errors.tensors,
        "tensor_samples": errors.samples,
        "samples_per_run": per_run,
        "latency": latency,
        "execution": execution,
        "notes": [],
    }
    if overlap:
        out["notes"].append(f"WARNING: {overlap} of the {result.samples} held-out samples were also used for "
                            "calibration; the accuracy numbers are optimistic")
    elif overlap is None:
        out["notes"].append("the ranges file records no calibration samples (and no quantlab table beside it "
                            "does): overlap with the calibration data could not be checked")
    if result.metric.get("chosen") == "auto":
        out["notes"].append(f"metric: {result.metric['metric']} (chosen from the outputs' shapes; `metric` picks "
                            "another: classification, detection, dense, fidelity or module:Class)")
    if not any("fp32_top1" in o for o in result.outputs):
        out["notes"].append("no labels in the held-out data: top-1/top-5 accuracy skipped, agreement and "
                            "output fidelity reported")
    if errors.samples and errors.samples < result.samples:
        out["notes"].append(f"per-tensor errors measured on the first {errors.samples} held-out samples "
                            "(`tensor_samples`); the output numbers on all of them")
    thresholds = {name: {"amax": ranges.amax[name]} for name in (r["tensor"] for r in worst_rows[:6])
                  if name in ranges.amax}
    hist = {r["tensor"]: errors.histograms[r["tensor"]] for r in worst_rows[:6] if r["tensor"] in errors.histograms}
    doc = _compare_report(out, hist, thresholds)
    if report is not None:
        doc.write(report)
    return CompareResult(out, doc)


def _tensorrt_runner(qdq_bytes: bytes):
    """Build an explicit INT8 engine from the Q/DQ model and return a runner for it."""
    import tempfile

    from ..backends.tensorrt import TensorRTRunner, build_engine, import_tensorrt

    import_tensorrt()
    folder = Path(tempfile.mkdtemp(prefix="quantlab-trt-"))
    (folder / "model.qdq.onnx").write_bytes(qdq_bytes)
    build_engine(folder / "model.qdq.onnx", folder / "model.int8.plan")
    return TensorRTRunner(folder / "model.int8.plan")


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _compare_report(data: dict, histograms: dict, thresholds: dict) -> Report:
    doc = Report(f"INT8 vs FP32: {Path(data['model']['path'] or 'model').name}", data=data)
    d = data["data"]
    doc.paragraph(f"Ranges from `{data['ranges']['file']}` ({data['ranges']['format']}"
                  + (f", method {data['ranges']['method']}" if data['ranges']['method'] else "") + "). "
                  f"Held-out data: `{d['source']}`, {d['samples']} samples"
                  + ("" if d["overlap_with_calibration"] is None
                     else f", {d['overlap_with_calibration']} of them also in the calibration set") + ".")
    for note in data["notes"]:
        doc.paragraph(note)
    doc.heading("Outputs")
    keys = [("top-1 FP32", "fp32_top1"), ("top-1 INT8", "int8_top1"), ("top-5 FP32", "fp32_top5"),
            ("top-5 INT8", "int8_top5"), ("top-1 agreement", "top1_agreement"), ("cosine", "cosine_similarity"),
            ("SQNR dB", "sqnr_db"), ("max abs err", "max_abs_error")]
    present = [(label, key) for label, key in keys if any(key in o for o in data["outputs"])]
    doc.table(["output"] + [label for label, _ in present],
              [[o["output"]] + [o.get(key, "") for _, key in present] for o in data["outputs"]])
    metric = data.get("metric") or {}
    if metric.get("metric"):
        doc.heading(f"Metric: {metric['metric']}")
        doc.paragraph(f"Score ({metric.get('score_name', 'score')}, higher is better): {_number(metric.get('score'))}"
                      + (" - chosen from the outputs' shapes." if metric.get("chosen") == "auto" else "."))
        parts = [(o["output"], part, o[part]) for o in data["outputs"] for part in ("boxes", "scores")
                 if isinstance(o.get(part), dict)]
        if parts:
            doc.paragraph("A detection head mixes box coordinates (pixels) with class scores (0..1): one number "
                          "for the whole output is dominated by the boxes, so each part is measured apart.")
            doc.table(["output", "part", "cosine", "SQNR dB", "max abs err"],
                      [[name, part, v.get("cosine_similarity"), v.get("sqnr_db"), v.get("max_abs_error")]
                       for name, part, v in parts])
        extra = [(o["output"], key, o[key]) for o in data["outputs"] for key in
                 ("map50", "recall", "precision", "fp32_detections", "int8_detections", "mask_iou", "pixel_agreement")
                 if key in o]
        if extra:
            doc.table(["output", "measure", "value"], [list(row) for row in extra])
    doc.heading("Model and execution")
    lat = data["latency"]
    doc.table(["", "FP32", "INT8 (Q/DQ)"], [
        ["size (bytes)", data["model"]["size_bytes"], data["int8_model"]["size_bytes"]],
        ["median latency, batch 1 (ms)", lat["fp32_ms"], lat["int8_ms"]],
        *([["latency p10-p90 (ms)", f"{lat['fp32']['p10_ms']:.3f}-{lat['fp32']['p90_ms']:.3f}",
            f"{lat['int8']['p10_ms']:.3f}-{lat['int8']['p90_ms']:.3f}"]] if "p10_ms" in lat["int8"] else []),
    ])
    doc.paragraph(f"Q/DQ on {data['int8_model']['quantized_activations']} activations and "
                  f"{data['int8_model']['quantized_weights']} weights (per channel). INT8 arithmetic: "
                  f"{data['execution']['verdict']}. Latency: median of {lat['fp32'].get('runs', '?')} runs after "
                  f"{lat['fp32'].get('warmup_runs', '?')} warm-up runs, {lat['fp32'].get('intra_op_threads', '?')} "
                  "ONNX Runtime threads.")
    doc.heading("Precision plan on TensorRT 11")
    q, expected = data["int8_model"]["qdq"], data["int8_model"]["precision_plan"]
    doc.paragraph(f"Placement `{q['placement']}`, remainder `{q['high_precision']}`: "
                  + ", ".join(f"{n} ops {p}" for p, n in q["precision_counts"].items())
                  + f". Expected on TensorRT 11: {expected['headline']}. The scores above are those of this "
                  "typed model (its fp16 tensors rounded to fp16, INT8 exact).")
    if q["fp32"]:
        doc.table(["kept in fp32", "why"], [[node, why] for node, why in list(q["fp32"].items())[:20]])
    doc.heading("Tensors that lose the most (lowest SQNR)")
    doc.table(["tensor", "SQNR dB"], [[t["tensor"], t["sqnr_db"]] for t in data["worst_tensors"]])
    doc.figure(sqnr_figure(data["tensors"]))
    doc.figure(histogram_figure(histograms, thresholds, "worst_tensors_histograms.png",
                                "Held-out |x| histograms of the worst tensors with the calibrated threshold"))
    return doc


