"""``sweep``: every calibration method on one collection, evaluated the same way, ranked.

Statistics are collected once; each method's ranges become a Q/DQ model; all of them run against
one FP32 pass over the held-out data through the evaluation engine, so a method's numbers here
are, bit for bit, the ones ``compare`` gives for the same ranges.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..atomic import OutputSet, check_output_folder
from ..calibrate import (
    CollectOptions,
    Method,
    RangePolicy,
    calibrate_statistics,
    collect_statistics,
    default_trt_algorithm,
    stage_cache_and_table,
)
from ..errors import QuantlabError
from ..executors import Executor, uses_executor
from ..formats.trtcache import DEFAULT_TRT_VERSION, make_header
from ..qdq import export_qdq, measured_ranges
from ..report import Report, bar_figure, histogram_figure
from ..workload import DataSpec, ModelSource, data_source, resolve_model, select_outputs
from .engine import QdqCandidate, check_arithmetic, evaluate_sharded
from .heldout import check_heldout
from .options import EvalOptions

SWEEP_METHODS = (
    ("max", {}),
    ("entropy", {}),
    ("percentile", {"p": 99.9}),
    ("percentile", {"p": 99.99}),
    ("percentile", {"p": 99.999}),
    ("mse", {}),
    ("auto", {}),
)


@dataclass(frozen=True)
class SweepOutput:
    """What a sweep writes: the ranking ``report`` folder, and with ``pick="best"`` the winner's cache
    (header of ``trt_version``), table and Q/DQ model in it."""

    report: Optional[Union[str, Path]] = None
    pick: Optional[str] = None
    trt_version: tuple = DEFAULT_TRT_VERSION


@uses_executor
def sweep(model: Optional[ModelSource] = None, calib: Optional[DataSpec] = None, heldout: Optional[DataSpec] = None,
          *, methods: Sequence[Union[str, tuple, Method]] = SWEEP_METHODS, evaluation: EvalOptions = EvalOptions(),
          collect: CollectOptions = CollectOptions(), policy: RangePolicy = RangePolicy(),
          output: SweepOutput = SweepOutput(), progress: bool = True,
          executor: Union[Executor, str, None] = None) -> dict:
    """Calibrate every method on one collection (``collect``) and rank them on held-out data, judged as
    ``evaluation`` says (:class:`~quantlab.evaluation.options.EvalOptions`).

    ``executor`` (``local``, ``processes``, ``ray`` or an :class:`~quantlab.executors.Executor`) runs
    the collection and the evaluation in shards merged in a fixed order: the ranking and every
    number are the same, bit for bit, whichever executor runs them."""
    int8_arithmetic = check_arithmetic(evaluation.int8_arithmetic)
    report, pick, trt_version = output.report, output.pick, output.trt_version
    graph = resolve_model(model)
    calib = calib or DataSpec()
    heldout = heldout or DataSpec()
    data_source(graph, calib)  # no calibration data for a model of one's own: refused before any work
    if pick is not None and report is None:
        raise QuantlabError("pick writes the winner into the report folder: give `report` too",
                            params=("pick", "report"))
    if pick not in (None, "best"):
        raise QuantlabError(f"pick must be 'best' or None, got {pick!r}", params=("pick",))
    if report is not None:
        check_output_folder(report)
    methods = {method.label: method for method in map(Method.of, methods)}
    algorithms = {label: default_trt_algorithm(method) for label, method in methods.items()}  # bad ones refused now
    started = time.perf_counter()
    check_heldout(graph, heldout, evaluation)
    stats = collect_statistics(graph, calib, collect, progress=progress, executor=executor)
    select_outputs(graph, evaluation.outputs)
    rows, tables, models = [], {}, {}
    measured = measured_ranges(stats.tensors)  # types the remainder of every method's model, as calibrate does
    for label, method in methods.items():
        tables[label] = calibrate_statistics(graph, stats, method, policy=policy, data=calib, progress=progress)
        models[label], _ = export_qdq(graph, tables[label].activations, tables[label].weights, measured=measured,
                                      emulate=True)
    candidates = {label: QdqCandidate(table.activations, table.weights, measured=measured, model=models[label])
                  for label, table in tables.items()}
    results, fingerprint = evaluate_sharded(graph, heldout, candidates, evaluation, executor, progress=progress,
                                            desc=f"evaluating {len(candidates)} methods")
    overlap = len(set(stats.fingerprint.samples) & set(fingerprint.samples))
    for label, table in tables.items():
        main = results[label].outputs[0]
        score = results[label].metric
        rows.append({"method": label, "name": table.method, "params": table.params, **main,
                     "score": score.get("score"), "score_name": score.get("score_name"),
                     "metric": score.get("metric"), "overlap_with_calibration": overlap})
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
        "ranking_key": f"{best['metric']} score ({best['score_name']}), then INT8 top-1, top-1 agreement, SQNR",
        "int8_arithmetic": int8_arithmetic,
        "results": ranked,
        "best": best["method"],
        "seconds": time.perf_counter() - started,
        "executor": {"name": executor.name, "workers": executor.workers, "where": executor.describe(),
                     "ran": executor.ran()},
        "notes": [],
    }
    if best.get("overlap_with_calibration"):
        data["notes"].append(f"WARNING: {best['overlap_with_calibration']} held-out samples were also used for "
                             "calibration; the accuracy numbers are optimistic")
    with OutputSet([graph.path, calib.source, heldout.source]) as files:
        if pick == "best":
            folder = files.make_folder(report)
            winner = tables[best["method"]]
            header = make_header(trt_version, algorithms[best["method"]])
            stage_cache_and_table(files, winner, header, folder / "best.cache", folder / "best.quantlab.json")
            files.add(folder / "best.qdq.onnx", models[best["method"]].SerializeToString())
            data["picked"] = {"method": best["method"], "cache": str(folder / "best.cache"),
                              "table": str(folder / "best.quantlab.json"), "qdq_model": str(folder / "best.qdq.onnx")}
        if report is not None:
            _sweep_report(data, stats, tables).write(report, files)
        files.commit()
    return data


def _rank_key(row: dict):
    """Best first: the metric's score, then the classic tie-breakers; NaN (undefined) ranks last."""
    def neg(key):
        value = row.get(key)
        if not isinstance(value, (int, float)) or math.isnan(value):
            return 1e18
        return -1e9 if value == math.inf else (1e9 if value == -math.inf else -value)
    return (neg("score"), neg("int8_top1"), neg("top1_agreement"), neg("sqnr_db"))


def _sweep_report(data: dict, stats, tables: dict) -> Report:
    doc = Report(f"Calibration sweep: {Path(data['model']['path'] or 'model').name}", data=data)
    doc.paragraph(f"Statistics collected once on {data['calibration']['samples']} calibration samples; every "
                  f"method calibrated on them and evaluated on {data['heldout']['samples']} held-out samples. "
                  f"Ranked by {data['ranking_key']}. Best: **{data['best']}**.")
    for note in data["notes"]:
        doc.paragraph(note)
    keys = [("top-1 FP32", "fp32_top1"), ("top-1 INT8", "int8_top1"), ("top-5 INT8", "int8_top5"),
            ("top-1 agreement", "top1_agreement"), ("cosine", "cosine_similarity"), ("SQNR dB", "sqnr_db")]
    score_name = data["results"][0].get("score_name")
    if score_name and score_name not in {key for _, key in keys}:
        keys.append((f"score: {score_name}", "score"))
    present = [(label, key) for label, key in keys if any(key in r for r in data["results"])]
    doc.table(["rank", "method"] + [label for label, _ in present],
              [[r["rank"], r["method"]] + [r.get(key, "") for _, key in present] for r in data["results"]])
    if "picked" in data:
        doc.paragraph(f"Picked {data['picked']['method']}: `best.cache`, `best.quantlab.json`, `best.qdq.onnx`.")
    labels = [r["method"] for r in data["results"]]
    series = {label: [r.get(key, math.nan) for r in data["results"]] for label, key in
              (("top-1 INT8", "int8_top1"), ("top-1 agreement", "top1_agreement")) if key in data["results"][0]}
    if not series and isinstance(data["results"][0].get("score"), float):
        series = {data["results"][0]["score_name"]: [r.get("score", math.nan) for r in data["results"]]}
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
