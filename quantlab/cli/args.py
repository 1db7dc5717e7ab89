"""Argument groups and helpers shared by the commands, and the flags -> option objects mapping.

Polygraphy-style: each group (data and preprocessing, statistics, executor, metric) is added by
one function and read back by one, so every command spells a setting the same way and turns it
into the same option object of the Python API.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Sequence
from typing import Optional

from ..calibrate import TENSOR_SCOPES, CollectOptions, RangePolicy
from ..device import with_device
from ..errors import QuantlabError, respell
from ..evaluation.options import EvalOptions
from ..executors import EXECUTORS
from ..formats.trtcache import DEFAULT_TRT_VERSION
from ..histogram import DEFAULT_BINS, check_bins
from ..preprocess import Preprocess
from ..qdq import HIGH_PRECISIONS, PLACEMENTS, QdqOptions
from ..qdq.placement import RULE_NAMES
from ..report import jsonable
from ..workload import DataSpec


def count_type(minimum: int):
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


def number_type(text: str) -> float:
    """An argparse type: a finite float."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"wants a finite number, got {text!r}")
    return value


def bins_type(text: str) -> int:
    """An argparse type: histogram bins, a power of two in the supported range."""
    value = count_type(1)(text)
    try:
        check_bins(value)
    except QuantlabError as exc:
        raise argparse.ArgumentTypeError(exc.render({"bins": "the value"})) from None
    return value


def add_data_arguments(parser: argparse.ArgumentParser, data_help: Optional[str] = None) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", metavar="PATH", help=data_help or "calibration data (default: the embedded "
                       "Fashion-MNIST calibration images when no model is given)")
    group.add_argument("--data-format", metavar="NAME", help="force a dataset adapter "
                       "(see --list-formats); detected from PATH by default")
    group.add_argument("--num-samples", type=count_type(1), metavar="N",
                       help="use N samples, a fixed random subset chosen by --seed (default: all)")
    group.add_argument("--batch-size", type=count_type(1), default=32, metavar="N",
                       help="samples per ONNX Runtime run (default 32; results do not depend on it)")
    group.add_argument("--seed", type=count_type(0), default=0, help="seed of the sample subset (default 0)")
    group.add_argument("--resize", type=count_type(1), nargs=2, metavar=("H", "W"), help="resize images first")
    group.add_argument("--crop", type=count_type(1), nargs=2, metavar=("H", "W"), help="centre-crop images")
    group.add_argument("--scale", type=number_type, help="multiply samples by this (default: 1/255 for integer "
                       "samples, taken as 8-bit pixels, whatever their shape; float samples are fed as they are)")
    group.add_argument("--mean", type=number_type, nargs="+", help="per-channel mean subtracted after scaling")
    group.add_argument("--std", type=number_type, nargs="+", help="per-channel std divided by after the mean")
    group.add_argument("--layout", choices=["NCHW", "NHWC"], help="input layout (default: the model's)")
    group.add_argument("--preprocess-config", metavar="JSON", help="the options above as a JSON "
                       'file, e.g. {"resize": [256, 256], "crop": [224, 224], "mean": [...]}')
    group.add_argument("--provider", action="append", metavar="NAME",
                       help="ONNX Runtime execution provider (repeatable; default CPUExecutionProvider; "
                       "CUDAExecutionProvider needs onnxruntime-gpu)")
    group.add_argument("--device", metavar="DEV",
                       help="run the graphs in torch on this device instead of ONNX Runtime: cuda, cuda:N (or cpu); "
                       "activations are histogrammed on the device and only histograms come back; the INT8 "
                       "models run there with the same Q/DQ arithmetic. Needs torch and onnx2torch "
                       "(pip install 'quantlab[device]'). Default: the CPU, with ONNX Runtime")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")


def add_collection_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the commands that collect statistics (calibrate, collect, sweep)."""
    group = parser.add_argument_group("statistics")
    group.add_argument("--bins", type=bins_type, default=DEFAULT_BINS,
                       help=f"histogram bins, a power of two from 256 to 65536 (default {DEFAULT_BINS})")
    group.add_argument("--tensors", choices=TENSOR_SCOPES, default="all",
                       help="activations to measure: all (default; what TensorRT 8.x-10.x implicit INT8 builds "
                       "read from a cache) or qdq (only the inputs of Conv/ConvTranspose/Gemm/MatMul, all that a "
                       "Q/DQ model for TensorRT 10/11 needs; faster)")
    group.add_argument("--threads", type=count_type(1), metavar="N",
                       help="threads filling the histograms (default: every CPU this process may use); "
                       "results do not depend on it")


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the work runs (collect, calibrate, sweep, tune): the results are the same, byte for byte."""
    group = parser.add_argument_group("executor (the results are the same, byte for byte, on every one)")
    group.add_argument("--executor", choices=EXECUTORS, default="local",
                       help="local (default): this process; processes: a pool of processes on this machine; "
                       "ray: a Ray cluster (pip install 'quantlab[ray]')")
    group.add_argument("--workers", type=count_type(1), metavar="N",
                       help="tasks at a time (default: one per CPU of this machine, or of the Ray cluster); "
                       "each gets its share of the CPUs")
    group.add_argument("--address", metavar="ADDR",
                       help="the Ray cluster: auto, host:6379 or ray://head:10001 (default: $RAY_ADDRESS, else a "
                       "Ray instance started for this command); every node must see the model and data paths")


def executor_for(args: argparse.Namespace):
    """The executor the command's flags ask for (a context manager: its workers stop at the end)."""
    from ..executors import get_executor

    return get_executor(args.executor, args.workers, args.address)


def executor_line(executor) -> Optional[str]:
    """The summary line that says how many workers ran and where (none for the default, local)."""
    if executor.name == "local":
        return None
    return f"  executor    : {executor.describe()}; {executor.ran()}"


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """What to do with degenerate tensors (calibrate, sweep, tune): read back by :func:`range_policy`."""
    group = parser.add_argument_group("degenerate tensors (refused by default, never written silently)")
    group.add_argument("--allow-nonfinite", action="store_true",
                       help="calibrate tensors that had NaN/Inf from their finite values")
    group.add_argument("--zero-amax", type=number_type, metavar="VALUE",
                       help="amax for tensors that were all zero (default: refuse them)")


def add_eval_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The held-out data of sweep and tune (read as --data is): read back by :func:`eval_spec`."""
    group = parser.add_argument_group("evaluation data (held out: not used for calibration)")
    group.add_argument("--eval-data", metavar="PATH", help="held-out data (default for the embedded model: its "
                       "held-out set)")
    group.add_argument("--eval-num-samples", type=count_type(1), metavar="N",
                       help="use N held-out samples (default: all)")


def add_trt_version_argument(parser: argparse.ArgumentParser, written: str) -> None:
    """--trt-version of the cache header a command writes (``written`` says which cache), read back
    with :func:`~quantlab.formats.trtcache.parse_version`."""
    parser.add_argument("--trt-version", default=".".join(map(str, DEFAULT_TRT_VERSION)),
                        help=f"TensorRT version in {written} header (default %(default)s)")


def add_calibrate_and_judge_arguments(parser: argparse.ArgumentParser, *metric_flags: str) -> None:
    """The groups of the commands that calibrate on --data and judge on --eval-data (sweep, tune):
    evaluation, data, evaluation data, statistics, degenerate tensors, executor."""
    add_evaluation_arguments(parser, *metric_flags)
    add_data_arguments(parser)
    add_eval_data_arguments(parser)
    add_collection_arguments(parser)
    add_policy_arguments(parser)
    add_executor_arguments(parser)


def add_evaluation_arguments(parser: argparse.ArgumentParser, *metric_flags: str) -> None:
    """How INT8 is judged (compare, sweep, tune): the arithmetic and the metric, read back by
    :func:`eval_options`."""
    parser.add_argument("--int8-arithmetic", choices=["tensorrt", "onnxruntime"], default="tensorrt",
                        help="tensorrt (default): the Q/DQ graph as written, TensorRT's int8 x int8 -> int32 "
                        "arithmetic to float rounding; onnxruntime: ONNX Runtime's own CPU integer kernels, for "
                        "deployment on ONNX Runtime")
    add_metric_arguments(parser, *metric_flags)


def add_metric_arguments(parser: argparse.ArgumentParser, *flags: str) -> None:
    parser.add_argument("--metric", *[f for f in flags if f != "--metric"], dest="metric", default="auto",
                        metavar="NAME", help="metric plugin: classification, detection, dense, fidelity, "
                        "module:Class or file.py:Class (default auto: chosen from the outputs' shapes; "
                        "sweep ranks methods by its score)")
    parser.add_argument("--metric-param", dest="metric_params", action="append", metavar="NAME=VALUE",
                        help="metric parameter, e.g. score_threshold=0.3 for detection (repeatable)")


def add_qdq_arguments(parser: argparse.ArgumentParser) -> None:
    """Where Q/DQ pairs stand and what type the rest has (export-qdq, calibrate -o X.qdq.onnx, compare):
    read back by :func:`qdq_options`."""
    group = parser.add_argument_group("Q/DQ model (TensorRT 10/11 explicit INT8; see docs/qdq.md)")
    group.add_argument("--placement", choices=PLACEMENTS, default="tensorrt",
                       help="tensorrt: every placement rule, as TensorRT fuses (default); compute: the inputs of "
                       "Conv/Gemm/MatMul only; residual: those and residual skip inputs")
    group.add_argument("--no-rule", dest="disabled_rules", action="append", default=[], metavar="RULE",
                       choices=RULE_NAMES, help="switch one placement rule off (repeatable): "
                       + ", ".join(RULE_NAMES))
    group.add_argument("--high-precision", choices=HIGH_PRECISIONS, default="fp16",
                       help="type of every op outside INT8 (default fp16; fp32 kept per op where the measured "
                       "ranges say fp16 is unsafe, with the reason in the table)")
    group.add_argument("--exclude-node", dest="exclude_nodes", action="append", default=[], metavar="NAME",
                       help="keep this layer out of INT8 (repeatable)")
    group.add_argument("--exclude-op", dest="exclude_ops", action="append", default=[], metavar="TYPE",
                       help="keep every layer of this op type out of INT8 (e.g. Gemm)")


def qdq_options(args: argparse.Namespace) -> QdqOptions:
    return QdqOptions(args.exclude_nodes, args.exclude_ops, args.placement, args.disabled_rules, args.high_precision)


def data_spec(args: argparse.Namespace) -> DataSpec:
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


def eval_spec(args: argparse.Namespace, calib: DataSpec) -> DataSpec:
    """The evaluation data of sweep and tune: --eval-data, read as the calibration data is; a model
    of one's own has no default held-out set."""
    if args.eval_data is None and args.model is not None:
        raise QuantlabError(f"{args.command} needs --eval-data (held-out samples not used for calibration) "
                            "for a model of your own")
    return DataSpec(args.eval_data, args.data_format, calib.preprocess, args.eval_num_samples, args.batch_size,
                    args.seed)


def parse_params(pairs: Optional[Sequence[str]], flag: str = "--param") -> dict:
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


def emit(args: argparse.Namespace, data: dict, text: str) -> None:
    """Print the JSON result (--json), else the summary unless -q/--quiet asked for silence."""
    if getattr(args, "json", False):
        print(json.dumps(jsonable(data), indent=1))
    elif not getattr(args, "quiet", False):
        print(text)


def flag_spelling(parser: argparse.ArgumentParser) -> dict[str, str]:
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


def spelled(args: argparse.Namespace, text: str) -> str:
    """Library text (Python parameter names) as this command's user reads it (its flags)."""
    return respell(text, flag_spelling(args.command_parser))


def providers(args: argparse.Namespace) -> Optional[tuple[str, ...]]:
    """--provider and --device as the providers the library takes (a device is one of them)."""
    return with_device(args.provider, getattr(args, "device", None))


def collect_options(args: argparse.Namespace) -> CollectOptions:
    """The statistics group as :class:`~quantlab.calibrate.CollectOptions`."""
    return CollectOptions(bins=args.bins, tensors=getattr(args, "tensors", "all"),
                          providers=providers(args), threads=args.threads)


def range_policy(args: argparse.Namespace) -> RangePolicy:
    """--allow-nonfinite and --zero-amax as a :class:`~quantlab.calibrate.RangePolicy`."""
    return RangePolicy(allow_nonfinite=args.allow_nonfinite, zero_amax=args.zero_amax)


def eval_options(args: argparse.Namespace, outputs: Sequence[str] = ()) -> EvalOptions:
    """The metric group, --int8-arithmetic and --provider as :class:`~quantlab.evaluation.options.EvalOptions`."""
    return EvalOptions(outputs=tuple(outputs), metric=args.metric,
                       metric_params=parse_params(args.metric_params, "--metric-param"),
                       int8_arithmetic=getattr(args, "int8_arithmetic", "tensorrt"),
                       providers=providers(args))


def qdq_summary(report, headline: str, ranges_from: str, typed_from: str) -> list[str]:
    """The summary lines of a Q/DQ export (:class:`~quantlab.qdq.QdqReport`), as export-qdq and
    calibrate -o X.qdq.onnx print them."""
    rules = ", ".join(f"{rule} {count}" for rule, count in report.applied.items())
    text = [f"{headline}: Q/DQ on {len(report.quantized_activations)} activations and "
            f"{len(report.quantized_weights)} weights (per channel), ranges from {ranges_from}",
            f"  placement   : {report.placement} ({rules})",
            f"  types       : {report.summary()}" + (f" (typed from {typed_from})" if report.high_precision != "fp32"
                                                      else "")]
    if report.unmeasured and report.high_precision == "fp16":
        text.append(f"  note: {report.unmeasured} tensors had no measured range and are {report.high_precision}; "
                    "calibrate with --tensors all (or pass --stats) to decide them from data")
    if report.float_layers:
        shown = "; ".join(f"{node} ({why})" for node, why in list(report.float_layers.items())[:3])
        text.append(f"  left float  : {len(report.float_layers)} small layers: {shown}")
    for tensor, shared in list(report.shared_scales.items())[:3]:
        text.append(f"  shared scale: {tensor} takes amax {shared['amax']:.4g} (own {shared['own_amax']:.4g}) "
                    f"with the other inputs of its Concat")
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
    counts = report.precision_counts()
    if report.high_precision == "fp16" and counts and counts.get("fp32", 0) > 0.5 * sum(counts.values()):
        text.append("  warning: the measured ranges keep most ops in fp32 (fp16 would overflow or underflow); "
                    "consider --high-precision bf16 (fp32's range) or fp32")
    text += [f"  note: {note}" for note in report.notes]
    return text


def command_line(command: str, args: argparse.Namespace, *parts: str, data: bool = True) -> str:
    """A ``quantlab`` command line for the next step: the same model (when one was given) and, with
    ``data``, the same ``--data``/``--eval-data`` (when not the default), plus ``parts``."""
    words = ["quantlab", command]
    if getattr(args, "model", None):
        words.append(shlex.quote(str(args.model)))
    for flag in ("data", "eval_data") if data else ():
        if getattr(args, flag, None):
            words += [f"--{flag.replace('_', '-')}", shlex.quote(str(getattr(args, flag)))]
    return " ".join(words + [p for p in parts if p])
