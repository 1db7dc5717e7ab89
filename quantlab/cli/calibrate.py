"""``quantlab calibrate``: data -> statistics -> ranges -> a TensorRT cache and its table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import defaults
from ..calibrate import CalibrationOutput, Method, calibrate
from ..corrections import DEFAULT_SAMPLES as DEFAULT_BC_SAMPLES
from ..corrections import BiasCorrection
from ..errors import QuantlabError
from ..formats.trtcache import parse_version
from ..plugins import calibrator_class, list_calibrators, list_dataset_adapters
from ..workload import resolve_model, table_path_for
from .args import (
    add_collection_arguments,
    add_data_arguments,
    add_executor_arguments,
    add_policy_arguments,
    add_qdq_arguments,
    add_trt_version_argument,
    collect_options,
    command_line,
    data_spec,
    emit,
    executor_for,
    executor_line,
    parse_params,
    qdq_options,
    qdq_summary,
    range_policy,
    spelled,
)

EPILOG = """\
examples:
  quantlab calibrate                      # embedded Fashion-MNIST model and data, entropy
  quantlab calibrate model.onnx --data calib/ --method entropy --num-samples 512 \\
      --batch-size 32 -o model.cache
  quantlab calibrate model.onnx --data calib.npz --method percentile --param p=99.9
  quantlab collect model.onnx --data shard0/ -o shard0.stats.npz     # collect once...
  quantlab calibrate model.onnx --stats shard0.stats.npz shard1.stats.npz --method mse
                                                                    # ...calibrate offline

data (--data): a folder of images (one sub-folder per class), a .npy/.npz file, an IDX file
(MNIST format, .gz or not) or module:function returning samples. Integer samples (8-bit pixels,
whatever their shape) are scaled by 1/255 and float samples fed as they are, unless --scale says
otherwise; then --mean/--std, laid out as the model's input wants (NCHW/NHWC from its shape).
In a .npz the inputs are the array 'x' (or named like the model input) and labels 'y'.

outputs: the TensorRT calibration cache (-o; header TRT-<version>-<algorithm>, set with
--trt-version/--trt-algorithm to match the TensorRT that reads it) and quantlab's JSON table
(--table; default <cache stem>.quantlab.json) with per-tensor amax/scale, per-channel weight
amax and provenance.
"""


def add_parser(sub) -> None:
    cal = sub.add_parser("calibrate", help="calibrate a model and write a TensorRT cache + table",
                         description="Collect activation statistics of an ONNX model on real data "
                                     "and turn them into INT8 ranges.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cal.add_argument("model", nargs="?", help="ONNX model (default: the embedded Fashion-MNIST CNN)")
    cal.add_argument("--method", default="entropy", help="calibration method (default entropy; auto: per "
                     "tensor, among every method's range, judged by the error at the graph outputs on "
                     "calibration samples; see --list-methods)")
    cal.add_argument("--param", action="append", metavar="NAME=VALUE",
                     help="method parameter, e.g. p=99.9 for percentile (repeatable)")
    cal.add_argument("-o", "--output", metavar="FILE", help="TensorRT cache to write (default: <model name>.cache "
                     "in the current folder); a name ending in .onnx writes the typed Q/DQ model for TensorRT 11 "
                     "instead (see --format)")
    cal.add_argument("--format", choices=["cache", "qdq", "both"], help="what -o is: cache (TensorRT <= 10), "
                     "qdq (a typed Q/DQ ONNX for TensorRT 10/11) or both (-o names the Q/DQ model, the cache "
                     "goes beside it); default: from the name, .onnx -> qdq")
    cal.add_argument("--table", metavar="JSON", help="quantlab table to write "
                     "(default: <cache stem>.quantlab.json)")
    cal.add_argument("--stats", nargs="+", metavar="FILE", help="calibrate from statistics "
                     "files (from quantlab collect; merged) instead of running the model")
    cal.add_argument("--save-stats", metavar="FILE", help="also save the collected statistics")
    add_trt_version_argument(cal, "the cache")
    cal.add_argument("--trt-algorithm", help="algorithm in the cache header (default: "
                     "EntropyCalibration2, MinMaxCalibration for max)")
    cal.add_argument("--bias-correction", nargs="?", type=int, const=DEFAULT_BC_SAMPLES, metavar="SAMPLES",
                     help="fold the mean error INT8 puts on each output channel of every Conv/ConvTranspose/Gemm "
                          "into its float bias, measured on the first SAMPLES calibration samples (default "
                          f"{DEFAULT_BC_SAMPLES}); the table and the Q/DQ model carry it, a TensorRT cache cannot")
    cal.add_argument("--json", action="store_true", help="print the result as JSON instead of the summary")
    cal.add_argument("--list-methods", action="store_true", help="list installed methods and exit")
    cal.add_argument("--list-formats", action="store_true", help="list dataset adapters and exit")
    add_data_arguments(cal)
    add_collection_arguments(cal)
    add_policy_arguments(cal)
    add_qdq_arguments(cal)
    add_executor_arguments(cal)
    cal.set_defaults(func=run, command_parser=cal)


def run(args: argparse.Namespace) -> int:
    if args.list_methods:
        infos = list_calibrators()  # per-tensor calibrators first, then whole-table choosers (auto)
        choosers = {info.name for info in infos if hasattr(calibrator_class(info.name), "choose")}
        for info in sorted(infos, key=lambda info: (info.name in choosers, info.name)):
            about = getattr(calibrator_class(info.name), "description", "")
            print(f"{info.name:12s} {info.target}  ({info.distribution})" + (f"  {about}" if about else ""))
        return 0
    if args.list_formats:
        for info in list_dataset_adapters():
            print(f"{info.name:12s} {info.target}  ({info.distribution})")
        return 0
    model_path = Path(args.model) if args.model else defaults.MODEL
    target = args.output or (f"{model_path.stem}.qdq.onnx" if args.format in ("qdq", "both")
                             else f"{model_path.stem}.cache")
    kind = args.format or ("qdq" if str(target).lower().endswith(".onnx") else "cache")
    if kind == "cache" and str(target).lower().endswith(".onnx"):
        raise QuantlabError(f"-o {target} names an ONNX file but --format cache writes a TensorRT text cache; "
                            "name the cache .cache, or drop --format to write the Q/DQ model")
    cache = {"cache": target, "qdq": None, "both": Path(target).with_suffix("").with_suffix(".cache")}[kind]
    output = CalibrationOutput(cache, table=args.table, stats=args.save_stats,
                               trt_version=parse_version(args.trt_version), trt_algorithm=args.trt_algorithm,
                               qdq=None if kind == "cache" else target, qdq_options=qdq_options(args))
    graph = resolve_model(args.model)
    replaced = _method_in(target if kind == "qdq" else cache) if args.output is None else None
    correction = None if args.bias_correction is None else BiasCorrection(args.bias_correction)
    with executor_for(args) as executor:
        result = calibrate(graph, data_spec(args), Method(args.method, parse_params(args.param)), output=output,
                           collect=collect_options(args), policy=range_policy(args), stats=args.stats,
                           progress=not args.quiet, executor=executor,
                           bias_correction=correction)
    table = result.table
    amax = sorted(table.activations.values())
    data = {"model": str(model_path), "method": table.method, "params": table.params,
            "cache": str(result.cache_path) if result.cache_path else None,
            "qdq_model": str(result.qdq_path) if result.qdq_path else None,
            "cache_header": table.provenance["trt_cache_header"],
            "table": str(result.table_path), "activations": len(table.activations), "weights": len(table.weights),
            "amax_min": amax[0], "amax_max": amax[-1], "samples": result.statistics.num_samples,
            "input_scaling": result.statistics.scaling, "notes": table.notes, "seconds": result.seconds,
            "tensors": args.tensors}
    lines = [f"calibrated {model_path.name} with {table.method} {table.params or ''}",
             f"  activations : {len(table.activations)} tensors, amax {amax[0]:.4g} .. {amax[-1]:.4g}",
             f"  weights     : {len(table.weights)} tensors, per output channel",
             f"  samples     : {result.statistics.num_samples}"]
    if result.statistics.scaling:
        lines.append(f"  input       : {spelled(args, result.statistics.scaling)}")
    if "auto" in table.provenance:
        auto = table.provenance["auto"]
        counts = ", ".join(f"{label} {n}" for label, n in sorted(auto["chosen_counts"].items(), key=lambda i: -i[1]))
        lines.append(f"  chosen      : {counts} (per tensor, by the error it causes downstream; "
                     f"{auto.get('judging') or str(auto['samples']) + ' calibration samples'}; the table says which)")
        data["chosen_counts"] = auto["chosen_counts"]
    if "bias_correction" in table.provenance:
        corrected = table.provenance["bias_correction"]
        shifts = sorted(corrected["layers"].items(), key=lambda i: -(i[1]["relative"] or 0))
        largest = f"; largest {shifts[0][0]} ({shifts[0][1]['relative']:.2%} of its bias)" if shifts and \
            shifts[0][1]["relative"] else ""
        lines.append(f"  biases      : {corrected['corrected']} layer(s) corrected on {corrected['samples']} samples, "
                     f"{len(corrected['skipped'])} left alone{largest} (the table lists each)")
        if kind == "cache":
            lines.append("  note: a TensorRT cache holds ranges only: the corrected biases are in the table; "
                         "export-qdq from the table, or --format qdq/both, to deploy them")
        if corrected.get("samples_note"):
            lines.append(f"  note: {corrected['samples_note']}")
        data["bias_correction"] = {k: corrected[k] for k in ("corrected", "samples", "skipped")}
    graph_notes = list(result.table.provenance["model"].get("normalisation", []))
    if graph.data_independent:
        graph_notes.append(f"{len(graph.data_independent)} data-independent tensor(s) (from Shape/constants) "
                           "need no range")
    if graph.unquantizable_weights:
        shown = ", ".join(list(graph.unquantizable_weights)[:3])
        graph_notes.append(f"{len(graph.unquantizable_weights)} weighted node(s) without a quantizable weight "
                           f"({shown}{' ...' if len(graph.unquantizable_weights) > 3 else ''}; export-qdq says why)")
    if graph_notes:
        lines.append("  graph       : " + "; ".join(graph_notes))
    if executor_line(executor) and not args.stats:
        lines.append(executor_line(executor))
        data["executor"] = {"where": executor.describe(), "ran": executor.ran()}
    lines.append(f"  time        : {result.seconds:.2f} s")
    if result.cache_path:
        lines.append(f"  cache       : {result.cache_path}  ({table.provenance['trt_cache_header']})")
    if result.qdq_report is not None:
        lines += qdq_summary(result.qdq_report, f"  Q/DQ model  : {result.qdq_path}", "this calibration",
                          "the measured ranges of this calibration")
        data["qdq"] = result.qdq_report.to_dict()
    lines.append(f"  table       : {result.table_path}")
    lines += [f"  note: {name}: {spelled(args, note)}" for name, note in list(table.notes.items())[:5]]
    if replaced and replaced != table.method:
        lines.append(f"  replaced    : {target} held {replaced} ranges; it now holds {table.method}'s "
                     "(-o writes another file)")
        data["replaced_method"] = replaced
    if args.tensors == "qdq":
        lines.append("  note: only the Q/DQ inputs were measured: use this cache with export-qdq (TensorRT 10/11 "
                     "explicit INT8); an implicit build (trtexec --int8 --calib) wants --tensors all")
    if result.cache_path:
        cache_flag = "" if args.model is None and args.output is None else f"--cache {result.cache_path}"
        heldout = "--data HELDOUT" if args.model else ""  # held-out samples, not the calibration ones
        lines.append("  next        : " + command_line("compare", args, cache_flag, heldout, data=False)
                     + "   # how much accuracy INT8 keeps on held-out data")
    elif result.qdq_path:
        lines.append(f"  next        : quantlab qdq plan {result.qdq_path}   # the precision TensorRT 11 will give "
                     "each layer")
    emit(args, data, "\n".join(lines))
    return 0


def _method_in(path) -> str | None:
    """The method whose ranges the file at ``path`` holds, read from the quantlab table beside it."""
    try:
        return json.loads(Path(table_path_for(path)).read_text(encoding="utf-8")).get("method")
    except (OSError, ValueError, AttributeError):
        return None
