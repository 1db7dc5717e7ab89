"""``quantlab`` command line: a thin layer over :mod:`quantlab.calibrate`.

Every user error ends as one line on stderr (``quantlab: error: ...``) and exit code 2;
nothing half-written is left behind (all files are written atomically, outputs are checked
for writability before the long work starts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from . import __version__, defaults
from .atomic import check_output, protect_inputs, reset_written, written_files
from .cachetool import diff_ranges, inspect_ranges, lint_ranges
from .calibrate import TENSOR_SCOPES, DataSpec, calibrate, collect_statistics, resolve_model
from .errors import QuantlabError, Terminated, respell
from .executors import EXECUTORS
from .formats.ranges import FORMATS, header_for_conversion, read_ranges, write_ranges
from .formats.trtcache import DEFAULT_TRT_VERSION, parse_version
from .graph import load_model
from .histogram import DEFAULT_BINS
from .plugins import list_calibrators, list_dataset_adapters
from .preprocess import Preprocess
from .report import jsonable
from .statistics import merge_files

EPILOG_CALIBRATE = """\
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


def _count(minimum: int):
    """An argparse type: an integer of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"wants a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = "count"
    return parse


def _number(text: str) -> float:
    """An argparse type: a finite float."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"wants a finite number, got {text!r}")
    return value


def _bins(text: str) -> int:
    from .histogram import check_bins

    value = _count(1)(text)
    try:
        check_bins(value)
    except QuantlabError as exc:
        raise argparse.ArgumentTypeError(exc.render({"bins": "the value"})) from None
    return value


def _add_data_arguments(parser: argparse.ArgumentParser, data_help: Optional[str] = None) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", metavar="PATH", help=data_help or "calibration data (default: the embedded "
                       "Fashion-MNIST calibration images when no model is given)")
    group.add_argument("--data-format", metavar="NAME", help="force a dataset adapter "
                       "(see --list-formats); detected from PATH by default")
    group.add_argument("--num-samples", type=_count(1), metavar="N",
                       help="use N samples, a fixed random subset chosen by --seed (default: all)")
    group.add_argument("--batch-size", type=_count(1), default=32, metavar="N",
                       help="samples per ONNX Runtime run (default 32; results do not depend on it)")
    group.add_argument("--seed", type=_count(0), default=0, help="seed of the sample subset (default 0)")
    group.add_argument("--resize", type=_count(1), nargs=2, metavar=("H", "W"), help="resize images first")
    group.add_argument("--crop", type=_count(1), nargs=2, metavar=("H", "W"), help="centre-crop images")
    group.add_argument("--scale", type=_number, help="multiply samples by this (default: 1/255 for integer "
                       "samples, taken as 8-bit pixels, whatever their shape; float samples are fed as they are)")
    group.add_argument("--mean", type=_number, nargs="+", help="per-channel mean subtracted after scaling")
    group.add_argument("--std", type=_number, nargs="+", help="per-channel std divided by after the mean")
    group.add_argument("--layout", choices=["NCHW", "NHWC"], help="input layout (default: the model's)")
    group.add_argument("--preprocess-config", metavar="JSON", help="the options above as a JSON "
                       'file, e.g. {"resize": [256, 256], "crop": [224, 224], "mean": [...]}')
    group.add_argument("--provider", action="append", metavar="NAME",
                       help="ONNX Runtime execution provider (repeatable; default CPUExecutionProvider)")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")


def _add_collection_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the commands that collect statistics (calibrate, collect, sweep)."""
    group = parser.add_argument_group("statistics")
    group.add_argument("--bins", type=_bins, default=DEFAULT_BINS,
                       help=f"histogram bins, a power of two from 256 to 65536 (default {DEFAULT_BINS})")
    group.add_argument("--tensors", choices=TENSOR_SCOPES, default="all",
                       help="activations to measure: all (default; what TensorRT 8.x-10.x implicit INT8 builds "
                       "read from a cache) or qdq (only the inputs of Conv/ConvTranspose/Gemm/MatMul, all that a "
                       "Q/DQ model for TensorRT 10/11 needs; faster)")
    group.add_argument("--threads", type=_count(1), metavar="N",
                       help="threads filling the histograms (default: every CPU this process may use); "
                       "results do not depend on it")


def _add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the work runs (collect, calibrate, sweep, tune): the results are the same, byte for byte."""
    group = parser.add_argument_group("executor (the results are the same, byte for byte, on every one)")
    group.add_argument("--executor", choices=EXECUTORS, default="local",
                       help="local (default): this process; processes: a pool of processes on this machine; "
                       "ray: a Ray cluster (pip install 'quantlab[ray]')")
    group.add_argument("--workers", type=_count(1), metavar="N",
                       help="tasks at a time (default: one per CPU of this machine, or of the Ray cluster); "
                       "each gets its share of the CPUs")
    group.add_argument("--address", metavar="ADDR",
                       help="the Ray cluster: auto, host:6379 or ray://head:10001 (default: $RAY_ADDRESS, else a "
                       "Ray instance started for this command); every node must see the model and data paths")


def _executor(args: argparse.Namespace):
    """The executor the command's flags ask for (a context manager: its workers stop at the end)."""
    from .executors import get_executor

    return get_executor(args.executor, args.workers, args.address)


def _executor_line(executor) -> Optional[str]:
    """The summary line that says how many workers ran and where (none for the default, local)."""
    if executor.name == "local":
        return None
    return f"  executor    : {executor.describe()}; {executor.ran()}"


def _add_metric_arguments(parser: argparse.ArgumentParser, *flags: str) -> None:
    parser.add_argument("--metric", *[f for f in flags if f != "--metric"], dest="metric", default="auto",
                        metavar="NAME", help="metric plugin: classification, detection, dense, fidelity, "
                        "module:Class or file.py:Class (default auto: chosen from the outputs' shapes; "
                        "sweep ranks methods by its score)")
    parser.add_argument("--metric-param", dest="metric_params", action="append", metavar="NAME=VALUE",
                        help="metric parameter, e.g. score_threshold=0.3 for detection (repeatable)")


def _data_spec(args: argparse.Namespace) -> DataSpec:
    pre = Preprocess.from_file(args.preprocess_config) if args.preprocess_config else Preprocess()
    overrides = {
        "resize": tuple(args.resize) if args.resize else None,
        "crop": tuple(args.crop) if args.crop else None,
        "scale": args.scale,
        "mean": tuple(args.mean) if args.mean else None,
        "std": tuple(args.std) if args.std else None,
        "layout": args.layout,
    }
    merged = {**pre.to_dict(), **{k: v for k, v in overrides.items() if v is not None}}
    return DataSpec(args.data, args.data_format, Preprocess(**merged), args.num_samples,
                    args.batch_size, args.seed)


def _eval_spec(args: argparse.Namespace, calib: DataSpec) -> DataSpec:
    """The evaluation data of sweep and tune: --eval-data, read as the calibration data is."""
    return DataSpec(args.eval_data, args.data_format, calib.preprocess, args.eval_num_samples, args.batch_size,
                    args.seed)


def _parse_params(pairs: Optional[Sequence[str]], flag: str = "--param") -> dict:
    params = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise QuantlabError(f"{flag} wants NAME=VALUE, got {pair!r}")
        try:
            params[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            params[key] = value
    return params


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the problem, and where the help is (not the whole usage)."""

    def error(self, message: str):
        self.exit(2, f"quantlab: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="quantlab",
        description="INT8 calibration for TensorRT: collect activation histograms with ONNX "
                    "Runtime, choose ranges (entropy/KL, percentile, MSE, max), write TensorRT "
                    "calibration caches and quantlab tables.",
    )
    parser.add_argument("--version", action="version", version=f"quantlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    cal = sub.add_parser("calibrate", help="calibrate a model and write a TensorRT cache + table",
                         description="Collect activation statistics of an ONNX model on real data "
                                     "and turn them into INT8 ranges.",
                         epilog=EPILOG_CALIBRATE, formatter_class=argparse.RawDescriptionHelpFormatter)
    cal.add_argument("model", nargs="?", help="ONNX model (default: the embedded Fashion-MNIST CNN)")
    cal.add_argument("--method", default="entropy", help="calibration method (default entropy; auto: per "
                     "tensor, among every method's range, judged by the error at the graph outputs on "
                     "calibration samples; see --list-methods)")
    cal.add_argument("--param", action="append", metavar="NAME=VALUE",
                     help="method parameter, e.g. p=99.9 for percentile (repeatable)")
    cal.add_argument("-o", "--output", metavar="CACHE", help="TensorRT cache to write "
                     "(default: <model name>.cache in the current folder)")
    cal.add_argument("--table", metavar="JSON", help="quantlab table to write "
                     "(default: <cache stem>.quantlab.json)")
    cal.add_argument("--stats", nargs="+", metavar="FILE", help="calibrate from statistics "
                     "files (from quantlab collect; merged) instead of running the model")
    cal.add_argument("--save-stats", metavar="FILE", help="also save the collected statistics")
    cal.add_argument("--trt-version", default=".".join(map(str, DEFAULT_TRT_VERSION)),
                     help="TensorRT version written in the cache header (default %(default)s)")
    cal.add_argument("--trt-algorithm", help="algorithm in the cache header (default: "
                     "EntropyCalibration2, MinMaxCalibration for max)")
    cal.add_argument("--allow-nonfinite", action="store_true",
                     help="calibrate tensors that had NaN/Inf from their finite values")
    cal.add_argument("--zero-amax", type=_number, metavar="VALUE",
                     help="amax for tensors that were all zero (default: refuse them)")
    cal.add_argument("--json", action="store_true", help="print the result as JSON instead of the summary")
    cal.add_argument("--list-methods", action="store_true", help="list installed methods and exit")
    cal.add_argument("--list-formats", action="store_true", help="list dataset adapters and exit")
    _add_data_arguments(cal)
    _add_collection_arguments(cal)
    _add_executor_arguments(cal)
    cal.set_defaults(func=cmd_calibrate, command_parser=cal)

    col = sub.add_parser("collect", help="collect activation statistics into a file",
                         description="Run the FP32 model over data and save per-tensor histograms; "
                                     "calibrate them later with 'calibrate --stats'.")
    col.add_argument("model", nargs="?", help="ONNX model (default: the embedded one)")
    col.add_argument("-o", "--output", required=True, metavar="FILE", help="statistics file (.npz)")
    col.add_argument("--json", action="store_true", help="print the result as JSON instead of the summary")
    _add_data_arguments(col)
    _add_collection_arguments(col)
    _add_executor_arguments(col)
    col.set_defaults(func=cmd_collect, command_parser=col)

    mrg = sub.add_parser("merge-stats", help="merge statistics files of data shards",
                         description="Merge statistics of shards; the result equals one "
                                     "collection over all of the data, byte for byte.")
    mrg.add_argument("inputs", nargs="+", metavar="FILE")
    mrg.add_argument("-o", "--output", required=True, metavar="FILE")
    mrg.add_argument("--json", action="store_true", help="print the result as JSON instead of the summary")
    mrg.set_defaults(func=cmd_merge_stats, command_parser=mrg)

    qdq = sub.add_parser("export-qdq", help="write a Q/DQ ONNX model (TensorRT 10/11 explicit INT8) "
                         "from any cache or table",
                         description="Insert QuantizeLinear/DequantizeLinear nodes from a calibration "
                                     "cache or table of any format (TensorRT cache of any vintage, ONNX "
                                     "Runtime table, quantlab table): the path from a legacy cache to a "
                                     "TensorRT 11 engine.")
    qdq.add_argument("model", nargs="?", help="ONNX model (default: the embedded one)")
    qdq.add_argument("--cache", required=True, metavar="FILE", help="ranges: cache or table, any format")
    qdq.add_argument("-o", "--output", required=True, metavar="ONNX", help="Q/DQ model to write")
    qdq.add_argument("--exclude-node", dest="exclude_nodes", action="append", default=[], metavar="NAME",
                     help="keep this node in float (repeatable)")
    qdq.add_argument("--exclude-op", dest="exclude_ops", action="append", default=[], metavar="TYPE",
                     help="keep every node of this op type in float (e.g. Gemm)")
    qdq.add_argument("--placement", choices=["compute", "residual"], default="compute",
                     help="compute: inputs of Conv/Gemm/MatMul (default); residual: also the skip input "
                     "of Conv+Add residuals, for TensorRT's INT8 residual fusion")
    qdq.add_argument("--allow-missing", action="store_true",
                     help="leave quantizable tensors without a range in float instead of failing")
    qdq.add_argument("--json", action="store_true", help="machine-readable report")
    qdq.set_defaults(func=cmd_export_qdq, command_parser=qdq)

    cmp_ = sub.add_parser("compare", help="FP32 vs INT8 (Q/DQ in ONNX Runtime) on held-out data, with a report",
                          description="Build the Q/DQ model from a cache or table, run it next to the FP32 "
                                      "model on held-out data and report accuracy, output fidelity, the "
                                      "worst layers, size, latency and whether integer kernels ran.",
                          epilog="examples:\n  quantlab compare model.onnx --cache model.cache --data heldout/ "
                                 "--report reports/model\n  quantlab compare      # embedded model, after "
                                 "'quantlab calibrate'", formatter_class=argparse.RawDescriptionHelpFormatter)
    cmp_.add_argument("model", nargs="?", help="ONNX model (default: the embedded one)")
    cmp_.add_argument("--cache", metavar="FILE", help="ranges (any format; default for the embedded "
                      "model: ./fashion_mnist_cnn.cache from 'quantlab calibrate')")
    cmp_.add_argument("--report", metavar="DIR", help="write report.md/.html/.json and plots here")
    cmp_.add_argument("--output", action="append", default=[], metavar="NAME",
                      help="model output to compare (repeatable; default: all)")
    cmp_.add_argument("--worst", type=_count(0), default=10, help="how many worst tensors to list (default 10)")
    cmp_.add_argument("--exclude-node", dest="exclude_nodes", action="append", default=[], metavar="NAME",
                      help="keep in float (repeatable)")
    cmp_.add_argument("--exclude-op", dest="exclude_ops", action="append", default=[], metavar="TYPE",
                      help="keep in float (repeatable)")
    cmp_.add_argument("--placement", choices=["compute", "residual"], default="compute",
                      help="Q/DQ placement (see export-qdq --help)")
    cmp_.add_argument("--backend", choices=["onnxruntime", "tensorrt"], default="onnxruntime",
                      help="run the INT8 model in ONNX Runtime (CPU, default) or as a TensorRT engine (GPU)")
    cmp_.add_argument("--int8-arithmetic", choices=["tensorrt", "onnxruntime"], default="tensorrt",
                      help="tensorrt (default): the Q/DQ graph as written, TensorRT's int8 x int8 -> int32 "
                      "arithmetic to float rounding; onnxruntime: ONNX Runtime's own CPU integer kernels, for "
                      "deployment on ONNX Runtime")
    _add_metric_arguments(cmp_, "--metric")
    cmp_.add_argument("--tensor-samples", type=_count(0), default=32, metavar="N",
                      help="held-out samples the per-tensor errors are measured on (default 32; 0: skip)")
    cmp_.add_argument("--json", action="store_true", help="print the JSON report instead of the summary")
    _add_data_arguments(cmp_, "held-out data (default: the embedded held-out Fashion-MNIST test images)")
    cmp_.set_defaults(func=cmd_compare, command_parser=cmp_)

    swp = sub.add_parser("sweep", help="calibrate with every method, evaluate each, rank them",
                         description="Collect statistics once, calibrate max, entropy, percentile 99.9/99.99/"
                                     "99.999, mse and auto on them, evaluate each Q/DQ model on held-out data and "
                                     "rank them.",
                         epilog="example:\n  quantlab sweep model.onnx --data calib/ --eval-data heldout/ "
                                "--report reports/model-sweep --pick best",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    swp.add_argument("model", nargs="?", help="ONNX model (default: the embedded one)")
    swp.add_argument("--eval-data", metavar="PATH", help="held-out data (default for the embedded model: its "
                     "held-out set)")
    swp.add_argument("--eval-num-samples", type=_count(1), metavar="N", help="use N held-out samples (default: all)")
    swp.add_argument("--report", metavar="DIR", help="write the ranking report here")
    swp.add_argument("--pick", choices=["best"], help="write the winner's cache, table and Q/DQ model "
                     "into the report folder")
    swp.add_argument("--output", action="append", default=[], metavar="NAME", help="model output to rank on")
    swp.add_argument("--trt-version", default=".".join(map(str, DEFAULT_TRT_VERSION)),
                     help="TensorRT version in the picked cache's header")
    swp.add_argument("--allow-nonfinite", action="store_true", help="as for calibrate")
    swp.add_argument("--zero-amax", type=_number, metavar="VALUE", help="as for calibrate")
    swp.add_argument("--int8-arithmetic", choices=["tensorrt", "onnxruntime"], default="tensorrt",
                     help="as for compare (default tensorrt)")
    _add_metric_arguments(swp, "--rank-by")
    swp.add_argument("--json", action="store_true", help="print the JSON result")
    _add_data_arguments(swp)
    _add_collection_arguments(swp)
    _add_executor_arguments(swp)
    swp.set_defaults(func=cmd_sweep, command_parser=swp)

    _add_tune_command(sub)

    bld = sub.add_parser("build", help="build a TensorRT INT8 engine (needs TensorRT and a GPU)",
                         description="Build a TensorRT INT8 engine: from an ONNX model plus a calibration "
                                     "cache (implicit INT8, TensorRT 8.x-10.x) or from a Q/DQ model (explicit "
                                     "INT8, TensorRT 8.x-11.x). Without TensorRT, prints the equivalent trtexec "
                                     "command.",
                         epilog="examples:\n  quantlab build model.onnx --cache model.cache -o model.int8.plan\n"
                                "  quantlab build model.qdq.onnx -o model.int8.plan\n"
                                "  quantlab build model.onnx --cache model.cache -o m.plan --print-trtexec "
                                "--trt-version 8.6", formatter_class=argparse.RawDescriptionHelpFormatter)
    bld.add_argument("model", help="ONNX model (FP32 with --cache, or a Q/DQ model)")
    bld.add_argument("--cache", metavar="FILE", help="TensorRT calibration cache (implicit INT8, TensorRT <= 10)")
    bld.add_argument("-o", "--output", required=True, metavar="PLAN", help="engine file to write")
    bld.add_argument("--fp16", action="store_true", help="allow FP16 fallback for layers without INT8 kernels")
    bld.add_argument("--workspace", type=_count(1), default=1024, metavar="MiB",
                     help="builder workspace (default 1024)")
    bld.add_argument("--trt-version", help="for --print-trtexec without TensorRT: the target version "
                     "(default: the installed one, else 10.3.0)")
    bld.add_argument("--print-trtexec", action="store_true", help="print the equivalent trtexec command and exit")
    bld.add_argument("--json", action="store_true", help="print the result as JSON instead of the summary")
    bld.set_defaults(func=cmd_build, command_parser=bld)

    _add_cache_commands(sub)
    return parser


def cmd_compare(args: argparse.Namespace) -> int:
    from .evaluation.compare import compare

    cache = args.cache
    if cache is None:
        if args.model is not None:
            raise QuantlabError("compare needs --cache for a model of your own")
        cache = "fashion_mnist_cnn.cache"
        if not Path(cache).exists():
            raise QuantlabError("no ./fashion_mnist_cnn.cache here: run 'quantlab calibrate' first, or pass --cache")
    result = compare(args.model, cache, _data_spec(args), report=args.report, outputs=args.output,
                     worst=args.worst, exclude_nodes=args.exclude_nodes, exclude_ops=args.exclude_ops,
                     placement=args.placement, backend=args.backend, providers=args.provider,
                     int8_arithmetic=args.int8_arithmetic, tensor_samples=args.tensor_samples,
                     metric=args.metric, metric_params=_parse_params(args.metric_params, "--metric-param"),
                     progress=not args.quiet)
    data = result.data
    lines = [f"compared on {data['data']['samples']} held-out samples "
             f"(ranges: {data['ranges']['format']} {data['ranges']['file']})",
             f"  input: {_spelled(args, data['data']['scaling'])}"]
    for o in data["outputs"]:
        parts = [f"{label} {o[key]:.4f}" for label, key in (
            ("top-1 FP32", "fp32_top1"), ("top-1 INT8", "int8_top1"), ("agreement", "top1_agreement"),
            ("cosine", "cosine_similarity"), ("SQNR dB", "sqnr_db")) if key in o]
        lines.append(f"  {o['output']}: " + ", ".join(parts))
    metric = data.get("metric", {})
    if metric.get("score") is not None:
        lines.append(f"  metric: {metric['metric']}, {metric.get('score_name', 'score')} {metric['score']:.4f}")
    if data["worst_tensors"]:
        worst = data["worst_tensors"][0]
        lines.append(f"  worst tensor: {worst['tensor']} ({worst['sqnr_db']:.1f} dB)")
    lines.append(f"  latency batch 1 (median): FP32 {data['latency']['fp32_ms']:.3f} ms, "
                 f"INT8 {data['latency']['int8_ms']:.3f} ms")
    lines.append(f"  INT8 arithmetic: {data['execution']['verdict']}")
    lines += [f"  {_spelled(args, note)}" for note in data["notes"]]
    if args.report:
        lines.append(f"  report: {args.report}/report.md (.html, .json)")
    _emit(args, data, "\n".join(lines))
    return 0


EPILOG_TUNE = """\
examples:
  quantlab tune                       # the embedded model: its calibration and held-out images
  quantlab tune model.onnx --data calib/ --eval-data heldout.npz --metric classification \\
      --max-drop 0.5 -o model.qdq.onnx --report reports/model-tune
  quantlab tune model.onnx --data calib/ --eval-data val/ --max-drop 1 --max-float-layers 8 \\
      --high-precision fp32 -o model.qdq.onnx

what it does: collects statistics once and picks per-tensor ranges with --method auto; scores the
all-INT8 model on --eval-data; if the metric drops more than --max-drop percentage points below
FP32 (top-1 accuracy when the data has labels, e.g. an .npz with x and y; top-1 agreement with FP32
without; mAP vs FP32 for detection), ranks every quantized layer by how much leaving it alone in
float recovers, and leaves the most sensitive in float, one at a time, re-measuring each step on
the whole evaluation set and reverting a step that did not help.

writes (-o X.qdq.onnx):
  X.qdq.onnx        TensorRT 10/11: no Q/DQ on the fallback layers, their compute in fp16
                    (--high-precision fp32 keeps it fp32: a strongly typed TensorRT 11 network
                    runs an fp32 op in fp32)
  X.cache           TensorRT <= 10: the ranges without the fallback layers' tensors; the summary
                    prints the trtexec --layerPrecisions line that goes with it
  X.quantlab.json   the table: per-tensor method, fallback list, the metric before and after
"""


def _add_tune_command(sub) -> None:
    tune = sub.add_parser("tune", help="INT8 within an accuracy budget: auto ranges, sensitivity, float fallback",
                          description="Calibrate with per-tensor auto ranges and leave the fewest layers in "
                                      "higher precision that keep the metric within --max-drop points of FP32.",
                          epilog=EPILOG_TUNE, formatter_class=argparse.RawDescriptionHelpFormatter)
    tune.add_argument("model", nargs="?", help="ONNX model (default: the embedded one)")
    tune.add_argument("--eval-data", metavar="PATH", help="evaluation data, not used for calibration (default for "
                      "the embedded model: its held-out set)")
    tune.add_argument("--eval-num-samples", type=_count(1), metavar="N", help="use N evaluation samples "
                      "(default: all)")
    tune.add_argument("--max-drop", type=_number, default=0.5, metavar="POINTS",
                      help="allowed drop of the metric against FP32, in percentage points (default 0.5)")
    tune.add_argument("--max-float-layers", type=_count(0), metavar="N",
                      help="leave at most N layers in float (default: no limit); the result says when the "
                      "budget was missed")
    tune.add_argument("--high-precision", choices=["fp16", "fp32"], default="fp16",
                      help="precision of the fallback layers in the Q/DQ model (default fp16)")
    tune.add_argument("--sensitivity", choices=["both", "float"], default="both",
                      help="score each layer alone in float and alone in INT8 (both, default) or only the "
                      "first (float: half the cost; the ranking uses it either way)")
    tune.add_argument("--ranking-samples", type=_count(1), default=300, metavar="N",
                      help="rank the layers' sensitivity on the first N evaluation samples (default 300); "
                      "every search step is measured on all of them")
    tune.add_argument("--auto-samples", type=_count(1), default=64, metavar="N",
                      help="calibration samples auto judges ranges on (default 64)")
    tune.add_argument("-o", "--output", metavar="QDQ_ONNX", help="Q/DQ model to write; the cache and table go "
                      "beside it (default: <model name>.tuned.qdq.onnx in the current folder)")
    tune.add_argument("--report", metavar="DIR", help="write the report (sensitivity, search path) here")
    tune.add_argument("--output-name", dest="outputs", action="append", default=[], metavar="NAME",
                      help="model output the metric reads (default: all)")
    tune.add_argument("--trt-version", default=".".join(map(str, DEFAULT_TRT_VERSION)),
                      help="TensorRT version in the cache header")
    tune.add_argument("--int8-arithmetic", choices=["tensorrt", "onnxruntime"], default="tensorrt",
                      help="as for compare (default tensorrt)")
    tune.add_argument("--allow-nonfinite", action="store_true", help="as for calibrate")
    tune.add_argument("--zero-amax", type=_number, metavar="VALUE", help="as for calibrate")
    _add_metric_arguments(tune)
    tune.add_argument("--json", action="store_true", help="print the JSON result")
    _add_data_arguments(tune)
    _add_collection_arguments(tune)
    _add_executor_arguments(tune)
    tune.set_defaults(func=cmd_tune, command_parser=tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from .tune.pipeline import summary_lines, tune

    if args.eval_data is None and args.model is not None:
        raise QuantlabError("tune needs --eval-data (samples not used for calibration) for a model of your own")
    calib = _data_spec(args)
    heldout = _eval_spec(args, calib)
    model_path = Path(args.model) if args.model else defaults.MODEL
    output = args.output or f"{model_path.stem}.tuned.qdq.onnx"
    with _executor(args) as executor:
        data = tune(args.model, calib, heldout, max_drop=args.max_drop, max_float_layers=args.max_float_layers,
                    high_precision=args.high_precision, output=output, report=args.report, outputs=args.outputs,
                    metric=args.metric, metric_params=_parse_params(args.metric_params, "--metric-param"),
                    auto_samples=args.auto_samples, sensitivity=args.sensitivity,
                    ranking_samples=args.ranking_samples, trt_version=parse_version(args.trt_version),
                    providers=args.provider, bins=args.bins, threads=args.threads,
                    int8_arithmetic=args.int8_arithmetic, allow_nonfinite=args.allow_nonfinite,
                    zero_amax=args.zero_amax, progress=not args.quiet, executor=executor)
        where = _executor_line(executor)
    lines = [_spelled(args, line) for line in summary_lines(data)]
    if where:
        lines.append(where)
    if args.report:
        lines.append(f"  report        : {args.report}/report.md (.html, .json)")
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .evaluation.sweep import sweep

    if args.eval_data is None and args.model is not None:
        raise QuantlabError("sweep needs --eval-data (held-out samples not used for calibration)")
    calib = _data_spec(args)
    heldout = _eval_spec(args, calib)
    with _executor(args) as executor:
        data = sweep(args.model, calib, heldout, report=args.report, pick=args.pick, outputs=args.output,
                     trt_version=parse_version(args.trt_version), providers=args.provider, bins=args.bins,
                     threads=args.threads, tensors=args.tensors, allow_nonfinite=args.allow_nonfinite,
                     zero_amax=args.zero_amax, int8_arithmetic=args.int8_arithmetic, metric=args.metric,
                     metric_params=_parse_params(args.metric_params, "--metric-param"), progress=not args.quiet,
                     executor=executor)
    lines = [f"sweep over {len(data['results'])} methods; ranked by {data['ranking_key']}"]
    for r in data["results"]:
        parts = [f"{label} {r[key]:.4f}" for label, key in (
            ("top-1", "int8_top1"), ("agreement", "top1_agreement"), ("SQNR dB", "sqnr_db")) if key in r]
        if r.get("score") is not None and r.get("score_name") not in ("int8_top1", "top1_agreement", "sqnr_db"):
            parts.append(f"{r['score_name']} {r['score']:.4f}")
        lines.append(f"  {r['rank']}. {r['method']:24s} " + ", ".join(parts))
    lines += [f"  {_spelled(args, note)}" for note in data["notes"]]
    if "picked" in data:
        lines.append(f"  picked {data['picked']['method']}: {data['picked']['cache']}, {data['picked']['qdq_model']}")
    if executor.name != "local":
        lines.append(f"  executor: {data['executor']['where']}; {data['executor']['ran']}")
    if args.report:
        lines.append(f"  report: {args.report}/report.md (.html, .json)")
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from .backends import tensorrt as backend

    graph = load_model(args.model)
    plan = backend.plan_for_print(args.trt_version, args.cache is not None, graph.model)
    command = backend.trtexec_command(args.model, args.output, plan, cache=args.cache, fp16=args.fp16)
    if args.print_trtexec:
        _emit(args, {"trtexec": command, "path": plan.path, "reason": plan.reason}, command)
        return 0
    if backend.installed_version() is None:
        raise QuantlabError(f"TensorRT is not installed (Python package 'tensorrt'); {backend.INSTALL_HINT}. "
                            f"Equivalent trtexec build: {command}")
    check_output(args.output)
    settings = backend.build_engine(args.model, args.output, cache=args.cache, fp16=args.fp16,
                                    workspace_bytes=args.workspace << 20)
    _emit(args, {"output": str(args.output), **asdict(settings)},
          f"built {args.output} ({settings.path} INT8, TensorRT {settings.trt_version}"
          + (f", {settings.calibrator} serving {settings.cache}" if settings.calibrator else "") + ")")
    return 0


def cmd_export_qdq(args: argparse.Namespace) -> int:
    from .atomic import write_bytes_atomic
    from .qdq import export_qdq

    check_output(args.output)
    graph = resolve_model(args.model)
    ranges = read_ranges(args.cache)
    weights = None
    if ranges.format == "quantlab":
        table = ranges.extra["table"]
        table.check_model(graph.sha256, graph.activations)
        weights = table.weights
    model, report = export_qdq(graph, ranges.amax, weights, exclude_nodes=args.exclude_nodes,
                               exclude_ops=args.exclude_ops, require_all=not args.allow_missing,
                               placement=args.placement)
    write_bytes_atomic(args.output, model.SerializeToString())
    data = {"output": str(args.output), "cache": str(args.cache), "cache_format": ranges.format,
            "quantized_activations": len(report.quantized_activations),
            "quantized_weights": len(report.quantized_weights),
            "unmatched_ranges": report.unmatched_ranges, "missing_ranges": report.missing_ranges,
            "skipped_nodes": report.skipped_nodes, "skipped_weights": report.skipped_weights,
            "notes": report.notes}
    text = [f"wrote {args.output}: Q/DQ on {len(report.quantized_activations)} activations and "
            f"{len(report.quantized_weights)} weights (per channel), ranges from {ranges.format} {args.cache}"]
    if report.unmatched_ranges:
        text.append(f"  {len(report.unmatched_ranges)} cache entries match no tensor of the model: "
                    + ", ".join(report.unmatched_ranges[:5]) + (" ..." if len(report.unmatched_ranges) > 5 else ""))
    if report.missing_ranges:
        text.append(f"  {len(report.missing_ranges)} quantizable tensors had no range and stay in float")
    if report.skipped_nodes:
        text.append(f"  {len(report.skipped_nodes)} nodes left in float on request")
    if report.skipped_weights:
        text.append(f"  {len(report.skipped_weights)} weights left in float:")
        text += [f"    {node}: {why}" for node, why in list(report.skipped_weights.items())[:5]]
    text += [f"  note: {note}" for note in report.notes]
    _emit(args, data, "\n".join(text))
    return 0


EPILOG_CACHE = """\
formats (detected from the content, not the file name): TensorRT calibration caches of every
vintage (TRT-<version>-<Algorithm> header, or TensorRT 4's bare '1'), ONNX Runtime's TensorRT-EP
tables (calibration.flatbuffers, calibration.cache, calibration.json) and quantlab tables.

examples:
  quantlab cache inspect model.cache
  quantlab cache lint model.cache --model model.onnx --trt-version 10.3
  quantlab cache diff old.cache new.cache
  quantlab cache convert calibration.flatbuffers --to trt --trt-version 10.3.0 -o model.cache
"""


def _add_cache_commands(sub) -> None:
    cache = sub.add_parser("cache", help="inspect, lint, diff and convert calibration caches",
                           description="Look inside calibration caches and tables, check them against "
                                       "a model and a TensorRT version, compare and convert them.",
                           epilog=EPILOG_CACHE, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = cache.add_subparsers(dest="verb", metavar="VERB", required=True)
    ins = verbs.add_parser("inspect", help="format, TensorRT version, algorithm, entries, amax statistics")
    ins.add_argument("file")
    ins.add_argument("--top", type=_count(0), default=5, help="how many largest/smallest ranges to list")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(func=cmd_cache_inspect, command_parser=ins)
    lint = verbs.add_parser("lint", help="find scales and names TensorRT would choke on "
                            "(exit 0 clean, 1 warnings, 2 errors)")
    lint.add_argument("file")
    lint.add_argument("--model", help="ONNX model the cache is meant for: check tensor names")
    lint.add_argument("--trt-version", help="TensorRT version that will read the cache, e.g. 8.6 or 10.3.0")
    lint.add_argument("--json", action="store_true", help="machine-readable output")
    lint.set_defaults(func=cmd_cache_lint, command_parser=lint)
    diff = verbs.add_parser("diff", help="per-tensor amax ratios between two caches or tables (any formats)")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.add_argument("--top", type=_count(0), default=10, help="how many largest disagreements to list")
    diff.add_argument("--tolerance", type=_number, default=0.01, help="relative difference counted as equal")
    diff.add_argument("--json", action="store_true", help="machine-readable output")
    diff.set_defaults(func=cmd_cache_diff, command_parser=diff)
    conv = verbs.add_parser("convert", help="convert between formats")
    conv.add_argument("file")
    conv.add_argument("--to", required=True, choices=list(FORMATS), help="output format")
    conv.add_argument("-o", "--output", required=True, help="output file")
    conv.add_argument("--trt-version", help="TensorRT version for the header (default: the source's, else "
                      + ".".join(map(str, DEFAULT_TRT_VERSION)) + ")")
    conv.add_argument("--trt-algorithm", help="header algorithm (default: the source's, else EntropyCalibration2)")
    conv.add_argument("--json", action="store_true", help="machine-readable output")
    conv.set_defaults(func=cmd_cache_convert, command_parser=conv)


def _emit(args: argparse.Namespace, data: dict, text: str) -> None:
    """Print the JSON result (--json), else the summary unless -q/--quiet asked for silence."""
    if getattr(args, "json", False):
        print(json.dumps(jsonable(data), indent=1))
    elif not getattr(args, "quiet", False):
        print(text)


def cmd_cache_inspect(args: argparse.Namespace) -> int:
    info = inspect_ranges(read_ranges(args.file), top=args.top)
    a = info["amax"]
    lines = [f"{info['file']}: {info['description']}"]
    if "header" in info:
        lines.append(f"  header     : {info['header']}  ({info['header_description']})")
    if "method" in info:
        lines.append(f"  method     : {info['method']} {info['params'] or ''}")
    lines.append(f"  entries    : {info['entries']}")
    if a["min"] is not None:
        lines.append(f"  amax       : min {a['min']:.6g}, median {a['median']:.6g}, max {a['max']:.6g}")
    lines.append(f"  degenerate : {a['zero']} zero, {a['negative']} negative, {a['infinite']} infinite, "
                 f"{a['nan']} NaN")
    for label, key in (("largest", "largest"), ("smallest", "smallest")):
        lines.append(f"  {label} ranges:")
        lines += [f"    {row['amax']:>12.6g}  {row['tensor']}" for row in info[key]]
    _emit(args, info, "\n".join(lines))
    return 0


def cmd_cache_lint(args: argparse.Namespace) -> int:
    graph = load_model(args.model) if args.model else None
    version = parse_version(args.trt_version) if args.trt_version else None
    report = lint_ranges(read_ranges(args.file), graph, version)
    lines = [f"{report['file']}: {report['status']} ({report['entries']} entries)"]
    for f in report["findings"]:
        lines.append(f"  {f['level']:7s} [{f['code']}] {f['message']}")
        shown = f.get("tensors", [])[:5]
        lines += [f"            {name}" for name in shown]
        if len(f.get("tensors", [])) > 5:
            lines.append(f"            ... and {len(f['tensors']) - 5} more (--json lists all)")
    _emit(args, report, "\n".join(lines))
    return report["exit_code"]


def cmd_cache_diff(args: argparse.Namespace) -> int:
    report = diff_ranges(read_ranges(args.a), read_ranges(args.b), top=args.top, tolerance=args.tolerance)
    r = report["ratio_b_over_a"]
    lines = [
        f"a: {report['a']['file']} ({report['a']['format']}, {report['a']['entries']} entries)",
        f"b: {report['b']['file']} ({report['b']['format']}, {report['b']['entries']} entries)",
        f"  common tensors   : {report['common']} ({report['identical']} identical, "
        f"{report['differing_beyond_tolerance']} differ by more than {report['tolerance']:.0%})",
        f"  only in a / b    : {len(report['only_in_a'])} / {len(report['only_in_b'])}",
    ]
    if r["median"] is not None:
        lines.append(f"  amax ratio b/a   : median {r['median']:.4g}, min {r['min']:.4g}, max {r['max']:.4g}"
                     f" ({r['undefined']} undefined)")
    if report["largest_disagreements"]:
        lines.append("  largest disagreements (ratio b/a):")
        lines += [f"    {row['ratio']:>10.4g}  {row['tensor']}" for row in report["largest_disagreements"]]
    for side in ("only_in_a", "only_in_b"):
        if report[side]:
            lines.append(f"  {side.replace('_', ' ')}: " + ", ".join(report[side][:5])
                         + (" ..." if len(report[side]) > 5 else ""))
    _emit(args, report, "\n".join(lines))
    return 0


def cmd_cache_convert(args: argparse.Namespace) -> int:
    source = read_ranges(args.file)
    header = header_for_conversion(source, args.trt_version, args.trt_algorithm) if args.to == "trt" else None
    path = write_ranges(args.output, args.to, source.amax, trt_header=header, like=source,
                        provenance={"file": str(args.file), "format": source.format})
    data = {"input": str(args.file), "input_format": source.format, "output": str(path),
            "output_format": args.to, "entries": len(source.amax), "header": header}
    _emit(args, data, f"converted {len(source.amax)} entries: {args.file} ({source.format}) -> {path} ({args.to})"
          + (f", header {header}" if header else ""))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    if args.list_methods:
        for info in list_calibrators():
            print(f"{info.name:12s} {info.target}  ({info.distribution})")
        print(f"{'auto':12s} quantlab.tune.auto:choose_ranges  (per tensor, among the methods above; "
              "--param samples=N)")
        return 0
    if args.list_formats:
        for info in list_dataset_adapters():
            print(f"{info.name:12s} {info.target}  ({info.distribution})")
        return 0
    trt_version = parse_version(args.trt_version)
    model_path = Path(args.model) if args.model else defaults.MODEL
    output = args.output or f"{model_path.stem}.cache"
    graph = resolve_model(args.model)
    with _executor(args) as executor:
        result = calibrate(
            graph, _data_spec(args), method=args.method, params=_parse_params(args.param),
            output=output, table=args.table, stats=args.stats, save_stats=args.save_stats,
            trt_version=trt_version, trt_algorithm=args.trt_algorithm, bins=args.bins, threads=args.threads,
            tensors=args.tensors, providers=args.provider, allow_nonfinite=args.allow_nonfinite,
            zero_amax=args.zero_amax, progress=not args.quiet, executor=executor,
        )
    table = result.table
    amax = sorted(table.activations.values())
    data = {"model": str(model_path), "method": table.method, "params": table.params,
            "cache": str(result.cache_path), "cache_header": table.provenance["trt_cache_header"],
            "table": str(result.table_path), "activations": len(table.activations), "weights": len(table.weights),
            "amax_min": amax[0], "amax_max": amax[-1], "samples": result.statistics.num_samples,
            "input_scaling": result.statistics.scaling, "notes": table.notes, "seconds": result.seconds,
            "tensors": args.tensors}
    lines = [f"calibrated {model_path.name} with {table.method} {table.params or ''}",
             f"  activations : {len(table.activations)} tensors, amax {amax[0]:.4g} .. {amax[-1]:.4g}",
             f"  weights     : {len(table.weights)} tensors, per output channel",
             f"  samples     : {result.statistics.num_samples}"]
    if result.statistics.scaling:
        lines.append(f"  input       : {_spelled(args, result.statistics.scaling)}")
    if "auto" in table.provenance:
        auto = table.provenance["auto"]
        counts = ", ".join(f"{label} {n}" for label, n in sorted(auto["chosen_counts"].items(), key=lambda i: -i[1]))
        lines.append(f"  chosen      : {counts} (per tensor, by the error it causes downstream on "
                     f"{auto['samples']} calibration samples; the table says which)")
        data["chosen_counts"] = auto["chosen_counts"]
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
    if _executor_line(executor) and not args.stats:
        lines.append(_executor_line(executor))
        data["executor"] = {"where": executor.describe(), "ran": executor.ran()}
    lines += [f"  time        : {result.seconds:.2f} s",
              f"  cache       : {result.cache_path}  ({table.provenance['trt_cache_header']})",
              f"  table       : {result.table_path}"]
    lines += [f"  note: {name}: {_spelled(args, note)}" for name, note in list(table.notes.items())[:5]]
    if args.tensors == "qdq":
        lines.append("  note: only the Q/DQ inputs were measured: use this cache with export-qdq (TensorRT 10/11 "
                     "explicit INT8); an implicit build (trtexec --int8 --calib) wants --tensors all")
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    check_output(args.output)
    with _executor(args) as executor:
        stats = collect_statistics(args.model, _data_spec(args), bins=args.bins, threads=args.threads,
                                   tensors=args.tensors, providers=args.provider, progress=not args.quiet,
                                   executor=executor)
    stats.save(args.output)
    data = {"output": str(args.output), "tensors": len(stats.tensors), "samples": stats.num_samples,
            "bins": stats.bins, "input_scaling": stats.scaling}
    text = f"collected {len(stats.tensors)} tensors over {stats.num_samples} samples -> {args.output}"
    if _executor_line(executor):
        text += "\n" + _executor_line(executor)
        data["executor"] = {"where": executor.describe(), "ran": executor.ran()}
    _emit(args, data, text)
    return 0


def cmd_merge_stats(args: argparse.Namespace) -> int:
    check_output(args.output)
    merged = merge_files(args.inputs)
    merged.save(args.output)
    data = {"inputs": list(args.inputs), "output": str(args.output), "samples": merged.num_samples,
            "tensors": len(merged.tensors)}
    _emit(args, data, f"merged {len(args.inputs)} files ({merged.num_samples} samples) -> {args.output}")
    return 0


def _flag_spelling(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Python parameter name -> this command's flag, for rendering library errors."""
    spelling = {}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs:
            spelling[action.dest] = longs[0]
    aliases = {"source": "data", "params": "param", "outputs": "output", "heldout": "eval_data"}
    for name, dest in aliases.items():
        if dest in spelling and name not in spelling:
            spelling[name] = spelling[dest]
    return spelling


def _spelled(args: argparse.Namespace, text: str) -> str:
    """Library text (Python parameter names) as this command's user reads it (its flags)."""
    return respell(text, _flag_spelling(args.command_parser))


def _inputs_of(args: argparse.Namespace) -> list:
    """Every file the command reads: no output may replace one of them."""
    found = []
    for key in ("model", "data", "eval_data", "cache", "file", "a", "b", "preprocess_config"):
        value = getattr(args, key, None)
        if isinstance(value, str):
            found.append(value)
    for key in ("stats", "inputs"):
        found += [v for v in (getattr(args, key, None) or []) if isinstance(v, str)]
    if getattr(args, "command", None) in ("calibrate", "collect", "compare", "sweep", "export-qdq") \
            and getattr(args, "model", None) is None:
        found.append(str(defaults.MODEL))
    return found


def _interrupted(verb: str, code: int) -> int:
    written = written_files()
    if written:
        print(f"quantlab: {verb}; wrote {', '.join(map(str, written))} before that; nothing else was written",
              file=sys.stderr)
    else:
        print(f"quantlab: {verb}; no output was written", file=sys.stderr)
    return code


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` and run the command: exit 0 done, 2 user error (one line), 130/143 interrupted."""
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        reset_written()
        with protect_inputs(_inputs_of(args)):
            code = args.func(args)
        sys.stdout.flush()
        return code
    except QuantlabError as exc:
        command_parser = getattr(args, "command_parser", parser)
        print(f"quantlab: error: {exc.render(_flag_spelling(command_parser))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted("interrupted", 130)
    except Terminated:
        return _interrupted("terminated", 143)
    except BrokenPipeError:
        # The reader went away (`quantlab ... | head -1`): not an error to report. Point stdout at
        # /dev/null so the interpreter's final flush does not fail again, and exit as a program
        # killed by SIGPIPE would (128 + 13), so a pipeline can still tell the output was cut.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console entry point (:mod:`quantlab.__main__` adds SIGTERM and import-time Ctrl-C)."""
    from .__main__ import main as entry

    return entry(argv)


if __name__ == "__main__":
    sys.exit(main())
