"""``compare`` and ``sweep``: how much accuracy INT8 keeps against FP32 on held-out data.

    from quantlab.accuracy import compare, sweep
    result = compare("model.onnx", "model.cache", DataSpec("heldout/"), report="reports/model")

``compare`` turns one cache or table (any format) into a Q/DQ model, runs it next to the FP32
model in ONNX Runtime and reports output metrics, the worst internal tensors, size, latency and
whether ONNX Runtime really ran integer kernels. ``sweep`` collects statistics once, calibrates
every method on them, evaluates each the same way and ranks them.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from tqdm import tqdm

from . import defaults
from .atomic import OutputSet, check_output_folder
from .calibrate import (
    DataSpec,
    _is_default_model,
    calibrate_statistics,
    collect_statistics,
    open_dataset,
    resolve_model,
)
from .errors import DataError, QuantlabError
from .evaluate import OrtRunner, compare_candidates, compare_models, integer_kernels
from .formats.ranges import RangeFile, read_ranges
from .formats.trtcache import DEFAULT_TRT_VERSION, format_trt_cache, make_header
from .graph import ModelGraph
from .histogram import DEFAULT_BINS
from .preprocess import (
    DataFingerprint,
    check_batch_size,
    describe_scaling,
    first_sample_dtype,
    iterate_batches,
    select_indices,
)
from .qdq import export_qdq, integer_ops
from .report import Report, bar_figure, histogram_figure, sqnr_figure

SWEEP_METHODS = (
    ("max", {}),
    ("entropy", {}),
    ("percentile", {"p": 99.9}),
    ("percentile", {"p": 99.99}),
    ("percentile", {"p": 99.999}),
    ("mse", {}),
)


def method_label(method: str, params: dict) -> str:
    return f"{method}({', '.join(f'{k}={v}' for k, v in params.items())})" if params else method


class HeldOut:
    """The held-out samples of a comparison: the data set opened once, the samples picked once."""

    def __init__(self, graph: ModelGraph, data: DataSpec):
        if data.source is None and not _is_default_model(graph):
            raise DataError("no held-out data given for this model: set `data`", params=("data",))
        check_batch_size(data.batch_size)
        data.preprocess.check_against(graph.inputs)
        self.graph, self.data = graph, data
        self.source = data.source if data.source is not None else defaults.HELDOUT_DATA
        self.dataset = open_dataset(self.source, data.data_format, graph)
        self.indices = select_indices(len(self.dataset), data.num_samples, data.seed)
        spec = graph.inputs[0]
        self.scaling = describe_scaling(first_sample_dtype(self.dataset, self.indices, spec.name), spec,
                                        data.preprocess)

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, fingerprint: Optional[DataFingerprint] = None, limit: Optional[int] = None,
                batch_size: Optional[int] = None):
        """Preprocessed batches (the first ``limit`` samples only, if given), fingerprinted."""
        indices = self.indices if limit is None else self.indices[:limit]
        for batch in iterate_batches(self.dataset, indices, self.graph.inputs, self.data.preprocess,
                                     batch_size or self.data.batch_size):
            if fingerprint is not None:
                fingerprint.add(batch.inputs)
            yield batch


def _outputs(graph: ModelGraph, wanted: Sequence[str]) -> list[str]:
    names = graph.output_names
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise QuantlabError(f"{unknown[0]!r} (`outputs`) is not a model output; outputs: {', '.join(names)}",
                            params=("outputs",))
    return list(wanted) or names


def _overlap(ranges: RangeFile, heldout: DataFingerprint) -> Optional[int]:
    digests = ranges.extra.get("provenance", {}).get("data", {}).get("sample_digests") if ranges.extra else None
    if not digests:
        return None
    return len(set(digests) & set(heldout.samples))


@dataclass
class CompareResult:
    data: dict
    report: Report


def compare(model=None, cache: Union[str, Path, RangeFile, None] = None, data: Optional[DataSpec] = None, *,
            report: Optional[Union[str, Path]] = None, outputs: Sequence[str] = (), worst: int = 10,
            exclude_nodes: Sequence[str] = (), exclude_ops: Sequence[str] = (), placement: str = "compute",
            backend: str = "onnxruntime", providers: Optional[Sequence[str]] = None,
            progress: bool = True) -> CompareResult:
    """FP32 vs the Q/DQ model built from ``cache`` on held-out ``data``; optionally write a report."""
    graph = resolve_model(model)
    data = data or DataSpec()
    if cache is None:
        raise QuantlabError("compare needs `cache` (a TensorRT cache, ONNX Runtime table or quantlab table)",
                            params=("cache",))
    if worst < 0:
        raise QuantlabError(f"`worst` must be 0 or more, got {worst}", params=("worst",))
    if report is not None:
        check_output_folder(report, [graph.path, data.source, cache if not isinstance(cache, RangeFile) else None])
    ranges = cache if isinstance(cache, RangeFile) else read_ranges(cache)
    weights = None
    if ranges.format == "quantlab":
        table = ranges.extra["table"]
        table.check_model(graph.sha256, graph.activations)
        weights = table.weights
    qdq_model, qdq_report = export_qdq(graph, ranges.amax, weights, exclude_nodes=exclude_nodes,
                                       exclude_ops=exclude_ops, placement=placement)
    qdq_bytes = qdq_model.SerializeToString()
    output_names = _outputs(graph, outputs)
    inputs = {s.name for s in graph.inputs}
    internal = [name for name in graph.activations if name not in inputs and name not in output_names]
    if backend == "tensorrt":
        internal = []  # an engine exposes its outputs only
        int8 = _tensorrt_runner(qdq_bytes)
    elif backend == "onnxruntime":
        int8 = OrtRunner(qdq_model, internal, providers)
    else:
        raise QuantlabError(f"unknown backend {backend!r} (onnxruntime or tensorrt)")
    fp32 = OrtRunner(graph.model, internal, providers)
    fingerprint = DataFingerprint()
    heldout = HeldOut(graph, data)
    with tqdm(total=len(heldout), unit="sample", desc="comparing", disable=not progress, file=sys.stderr) as bar:
        result = compare_models(fp32, int8, heldout.batches(fingerprint), output_names, internal, progress=bar)
    overlap = _overlap(ranges, fingerprint)
    first = next(heldout.batches(limit=1, batch_size=1))
    latency = {
        "batch": 1,
        "fp32_ms": OrtRunner(graph.model, (), providers).latency_ms(first.inputs),
        "int8_ms": (int8 if backend == "tensorrt" else OrtRunner(qdq_model, (), providers)).latency_ms(first.inputs),
        "int8_backend": backend,
    }
    execution = (integer_kernels(integer_ops(qdq_bytes)) if backend == "onnxruntime" else
                 {"verdict": "TensorRT engine built explicitly from the Q/DQ model", "executes_integer_kernels": None})
    tensors_sorted = sorted(result.tensors, key=lambda t: t["sqnr_db"])
    worst_rows = tensors_sorted[:worst]
    fp32_size = len(graph.model.SerializeToString())
    out = {
        "kind": "compare",
        "model": {"path": str(graph.path) if graph.path else None, "sha256": graph.sha256,
                  "size_bytes": fp32_size},
        "int8_model": {"size_bytes": len(qdq_bytes), "placement": placement,
                       "quantized_activations": len(qdq_report.quantized_activations),
                       "quantized_weights": len(qdq_report.quantized_weights),
                       "unmatched_ranges": qdq_report.unmatched_ranges, "left_in_float": qdq_report.skipped_nodes},
        "ranges": {"file": ranges.source, "format": ranges.format, "method": ranges.extra.get("method")
                   if ranges.extra else None},
        "data": {"source": str(heldout.source), "scaling": heldout.scaling,
                 "samples": result.samples, "fingerprint": fingerprint.hexdigest,
                 "overlap_with_calibration": overlap},
        "outputs": result.outputs,
        "worst_tensors": worst_rows,
        "tensors": result.tensors,
        "latency": latency,
        "execution": execution,
        "notes": [],
    }
    if overlap:
        out["notes"].append(f"WARNING: {overlap} of the {result.samples} held-out samples were also used for "
                            "calibration; the accuracy numbers are optimistic")
    if not any("fp32_top1" in o for o in result.outputs):
        out["notes"].append("no labels in the held-out data: top-1/top-5 accuracy skipped, agreement and "
                            "output fidelity reported")
    thresholds = {name: {"amax": ranges.amax[name]} for name in (r["tensor"] for r in worst_rows[:6])
                  if name in ranges.amax}
    hist = {r["tensor"]: result.histograms[r["tensor"]] for r in worst_rows[:6] if r["tensor"] in result.histograms}
    doc = _compare_report(out, hist, thresholds)
    if report is not None:
        doc.write(report)
    return CompareResult(out, doc)


def _tensorrt_runner(qdq_bytes: bytes):
    """Build an explicit INT8 engine from the Q/DQ model and return a runner for it."""
    import tempfile

    from .backends.tensorrt import TensorRTRunner, build_engine, import_tensorrt

    import_tensorrt()
    folder = Path(tempfile.mkdtemp(prefix="quantlab-trt-"))
    (folder / "model.qdq.onnx").write_bytes(qdq_bytes)
    build_engine(folder / "model.qdq.onnx", folder / "model.int8.plan")
    return TensorRTRunner(folder / "model.int8.plan")


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
    doc.heading("Model and execution")
    lat = data["latency"]
    doc.table(["", "FP32", "INT8 (Q/DQ)"], [
        ["size (bytes)", data["model"]["size_bytes"], data["int8_model"]["size_bytes"]],
        ["mean latency, batch 1 (ms)", lat["fp32_ms"], lat["int8_ms"]],
    ])
    doc.paragraph(f"Q/DQ on {data['int8_model']['quantized_activations']} activations and "
                  f"{data['int8_model']['quantized_weights']} weights (per channel). ONNX Runtime CPU: "
                  f"{data['execution']['verdict']}.")
    doc.heading("Tensors that lose the most (lowest SQNR)")
    doc.table(["tensor", "SQNR dB"], [[t["tensor"], t["sqnr_db"]] for t in data["worst_tensors"]])
    doc.figure(sqnr_figure(data["tensors"]))
    doc.figure(histogram_figure(histograms, thresholds, "worst_tensors_histograms.png",
                                "Held-out |x| histograms of the worst tensors with the calibrated threshold"))
    return doc


def sweep(model=None, calib: Optional[DataSpec] = None, heldout: Optional[DataSpec] = None, *,
          methods: Sequence[tuple] = SWEEP_METHODS, report: Optional[Union[str, Path]] = None,
          pick: Optional[str] = None, outputs: Sequence[str] = (),
          trt_version: tuple = DEFAULT_TRT_VERSION, providers: Optional[Sequence[str]] = None,
          bins: int = DEFAULT_BINS, threads: Optional[int] = None, tensors: str = "all", allow_nonfinite: bool = False,
          zero_amax: Optional[float] = None, progress: bool = True) -> dict:
    """Calibrate every method on one collection and rank them on held-out data."""
    graph = resolve_model(model)
    calib = calib or DataSpec()
    heldout = heldout or DataSpec()
    if calib.source is None and not _is_default_model(graph):
        raise DataError("no calibration data given for this model: set `data`", params=("data",))
    if pick is not None and report is None:
        raise QuantlabError("pick writes the winner into the report folder: give `report` too",
                            params=("pick", "report"))
    if pick not in (None, "best"):
        raise QuantlabError(f"pick must be 'best' or None, got {pick!r}", params=("pick",))
    if report is not None:
        check_output_folder(report, [graph.path, calib.source, heldout.source])
    started = time.perf_counter()
    stats = collect_statistics(graph, calib, bins=bins, providers=providers, threads=threads, tensors=tensors,
                               progress=progress)
    output_names = _outputs(graph, outputs)
    rows, tables, models = [], {}, {}
    for method, params in methods:
        label = method_label(method, params)
        tables[label] = calibrate_statistics(graph, stats, method, params, allow_nonfinite=allow_nonfinite,
                                             zero_amax=zero_amax)
        models[label], _ = export_qdq(graph, tables[label].activations, tables[label].weights)
    fingerprint = DataFingerprint()
    held = HeldOut(graph, heldout)
    candidates = {label: OrtRunner(qdq_model, (), providers) for label, qdq_model in models.items()}
    with tqdm(total=len(held), unit="sample", desc=f"evaluating {len(candidates)} methods", disable=not progress,
              file=sys.stderr) as bar:
        results = compare_candidates(OrtRunner(graph.model, (), providers), candidates, held.batches(fingerprint),
                                     output_names, progress=bar)
    overlap = len(set(stats.fingerprint.samples) & set(fingerprint.samples))
    for label, table in tables.items():
        main = results[label].outputs[0]
        rows.append({"method": label, "name": table.method, "params": table.params, **main,
                     "overlap_with_calibration": overlap})
        if progress:
            print(f"  {label:24s} " + ", ".join(f"{k} {main[k]:.4f}" for k in
                                                 ("int8_top1", "top1_agreement", "sqnr_db") if k in main),
                  file=sys.stderr)
    ranked = sorted(rows, key=_rank_key)
    for position, row in enumerate(ranked, start=1):
        row["rank"] = position
    best = ranked[0]
    data = {
        "kind": "sweep",
        "model": {"path": str(graph.path) if graph.path else None, "sha256": graph.sha256},
        "calibration": {"samples": stats.num_samples, "fingerprint": stats.fingerprint.hexdigest},
        "heldout": {"samples": best["samples"]},
        "ranking_key": "INT8 top-1, then top-1 agreement, then SQNR" if "int8_top1" in best
        else "top-1 agreement, then SQNR",
        "results": ranked,
        "best": best["method"],
        "seconds": time.perf_counter() - started,
        "notes": [],
    }
    if best.get("overlap_with_calibration"):
        data["notes"].append(f"WARNING: {best['overlap_with_calibration']} held-out samples were also used for "
                             "calibration; the accuracy numbers are optimistic")
    with OutputSet([graph.path, calib.source, heldout.source]) as files:
        if pick == "best":
            folder = files.make_folder(report)
            winner = tables[best["method"]]
            header = make_header(trt_version, _algorithm(best["name"]))
            cache_text = format_trt_cache(winner.activations, header)
            winner.provenance["trt_cache_header"] = header
            winner.provenance["trt_cache_sha256"] = hashlib.sha256(cache_text.encode("utf-8")).hexdigest()
            winner.check_writable_ranges()
            files.add_text(folder / "best.cache", cache_text)
            files.add_text(folder / "best.quantlab.json", winner.to_json())
            files.add(folder / "best.qdq.onnx", models[best["method"]].SerializeToString())
            data["picked"] = {"method": best["method"], "cache": str(folder / "best.cache"),
                              "table": str(folder / "best.quantlab.json"), "qdq_model": str(folder / "best.qdq.onnx")}
        if report is not None:
            _sweep_report(data, stats, tables).write(report, files)
        files.commit()
    return data


def _algorithm(method: str) -> str:
    return "MinMaxCalibration" if method == "max" else "EntropyCalibration2"


def _rank_key(row: dict):
    def neg(key):
        value = row.get(key)
        return -value if isinstance(value, float) and math.isfinite(value) else (
            -1e9 if value == math.inf else 1e9)
    return (neg("int8_top1"), neg("top1_agreement"), neg("sqnr_db"))


def _sweep_report(data: dict, stats, tables: dict) -> Report:
    doc = Report(f"Calibration sweep: {Path(data['model']['path'] or 'model').name}", data=data)
    doc.paragraph(f"Statistics collected once on {data['calibration']['samples']} calibration samples; every "
                  f"method calibrated on them and evaluated on {data['heldout']['samples']} held-out samples. "
                  f"Ranked by {data['ranking_key']}. Best: **{data['best']}**.")
    for note in data["notes"]:
        doc.paragraph(note)
    keys = [("top-1 FP32", "fp32_top1"), ("top-1 INT8", "int8_top1"), ("top-5 INT8", "int8_top5"),
            ("top-1 agreement", "top1_agreement"), ("cosine", "cosine_similarity"), ("SQNR dB", "sqnr_db")]
    present = [(label, key) for label, key in keys if any(key in r for r in data["results"])]
    doc.table(["rank", "method"] + [label for label, _ in present],
              [[r["rank"], r["method"]] + [r.get(key, "") for _, key in present] for r in data["results"]])
    if "picked" in data:
        doc.paragraph(f"Picked {data['picked']['method']}: `best.cache`, `best.quantlab.json`, `best.qdq.onnx`.")
    labels = [r["method"] for r in data["results"]]
    series = {label: [r.get(key, math.nan) for r in data["results"]] for label, key in
              (("top-1 INT8", "int8_top1"), ("top-1 agreement", "top1_agreement")) if key in data["results"][0]}
    doc.figure(bar_figure(labels, series, "methods.png", "Accuracy of each calibration method", "fraction"))
    spread = []
    for name in next(iter(tables.values())).activations:
        values = [t.activations[name] for t in tables.values()]
        spread.append((max(values) / min(values), name))
    chosen = [name for _, name in sorted(spread, reverse=True)[:6]]
    thresholds = {name: {label: t.activations[name] for label, t in tables.items()} for name in chosen}
    doc.figure(histogram_figure({n: stats.tensors[n] for n in chosen}, thresholds, "thresholds.png",
                                "Calibration |x| histograms of the tensors where the methods disagree most, "
                                "with each method's threshold"))
    doc.heading("Thresholds where the methods disagree most")
    doc.table(["tensor"] + list(tables), [[n] + [tables[m].activations[n] for m in tables] for n in chosen])
    return doc
