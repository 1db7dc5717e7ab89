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
from ..qdq.plan import quantized_ranges
from ..qdq.remainder import emulated
from ..report import Report, histogram_figure, sqnr_figure
from ..roundtrip.inspect import Inspection, inspect
from ..roundtrip.layers import read_layer_info
from ..roundtrip.outputs import read_engine_outputs
from ..roundtrip.trtexec import read_profile
from ..workload import DataSpec, ModelSource, resolve_model, select_outputs, table_path_for
from .engine import OrtRunner, TensorErrors, check_arithmetic, evaluate, execution_verdict, tensor_errors
from .heldout import check_heldout
from .options import CompareOptions, EvalOptions
from .roundtrip import EngineFiles, compare_engine, file_names, first_divergence, is_qdq_file, read_qdq_model


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
            options: CompareOptions = CompareOptions(), engine: EngineFiles = EngineFiles(),
            report: Optional[Union[str, Path]] = None, progress: bool = True) -> CompareResult:
    """FP32 vs the Q/DQ model built from ``cache`` (placed as ``qdq`` says) on held-out ``data``,
    judged as ``evaluation`` says (:class:`~quantlab.evaluation.options.EvalOptions`: the metric, the
    INT8 arithmetic); per-tensor errors, latency, the INT8 backend and the first divergence as
    ``options`` says. Writes a report folder when ``report`` is given.

    ``cache`` may also be a Q/DQ ONNX model (``*.onnx``, any tool's): it is then compared as written
    (its typed remainder emulated, :func:`quantlab.qdq.remainder.emulated`). ``engine``: what a real
    TensorRT engine of that model left on its GPU host (:class:`~quantlab.evaluation.roundtrip.EngineFiles`):
    its outputs are held against FP32 and against the emulation, its layer info against the plan.

    Per-tensor errors are measured on the first ``options.tensor_samples`` held-out samples, in a
    pass of their own, so they never change the arithmetic of the headline numbers.
    """
    int8_arithmetic = check_arithmetic(evaluation.int8_arithmetic)
    providers, backend, worst = evaluation.providers, options.backend, options.worst
    graph = resolve_model(model)
    data = data or DataSpec()
    if cache is None:
        raise QuantlabError("compare needs `cache` (a TensorRT cache, ONNX Runtime table, quantlab table or a "
                            "Q/DQ ONNX model)", params=("cache",))
    if worst < 0:
        raise QuantlabError(f"`worst` must be 0 or more, got {worst}", params=("worst",))
    if report is not None:
        check_output_folder(report)
    ranges = qdq_report = None
    if is_qdq_file(cache):
        typed_model = read_qdq_model(cache, graph)
        qdq_model = emulated(typed_model)
        amax = file_amax = quantized_ranges(typed_model)
        ranges_info = {"file": str(cache), "format": "qdq-onnx", "method": None}
    else:
        ranges = cache if isinstance(cache, RangeFile) else read_ranges(cache)
        weights = measured = biases = None
        if ranges.format == "quantlab":
            table = ranges.extra["table"]
            table.check_model(graph.sha256, graph.activations)
            weights, biases = table.weights, table.biases
            measured = {name: MeasuredRange.from_dict(v) for name, v in table.provenance.get("measured", {}).items()}
        # The typed model is what is written (and what a TensorRT backend builds); the scored model
        # computes what it stores (fp16 tensors rounded to fp16), with the same tensor names.
        typed_model, qdq_report = export_qdq(graph, ranges.amax, weights, qdq, measured=measured or None,
                                             biases=biases)
        qdq_model, _ = export_qdq(graph, ranges.amax, weights, qdq, measured=measured or None, emulate=True,
                                  biases=biases)
        amax = ranges.amax
        ranges_info = {"file": ranges.source, "format": ranges.format,
                       "method": ranges.extra.get("method") if ranges.extra else None}
    if engine.runner is not None and engine.outputs is None:
        raise QuantlabError("`runner` picks a runner of the engine's outputs file: pass `engine_outputs` too",
                            params=("runner",))
    engine_outputs = read_engine_outputs(engine.outputs, engine.runner) if engine.outputs is not None else None
    layers = _inspection(engine, typed_model)
    qdq_bytes = typed_model.SerializeToString()
    plan = precision_plan(typed_model)
    output_names = select_outputs(graph, evaluation.outputs)
    inputs = {s.name for s in graph.inputs}
    aliases = file_names(graph.activations, qdq_model)
    amax = {name: amax[aliases.get(name, name)] for name in graph.activations if aliases.get(name, name) in amax}
    internal = [name for name in graph.activations if name not in inputs and name not in output_names
                and name in aliases]
    if options.first_divergence is not None and (not internal or not options.tensor_samples or backend == "tensorrt"):
        raise QuantlabError("--first-divergence reads the per-tensor errors: keep --tensor-samples above 0 "
                            "and the onnxruntime backend", params=("first_divergence",))
    heldout = check_heldout(graph, data, evaluation)
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
                               providers=providers, arithmetic=int8_arithmetic, per_run=per_run, sizes=sizes,
                               aliases=aliases)
    else:
        errors = TensorErrors([], {}, 0)
    overlap = _overlap(ranges, fingerprint) if ranges is not None else None
    engine_result = None
    if engine_outputs is not None:
        emulation = int8 if backend == "onnxruntime" else OrtRunner(qdq_model, (), providers, int8_arithmetic)
        engine_result = compare_engine(engine_outputs, fp32, emulation, heldout, output_names,
                                       metric=evaluation.metric,
                                       metric_params=dict(evaluation.metric_params), per_run=per_run,
                                       progress=progress)
    latency = {
        "batch": 1,
        "fp32": fp32.latency(first.inputs),
        "int8": (int8.latency(first.inputs) if backend == "onnxruntime"
                 else {"median_ms": int8.latency_ms(first.inputs)}),
        "int8_backend": backend,
    }
    latency["fp32_ms"], latency["int8_ms"] = latency["fp32"]["median_ms"], latency["int8"]["median_ms"]
    execution = (execution_verdict(qdq_model, int8_arithmetic, providers) if backend == "onnxruntime" else
                 {"verdict": "TensorRT engine built explicitly from the Q/DQ model", "executes_integer_kernels": None})
    worst_rows = sorted(errors.tensors, key=lambda t: t["sqnr_db"])[:worst]
    fp32_size = len(graph.model.SerializeToString())
    out = {
        "kind": "compare",
        "model": {"path": str(graph.path) if graph.path else None, "sha256": graph.sha256,
                  "size_bytes": fp32_size},
        "int8_model": {"size_bytes": len(qdq_bytes), "precision_plan": {k: v for k, v in plan.to_dict().items()
                                                                         if k != "nodes"},
                       **(_written_by_quantlab(qdq_report, qdq) if qdq_report is not None
                          else _read_from_file(typed_model, len(file_amax)))},
        "ranges": ranges_info,
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
    elif overlap is None and ranges is None:
        out["notes"].append("a Q/DQ model records no calibration samples: overlap with the calibration data could "
                            "not be checked")
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
    if engine_result is not None:
        out["engine"] = engine_result.to_dict()
        out["notes"] += engine_result.notes
    if layers is not None:
        out["layer_info"] = layers.to_dict()
    if options.first_divergence is not None:
        out["first_divergence"] = first_divergence(graph.model, errors, amax, options.first_divergence)
    thresholds = {name: {"amax": amax[name]} for name in (r["tensor"] for r in worst_rows[:6]) if name in amax}
    hist = {r["tensor"]: errors.histograms[r["tensor"]] for r in worst_rows[:6] if r["tensor"] in errors.histograms}
    if "first_divergence" in out:
        rows = {r["tensor"]: r for part in ("below_threshold", "largest_drops") for r in out["first_divergence"][part]}
        inputs_of = [i for r in rows.values() for i in r["input_ranges"]]
        divergence = {t: errors.histograms[t] for t in dict.fromkeys(inputs_of) if t in errors.histograms}
        hist = {"worst": hist, "divergence": divergence,
                "divergence_thresholds": {t: {"amax": amax[t]} for t in divergence}}
    else:
        hist = {"worst": hist}
    doc = _compare_report(out, hist, thresholds)
    if report is not None:
        doc.write(report)
    return CompareResult(out, doc)


def _inspection(engine: EngineFiles, typed_model) -> Optional[Inspection]:
    """The engine's layer info (and profile) held against the Q/DQ model, when given."""
    if engine.layer_info is None:
        if engine.profile is not None:
            raise QuantlabError("an engine profile is read with its layer info: pass --layer-info too",
                                params=("profile",))
        return None
    profile = read_profile(engine.profile)[-1] if engine.profile is not None else None
    return inspect(read_layer_info(engine.layer_info), typed_model, profile)


def _written_by_quantlab(report, qdq: QdqOptions) -> dict:
    return {"placement": qdq.placement, "qdq": report.to_dict(),
            "quantized_activations": len(report.quantized_activations),
            "quantized_weights": len(report.quantized_weights),
            "unmatched_ranges": report.unmatched_ranges, "left_in_float": report.skipped_nodes}


def _read_from_file(model, activations: int) -> dict:
    """What a Q/DQ file from elsewhere says of itself (no export report exists for it); ``activations``:
    how many activations it quantizes."""
    weights = sum(1 for node in model.graph.node if node.op_type == "DequantizeLinear"
                  and node.input[0] in {init.name for init in model.graph.initializer})
    return {"placement": None, "qdq": None, "quantized_activations": activations, "quantized_weights": weights,
            "unmatched_ranges": [], "left_in_float": []}


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
    if q is None:
        doc.paragraph(f"The Q/DQ model `{data['ranges']['file']}` as written. Expected on TensorRT 11: "
                      f"{expected['headline']}. The scores above are those of this file (its fp16 tensors "
                      "rounded to fp16, INT8 exact).")
    else:
        doc.paragraph(f"Placement `{q['placement']}`, remainder `{q['high_precision']}`: "
                      + ", ".join(f"{n} ops {p}" for p, n in q["precision_counts"].items())
                      + f". Expected on TensorRT 11: {expected['headline']}. The scores above are those of this "
                      "typed model (its fp16 tensors rounded to fp16, INT8 exact).")
        if q["fp32"]:
            doc.table(["kept in fp32", "why"], [[node, why] for node, why in list(q["fp32"].items())[:20]])
    if "engine" in data:
        _engine_section(doc, data["engine"])
    if "layer_info" in data:
        _layer_info_section(doc, data["layer_info"])
    doc.heading("Tensors that lose the most (lowest SQNR)")
    doc.table(["tensor", "SQNR dB"], [[t["tensor"], t["sqnr_db"]] for t in data["worst_tensors"]])
    doc.figure(sqnr_figure(data["tensors"]))
    doc.figure(histogram_figure(histograms["worst"], thresholds, "worst_tensors_histograms.png",
                                "Held-out |x| histograms of the worst tensors with the calibrated threshold"))
    if "first_divergence" in data:
        _divergence_section(doc, data["first_divergence"], histograms)
    return doc




def _engine_section(doc: Report, engine: dict) -> None:
    doc.heading("The real engine")
    doc.paragraph(f"Outputs of `{engine['source']}` ({engine['tool']}, runner `{engine['runner']}`, "
                  f"{engine['iterations']} iterations, {engine['samples']} samples), matched to the held-out "
                  "samples in order. Engine against FP32, with the metric above:")
    keys = [("top-1 engine", "int8_top1"), ("top-1 agreement", "top1_agreement"), ("cosine", "cosine_similarity"),
            ("SQNR dB", "sqnr_db"), ("max abs err", "max_abs_error")]
    rows = engine["vs_fp32"]["outputs"]
    present = [(label, key) for label, key in keys if any(key in o for o in rows)]
    doc.table(["output"] + [label for label, _ in present], [[o["output"]] + [o.get(k, "") for _, k in present]
                                                             for o in rows])
    doc.paragraph("quantlab's emulation against the engine (the engine is the reference: how closely the "
                  "emulated Q/DQ model predicts what TensorRT computed):")
    rows = engine["emulation_vs_engine"]["outputs"]
    doc.table(["output", "SQNR dB", "cosine", "max abs err"],
              [[o["output"], o.get("sqnr_db"), o.get("cosine_similarity"), o.get("max_abs_error")] for o in rows])


def _layer_info_section(doc: Report, info: dict) -> None:
    doc.heading("What the engine ran")
    doc.paragraph(f"`{info['source']}`: {info['headline']}.")
    for note in info["notes"]:
        doc.paragraph(note)
    nodes = info["nodes"]
    if nodes:
        ran = sum(1 for n in nodes if n["engine"] == "int8")
        doc.paragraph(f"Conv/Gemm/MatMul: {ran} of {len(nodes)} ran in INT8; "
                      f"{len(info['differs_from_plan'])} differ from the precision plan.")
        if info["differs_from_plan"]:
            doc.table(["node", "op", "planned", "ran", "engine layer"],
                      [[n["node"], n["op_type"], n["planned"], n["engine"], n["layer"]]
                       for n in info["differs_from_plan"][:30]])


def _divergence_section(doc: Report, found: dict, histograms: dict) -> None:
    doc.heading("First divergence")
    doc.paragraph(f"Tensors in graph order, measured on {found['samples']} held-out samples with the Q/DQ model "
                  "executed as written (every op as the file says, no fusion: asking for a tensor changes none "
                  f"of its values). Below {found['threshold_db']:g} dB first, then the largest drops against the "
                  "tensor's own inputs (where the error is made, not inherited). Their histograms are in "
                  "[divergence_histograms.png](divergence_histograms.png).")
    for title, rows in (("first below the threshold", found["below_threshold"]),
                        ("largest drops", found["largest_drops"])):
        doc.paragraph(title.capitalize() + ":" if rows else f"No tensor {title}.")
        if rows:
            doc.table(["tensor", "node", "op", "SQNR dB", "inputs' SQNR dB", "drop dB", "INT8 input ranges (amax)"],
                      [[r["tensor"], r["node"], r["op_type"], r["sqnr_db"], r["input_sqnr_db"], r["drop_db"],
                        ", ".join(f"{name} {value:.4g}" for name, value in r["input_ranges"].items()) or "float"]
                       for r in rows])
    doc.figure(histogram_figure(histograms["divergence"], histograms["divergence_thresholds"],
                                "divergence_histograms.png",
                                "Held-out |x| histograms of the diverging nodes' INT8 inputs with their range"))
