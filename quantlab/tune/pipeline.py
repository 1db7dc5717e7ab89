"""``tune``: INT8 within an accuracy budget, for both TensorRT worlds, from one calibration.

    from quantlab.tune import Budget, TuneOutput, tune
    result = tune("model.onnx", DataSpec("calib/"), DataSpec("heldout.npz"), budget=Budget(max_drop=0.5),
                  output=TuneOutput("model.qdq.onnx", report="reports/model-tune"))

1. collect once and choose ``auto`` ranges (:mod:`quantlab.tune.auto`);
2. score the all-INT8 model on the evaluation data; if the drop against FP32 is already within
   ``max_drop`` points, nothing stays in float;
3. otherwise rank the quantized layers (:mod:`quantlab.tune.sensitivity`) and leave the most
   sensitive in higher precision, greedily with re-checks (:mod:`quantlab.tune.search`);
4. write the outputs: a Q/DQ ONNX without Q/DQ on the fallback layers (TensorRT 10/11; in
   ``fp16`` their float compute is float16, as a strongly typed TensorRT 11 network runs an fp32 op
   in fp32), a TensorRT cache without the fallback layers' tensors with the matching ``trtexec
   --layerPrecisions`` line (TensorRT <= 10), the table, and a report.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Union

from ..atomic import OutputSet, check_output_folder, check_outputs
from ..calibrate import (
    CollectOptions,
    Method,
    RangePolicy,
    calibrate_statistics,
    collect_statistics,
    stage_cache_and_table,
)
from ..errors import QuantlabError
from ..evaluation.engine import check_arithmetic
from ..evaluation.heldout import check_heldout, class_count
from ..evaluation.options import EvalOptions
from ..executors import Executor, uses_executor
from ..formats.trtcache import make_header
from ..precision import FP16_MAX, trt_cache_without, trtexec_command
from ..qdq import QUANTIZED_OPS, measured_ranges
from ..report import Report, bar_figure, jsonable, short_labels
from ..workload import DataSpec, ModelSource, data_source, resolve_model, select_outputs
from .auto import AUTO, AUTO_CANDIDATES
from .options import Budget, SearchOptions, TuneOutput
from .search import drop_points, within
from .search import search as fallback_search
from .sensitivity import Scorer, analyse, first_sqnr, headline, quantized_layers, variant


def tuned_paths(output: Union[str, Path]) -> dict[str, Path]:
    """The files beside the Q/DQ model ``X.qdq.onnx`` (or ``X.onnx``): ``X.cache`` and ``X.quantlab.json``."""
    path = Path(output)
    stem = path.name[:-len(".qdq.onnx")] if path.name.endswith(".qdq.onnx") else path.stem
    return {"qdq_model": path, "cache": path.with_name(stem + ".cache"),
            "table": path.with_name(stem + ".quantlab.json")}


@uses_executor
def tune(model: Optional[ModelSource] = None, calib: Optional[DataSpec] = None, heldout: Optional[DataSpec] = None,
         *, budget: Budget = Budget(), search: SearchOptions = SearchOptions(),
         evaluation: EvalOptions = EvalOptions(), collect: CollectOptions = CollectOptions(),
         policy: RangePolicy = RangePolicy(), output: TuneOutput = TuneOutput(), progress: bool = True,
         executor: Union[Executor, str, None] = None) -> dict:
    """Calibrate with ``auto`` ranges and leave the fewest layers in float that keep the metric
    (``evaluation``) within the ``budget`` on ``heldout``; write the outputs (``output``: the Q/DQ
    model, with the cache and table beside it, :func:`tuned_paths`, and a report).

    The sensitivity ranking is measured on the first ``search.ranking_samples`` evaluation
    samples (all of them when None; NNCF's accuracy control ranks on 300 too); every step of the
    search is measured on all of them. ``executor`` (``local``, ``processes``, ``ray``, or an
    :class:`~quantlab.executors.Executor`) runs the collection and every scoring pass (the
    sensitivity candidates, the search steps) in shards of samples on its workers; the result is
    the same, bit for bit."""
    started = time.perf_counter()
    check_arithmetic(evaluation.int8_arithmetic)
    graph = resolve_model(model)
    calib = calib or DataSpec()
    heldout = heldout or DataSpec()
    data_source(graph, calib)  # no calibration data for a model of one's own: refused before any work
    paths = tuned_paths(output.qdq_model) if output.qdq_model is not None else {}
    inputs = [graph.path, calib.source, heldout.source]
    check_outputs(dict(paths), inputs)
    if output.report is not None:
        check_output_folder(output.report)
    held = check_heldout(graph, heldout, evaluation)  # labels and NaN/Inf refused before any work
    resolution = resolution_note(len(held), budget.max_drop,
                                 class_count(graph, select_outputs(graph, evaluation.outputs), evaluation.metric))
    if resolution and progress:
        print(f"quantlab: note: {resolution}", file=sys.stderr)

    stats = collect_statistics(graph, calib, replace(collect, tensors="all"), progress=progress, executor=executor)
    table = calibrate_statistics(graph, stats, Method(AUTO, {"samples": search.auto_samples}), policy=policy,
                                 data=calib, progress=progress)
    measured = measured_ranges(stats.tensors)
    table.provenance["measured"] = {name: measured[name].to_dict() for name in sorted(measured)}
    base_model = variant(table, [], budget.high_precision)
    layers = quantized_layers(base_model.build(graph))
    if not layers:
        raise QuantlabError("the model has no named Conv/ConvTranspose/Gemm/MatMul layer to quantize, so there is "
                            "nothing to tune")
    limit = len(layers) if budget.max_float_layers is None else min(budget.max_float_layers, len(layers))

    _, per_run = held.activation_sizes(evaluation.providers)
    scorer = Scorer(graph, held, evaluation, per_run, progress, executor=executor)
    compare_methods = True if search.compare_methods is None else search.compare_methods
    tables = {AUTO: table}
    tables.update({method.label: _with_measured(calibrate_statistics(graph, stats, method, policy=policy), table)
                   for method in map(Method.of, AUTO_CANDIDATES if compare_methods else ())})
    singles = {label: variant(t, [], budget.high_precision) for label, t in tables.items() if label != AUTO}
    first = scorer.score({AUTO: base_model, **singles}, desc="scoring auto" + (" and every method" if singles else ""))
    _refuse_nan(first[AUTO])
    # The search starts from the best all-INT8 model on the evaluation data (auto on a tie): a single
    # method already within the budget needs no float layer that auto's ranges would.
    start = max(first, key=lambda label: (headline(first[label])[0], label == AUTO))
    table, base = tables[start], first[start]

    analysis, found = None, None
    if not (within(base, budget.max_drop) or limit == 0):
        ranker = scorer.subset(search.ranking_samples)
        analysis = analyse(graph, table, ranker, layers, base if ranker is scorer else None,
                           only_quantized=search.sensitivity == "both", high_precision=budget.high_precision)
        scorer.passes += ranker.passes if ranker is not scorer else 0
        found = fallback_search(analysis.ranking, base,
                                lambda chosen: variant(table, chosen, budget.high_precision), scorer,
                                budget.max_drop, limit)
    fallback = found.fallback if found else []
    final = found.evaluation if found else base  # every step scored the model written (fp16 fallback included)

    overlap = len(set(stats.fingerprint.samples) & set(scorer.fingerprint.samples))
    _, reference, score_name = headline(base)
    data = {
        "kind": "tune",
        "model": {"path": str(graph.path) if graph.path else None, "sha256": graph.sha256},
        "calibration": {"samples": stats.num_samples, "fingerprint": stats.fingerprint.hexdigest},
        "heldout": {"samples": base.samples, "overlap_with_calibration": overlap},
        "metric": {"name": base.metric.get("metric"), "score_name": score_name, "fp32": reference},
        "max_drop": budget.max_drop, "max_float_layers": limit, "high_precision": budget.high_precision,
        "int8_arithmetic": evaluation.int8_arithmetic,
        "auto": {"chosen_counts": tables[AUTO].provenance["auto"]["chosen_counts"],
                 "winner": tables[AUTO].provenance["auto"]["winner"]},
        "start": start,
        "quantized_layers": len(layers),
        "all_int8": _scores(first[AUTO]),
        "start_int8": _scores(base),
        "single_methods": {label: _scores(first[label]) for label in singles},
        "fallback": fallback,
        "final": _scores(final),
        "written": {**_scores(final), "high_precision": budget.high_precision},
        "met": (found.met if found else within(base, budget.max_drop)) and within(final, budget.max_drop),
        "search": found.path if found else [],
        "sensitivity": analysis.rows if analysis else [],
        "ranking": analysis.ranking if analysis else [],
        "passes_over_eval_data": scorer.passes,
        "ranking_samples": min(search.ranking_samples or base.samples, base.samples),
        "notes": _notes(graph, table, fallback, overlap, budget, limit),
    }
    if resolution:
        data["notes"].insert(0, resolution)
    if start != AUTO:
        data["notes"].append(f"the search started from {start}'s ranges: on the evaluation data they scored "
                             f"{data['start_int8']['score']:.4f} all-INT8, auto's {data['all_int8']['score']:.4f}")
    if not data["met"]:
        data["notes"].append(f"the budget of {budget.max_drop} points was not met: the best reached is a drop of "
                             f"{data['written']['drop']:.2f} points with {len(fallback)} float layer(s)"
                             + (f" (the limit, max_float_layers, is {limit})" if len(fallback) >= limit else ""))
    if paths:
        data["outputs"] = {k: str(v) for k, v in paths.items()}
        data["trtexec"] = trtexec_command(str(graph.path or "model.onnx"), str(paths["cache"]), fallback,
                                          high_precision=budget.high_precision)
    data["executor"] = {"name": executor.name, "workers": executor.workers, "where": executor.describe()}
    data["seconds"] = time.perf_counter() - started
    _write_outputs(graph, table, data, paths, output, inputs)
    return data


def resolution_note(samples: int, max_drop: float, classes: Optional[int]) -> Optional[str]:
    """What a budget finer than one sample's weight means, for a metric that counts samples (top-1
    accuracy or agreement, when ``classes`` is known); None when the data resolves it."""
    if classes is None or samples <= 0 or max_drop <= 0 or max_drop >= 100.0 / samples:
        return None
    return (f"with {samples} evaluation samples one sample weighs {100.0 / samples:.2f} points, so a budget of "
            f"{max_drop:g} points is a budget of 0: not one sample may be lost, net; "
            f"{math.ceil(100.0 / max_drop)} samples would resolve it")


def _refuse_nan(evaluation) -> None:
    """A NaN score (a metric plugin's, or NaN in the data) cannot be held against a budget: stop, nothing written."""
    score, reference, name = headline(evaluation)
    if math.isnan(score) or math.isnan(reference):
        raise QuantlabError(f"metric {evaluation.metric.get('metric')!r} scored NaN ({name}: FP32 {reference}, "
                            f"all-INT8 {score}): a budget cannot be judged on NaN; check the metric plugin and the "
                            "evaluation data", params=("metric",))


def _with_measured(single, table):
    """A single method's table typed from the same measured ranges as ``table``."""
    single.provenance["measured"] = table.provenance["measured"]
    return single


def _scores(evaluation) -> dict:
    """An evaluation's row in the result: its score, drop against FP32 (points) and first output's SQNR."""
    return {"score": headline(evaluation)[0], "drop": drop_points(evaluation), "sqnr_db": first_sqnr(evaluation)}


def _notes(graph, table, fallback: list[str], overlap: int, budget: Budget, limit: int) -> list[str]:
    """What a user of the result should know: overlapping data, unnamed layers, fp16 overflow."""
    notes = []
    if overlap:
        notes.append(f"WARNING: {overlap} evaluation samples were also calibration samples; the accuracy numbers "
                     "are optimistic")
    unnamed = [node.op_type for node in graph.model.graph.node if node.op_type in QUANTIZED_OPS and not node.name]
    if unnamed:
        notes.append(f"{len(unnamed)} quantized layer(s) have no ONNX node name, so they cannot be named to "
                     "TensorRT or kept in float: they stay INT8 and are not ranked")
    if budget.high_precision == "fp16":
        wide = sorted({name for node in graph.model.graph.node if node.name in set(fallback)
                       for name in list(node.input[:1]) + list(node.output[:1])
                       if table.activations.get(name, 0.0) > FP16_MAX})
        if wide:
            notes.append(f"WARNING: {len(wide)} tensor(s) at the fallback layers reach beyond the fp16 range "
                         f"(e.g. {wide[0]!r}, amax {table.activations[wide[0]]:.4g}): the Q/DQ model keeps the ops "
                         "that touch them in fp32 (measured), but the trtexec line pins every fallback layer to "
                         "fp16; use high_precision fp32 for a TensorRT <= 10 build")
    return notes


def _write_outputs(graph, table, data: dict, paths: dict, output: TuneOutput, inputs: list) -> None:
    """The Q/DQ model (fallback layers without Q/DQ, in their precision), the TensorRT cache without the
    fallback layers' tensors and its table, and the report: committed together or not at all."""
    fallback, high_precision = data["fallback"], data["high_precision"]
    with OutputSet(inputs) as files:
        if paths:
            written = variant(table, fallback, high_precision).export(graph)
            table.activations = trt_cache_without(table.activations, variant(table, fallback, "fp32").build(graph),
                                                 fallback)
            table.provenance["tune"] = jsonable({key: data[key] for key in (
                "fallback", "max_drop", "high_precision", "metric", "start", "all_int8", "start_int8", "final",
                "written", "met", "trtexec")})
            header = make_header(output.trt_version, "EntropyCalibration2")
            stage_cache_and_table(files, table, header, paths["cache"], paths["table"])
            files.add(paths["qdq_model"], written.SerializeToString())
        if output.report is not None:
            _tune_report(data).write(output.report, files)
        files.commit()


def _tune_report(data: dict) -> Report:
    name = Path(data["model"]["path"] or "model").name
    doc = Report(f"Tune: {name} within {data['max_drop']} points of FP32", data=data)
    metric = data["metric"]
    verdict = "met" if data["met"] else "NOT met"
    doc.paragraph(f"Metric {metric['name']} ({metric['score_name']}; FP32 {metric['fp32']:.4f}) on "
                  f"{data['heldout']['samples']} evaluation samples, INT8 arithmetic {data['int8_arithmetic']}. "
                  f"Budget {data['max_drop']} points: **{verdict}** with {len(data['fallback'])} of "
                  f"{data['quantized_layers']} layers in {data['high_precision']}: drop "
                  f"{data['written']['drop']:.2f} points (all INT8: {data['all_int8']['drop']:.2f}).")
    for note in data["notes"]:
        doc.paragraph(note)
    doc.heading("Against every single method (all layers INT8)")
    rows = [["auto", data["all_int8"]["score"], data["all_int8"]["drop"], data["all_int8"]["sqnr_db"]]]
    rows += [[label, r["score"], r["drop"], r["sqnr_db"]] for label, r in data["single_methods"].items()]
    rows.append([f"tuned ({len(data['fallback'])} float, {data['high_precision']})", data["written"]["score"],
                 data["written"]["drop"], data["written"]["sqnr_db"]])
    doc.table(["ranges", metric["score_name"], "drop (points)", "SQNR dB (first output)"], rows)
    if data["search"]:
        doc.heading("Search path")
        doc.table(["step", "layer", "action", "float layers", metric["score_name"], "drop (points)"],
                  [[s["step"], s["layer"] or "(all INT8)", s["action"], s["float_layers"], s["score"], s["drop"]]
                   for s in data["search"]])
    if data["sensitivity"]:
        doc.heading("Sensitivity (most sensitive first)")
        by_layer = {r["layer"]: r for r in data["sensitivity"]}
        ranked = [by_layer[layer] for layer in data["ranking"]]
        headers = ["rank", "layer (TensorRT name)", "op", "score, it alone float", "SQNR dB, it alone float"]
        has_alone = "score_int8_alone" in ranked[0]
        if has_alone:
            headers += ["score, it alone INT8", "SQNR dB, it alone INT8"]
        doc.table(headers, [[k + 1, r["layer"], r["op"], r["score_float_alone"], r["sqnr_float_alone"]]
                            + ([r["score_int8_alone"], r["sqnr_int8_alone"]] if has_alone else [])
                            for k, r in enumerate(ranked)])
        top = ranked[:20]
        doc.figure(bar_figure(short_labels([r["layer"] for r in top]),
                              {"SQNR dB gain, alone in float": [r["sqnr_gain"] for r in top]},
                              "sensitivity.png", f"The {len(top)} most sensitive layers: SQNR of the first output "
                              "gained by leaving each alone in float", "dB"))
    if "trtexec" in data:
        doc.heading("Outputs")
        doc.paragraph(f"TensorRT 10/11 (explicit): `{data['outputs']['qdq_model']}`. TensorRT <= 10 (implicit): "
                      f"`{data['outputs']['cache']}` with:")
        doc.paragraph(f"`{data['trtexec']}`")
    return doc


def summary_lines(data: dict) -> list[str]:
    """The CLI's summary of a tune result."""
    metric = data["metric"]
    lines = [f"tuned {Path(data['model']['path'] or 'model').name}: {metric['name']} "
             f"({metric['score_name']}), FP32 {metric['fp32']:.4f}, {data['heldout']['samples']} evaluation samples",
             "  auto ranges   : " + ", ".join(f"{k} {v}" for k, v in data["auto"]["chosen_counts"].items()),
             f"  all INT8      : {data['all_int8']['score']:.4f} (drop {data['all_int8']['drop']:.2f} points)"]
    if data["single_methods"]:
        best = max(data["single_methods"].items(), key=lambda item: item[1]["score"])
        lines.append(f"  best method   : {best[0]} {best[1]['score']:.4f} (drop {best[1]['drop']:.2f})")
    lines.append(f"  started from  : {data['start']} ranges, {data['start_int8']['score']:.4f} all INT8")
    lines.append(f"  float layers  : {len(data['fallback'])} of {data['quantized_layers']} in {data['high_precision']}"
                 + (": " + ", ".join(data["fallback"][:6]) + (" ..." if len(data["fallback"]) > 6 else "")
                    if data["fallback"] else ""))
    lines.append(f"  result        : {data['written']['score']:.4f} (drop {data['written']['drop']:.2f} points, "
                 f"budget {data['max_drop']}: {'met' if data['met'] else 'NOT met'})")
    lines.append(f"  passes        : {data['passes_over_eval_data']} over the evaluation data, {data['seconds']:.1f} s")
    for key, path in data.get("outputs", {}).items():
        lines.append(f"  {key:13s} : {path}")
    if "trtexec" in data:
        lines.append(f"  TensorRT<=10  : {data['trtexec']}")
    lines += [f"  note: {note}" for note in data["notes"]]
    return lines

