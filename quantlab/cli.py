"""``quantlab`` command line: a thin layer over :mod:`quantlab.calibrate`.

Every user error ends as one line on stderr (``quantlab: error: ...``) and exit code 2;
nothing half-written is left behind (all files are written atomically, outputs are checked
for writability before the long work starts).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from . import __version__, defaults
from .calibrate import DataSpec, calibrate, collect_statistics, resolve_model
from .errors import QuantlabError
from .formats.trtcache import DEFAULT_TRT_VERSION, parse_version
from .histogram import DEFAULT_BINS
from .plugins import list_calibrators, list_dataset_adapters
from .preprocess import Preprocess
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
(MNIST format, .gz or not) or module:function returning samples. Images are scaled by 1/255,
then --mean/--std, and laid out as the model's input wants (NCHW/NHWC from its shape).

outputs: the TensorRT calibration cache (-o; header TRT-<version>-<algorithm>, set with
--trt-version/--trt-algorithm to match the TensorRT that reads it) and quantlab's JSON table
(--table; default <cache stem>.quantlab.json) with per-tensor amax/scale, per-channel weight
amax and provenance.
"""


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", metavar="PATH", help="calibration data (default: the embedded "
                       "Fashion-MNIST calibration images when no model is given)")
    group.add_argument("--data-format", metavar="NAME", help="force a dataset adapter "
                       "(see --list-formats); detected from PATH by default")
    group.add_argument("--num-samples", type=int, metavar="N",
                       help="use N samples, a fixed random subset chosen by --seed (default: all)")
    group.add_argument("--batch-size", type=int, default=32, metavar="N",
                       help="samples per ONNX Runtime run (default 32; results do not depend on it)")
    group.add_argument("--seed", type=int, default=0, help="seed of the sample subset (default 0)")
    group.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"), help="resize images first")
    group.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="centre-crop images")
    group.add_argument("--scale", type=float, help="multiply pixels by this (default 1/255 for "
                       "8-bit images, 1 otherwise)")
    group.add_argument("--mean", type=float, nargs="+", help="per-channel mean subtracted after scaling")
    group.add_argument("--std", type=float, nargs="+", help="per-channel std divided by after the mean")
    group.add_argument("--layout", choices=["NCHW", "NHWC"], help="input layout (default: the model's)")
    group.add_argument("--preprocess-config", metavar="JSON", help="the options above as a JSON "
                       'file, e.g. {"resize": [256, 256], "crop": [224, 224], "mean": [...]}')
    group.add_argument("--provider", action="append", metavar="NAME",
                       help="ONNX Runtime execution provider (repeatable; default CPUExecutionProvider)")
    group.add_argument("--bins", type=int, default=DEFAULT_BINS,
                       help=f"histogram bins, a power of two (default {DEFAULT_BINS})")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")


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


def _parse_params(pairs: Optional[Sequence[str]]) -> dict:
    params = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise QuantlabError(f"--param wants NAME=VALUE, got {pair!r}")
        try:
            params[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            params[key] = value
    return params


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    cal.add_argument("--method", default="entropy", help="calibration method (default entropy; "
                     "see --list-methods)")
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
    cal.add_argument("--zero-amax", type=float, metavar="VALUE",
                     help="amax for tensors that were all zero (default: refuse them)")
    cal.add_argument("--list-methods", action="store_true", help="list installed methods and exit")
    cal.add_argument("--list-formats", action="store_true", help="list dataset adapters and exit")
    _add_data_arguments(cal)
    cal.set_defaults(func=cmd_calibrate)

    col = sub.add_parser("collect", help="collect activation statistics into a file",
                         description="Run the FP32 model over data and save per-tensor histograms; "
                                     "calibrate them later with 'calibrate --stats'.")
    col.add_argument("model", nargs="?", help="ONNX model (default: the embedded one)")
    col.add_argument("-o", "--output", required=True, metavar="FILE", help="statistics file (.npz)")
    _add_data_arguments(col)
    col.set_defaults(func=cmd_collect)

    mrg = sub.add_parser("merge-stats", help="merge statistics files of data shards",
                         description="Merge statistics of shards; the result equals one "
                                     "collection over all of the data, byte for byte.")
    mrg.add_argument("inputs", nargs="+", metavar="FILE")
    mrg.add_argument("-o", "--output", required=True, metavar="FILE")
    mrg.set_defaults(func=cmd_merge_stats)
    return parser


def cmd_calibrate(args: argparse.Namespace) -> int:
    if args.list_methods:
        for info in list_calibrators():
            print(f"{info.name:12s} {info.target}  ({info.distribution})")
        return 0
    if args.list_formats:
        for info in list_dataset_adapters():
            print(f"{info.name:12s} {info.target}  ({info.distribution})")
        return 0
    try:
        trt_version = parse_version(args.trt_version)
    except ValueError as exc:
        raise QuantlabError(str(exc)) from exc
    model_path = Path(args.model) if args.model else defaults.MODEL
    output = args.output or f"{model_path.stem}.cache"
    graph = resolve_model(args.model)
    result = calibrate(
        graph, _data_spec(args), method=args.method, params=_parse_params(args.param),
        output=output, table=args.table, stats=args.stats, save_stats=args.save_stats,
        trt_version=trt_version, trt_algorithm=args.trt_algorithm, bins=args.bins,
        providers=args.provider, allow_nonfinite=args.allow_nonfinite, zero_amax=args.zero_amax,
        progress=not args.quiet,
    )
    if not args.quiet:
        table = result.table
        amax = sorted(table.activations.values())
        print(textwrap.dedent(f"""\
            calibrated {model_path.name} with {table.method} {table.params or ''}
              activations : {len(table.activations)} tensors, amax {amax[0]:.4g} .. {amax[-1]:.4g}
              weights     : {len(table.weights)} tensors, per output channel
              samples     : {result.statistics.num_samples}
              time        : {result.seconds:.2f} s
              cache       : {result.cache_path}  ({table.provenance['trt_cache_header']})
              table       : {result.table_path}"""))
        for name, note in list(table.notes.items())[:5]:
            print(f"  note: {name}: {note}")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from .atomic import check_writable

    check_writable(args.output)
    stats = collect_statistics(args.model, _data_spec(args), bins=args.bins,
                               providers=args.provider, progress=not args.quiet)
    stats.save(args.output)
    if not args.quiet:
        print(f"collected {len(stats.tensors)} tensors over {stats.num_samples} samples -> {args.output}")
    return 0


def cmd_merge_stats(args: argparse.Namespace) -> int:
    from .atomic import check_writable

    check_writable(args.output)
    merged = merge_files(args.inputs)
    merged.save(args.output)
    print(f"merged {len(args.inputs)} files ({merged.num_samples} samples) -> {args.output}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except QuantlabError as exc:
        print(f"quantlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quantlab: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
