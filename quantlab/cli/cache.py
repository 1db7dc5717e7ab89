"""``quantlab cache inspect|lint|diff|convert``: look inside, check, compare and convert caches and tables."""

from __future__ import annotations

import argparse

from ..cachetool import diff_ranges, inspect_ranges, lint_ranges
from ..formats.ranges import FORMATS, header_for_conversion, read_ranges, write_ranges
from ..formats.trtcache import DEFAULT_TRT_VERSION, parse_version
from ..graph import load_model
from .args import count_type, emit, number_type

EPILOG = """\
formats (detected from the content, not the file name): TensorRT calibration caches of every
vintage (TRT-<version>-<Algorithm> header, or TensorRT 4's bare '1'), ONNX Runtime's TensorRT-EP
tables (calibration.flatbuffers, calibration.cache, calibration.json) and quantlab tables.

examples:
  quantlab cache inspect model.cache
  quantlab cache lint model.cache --model model.onnx --trt-version 10.3
  quantlab cache diff old.cache new.cache
  quantlab cache convert calibration.flatbuffers --to trt --trt-version 10.3.0 -o model.cache
"""


def add_parser(sub) -> None:
    cache = sub.add_parser("cache", help="inspect, lint, diff and convert calibration caches",
                           description="Look inside calibration caches and tables, check them against "
                                       "a model and a TensorRT version, compare and convert them.",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = cache.add_subparsers(dest="verb", metavar="VERB", required=True)
    ins = verbs.add_parser("inspect", help="format, TensorRT version, algorithm, entries, amax statistics")
    ins.add_argument("file")
    ins.add_argument("--top", type=count_type(0), default=5, help="how many largest/smallest ranges to list")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(func=run_inspect, command_parser=ins)
    lint = verbs.add_parser("lint", help="find scales and names TensorRT would choke on "
                            "(exit 0 clean, 1 warnings, 2 errors)")
    lint.add_argument("file")
    lint.add_argument("--model", help="ONNX model the cache is meant for: check tensor names")
    lint.add_argument("--trt-version", help="TensorRT version that will read the cache, e.g. 8.6 or 10.3.0")
    lint.add_argument("--json", action="store_true", help="machine-readable output")
    lint.set_defaults(func=run_lint, command_parser=lint)
    diff = verbs.add_parser("diff", help="per-tensor amax ratios between two caches or tables (any formats)")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.add_argument("--top", type=count_type(0), default=10, help="how many largest disagreements to list")
    diff.add_argument("--tolerance", type=number_type, default=0.01, help="relative difference counted as equal")
    diff.add_argument("--json", action="store_true", help="machine-readable output")
    diff.set_defaults(func=run_diff, command_parser=diff)
    conv = verbs.add_parser("convert", help="convert between formats")
    conv.add_argument("file")
    conv.add_argument("--to", required=True, choices=list(FORMATS), help="output format")
    conv.add_argument("-o", "--output", required=True, help="output file")
    conv.add_argument("--trt-version", help="TensorRT version for the header (default: the source's, else "
                      + ".".join(map(str, DEFAULT_TRT_VERSION)) + ")")
    conv.add_argument("--trt-algorithm", help="header algorithm (default: the source's, else EntropyCalibration2)")
    conv.add_argument("--json", action="store_true", help="machine-readable output")
    conv.set_defaults(func=run_convert, command_parser=conv)


def run_inspect(args: argparse.Namespace) -> int:
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
    emit(args, info, "\n".join(lines))
    return 0


def run_lint(args: argparse.Namespace) -> int:
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
    emit(args, report, "\n".join(lines))
    return report["exit_code"]


def run_diff(args: argparse.Namespace) -> int:
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
    emit(args, report, "\n".join(lines))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    source = read_ranges(args.file)
    header = header_for_conversion(source, args.trt_version, args.trt_algorithm) if args.to == "trt" else None
    path = write_ranges(args.output, args.to, source.amax, trt_header=header, like=source,
                        provenance={"file": str(args.file), "format": source.format})
    data = {"input": str(args.file), "input_format": source.format, "output": str(path),
            "output_format": args.to, "entries": len(source.amax), "header": header}
    emit(args, data, f"converted {len(source.amax)} entries: {args.file} ({source.format}) -> {path} ({args.to})"
          + (f", header {header}" if header else ""))
    return 0
