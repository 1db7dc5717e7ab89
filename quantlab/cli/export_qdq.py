"""``quantlab export-qdq``: a typed Q/DQ ONNX model (TensorRT 10/11 explicit INT8) from any cache or table."""

from __future__ import annotations

import argparse

from ..atomic import check_output, write_bytes_atomic
from ..errors import QuantlabError
from ..formats.ranges import read_ranges
from ..qdq import MeasuredRange, export_qdq, measured_ranges
from ..statistics import merge_files
from ..workload import resolve_model
from .args import add_qdq_arguments, emit, qdq_options, qdq_summary

EPILOG = """\
examples:
  quantlab export-qdq model.onnx --cache model.cache -o model.qdq.onnx          # any cache: TensorRT 4 to 10
  quantlab export-qdq model.onnx --cache model.quantlab.json -o model.qdq.onnx --placement residual
  quantlab export-qdq model.onnx --cache calibration.flatbuffers -o model.qdq.onnx --high-precision fp32
  quantlab export-qdq model.onnx --cache model.cache --stats model.stats.npz -o model.qdq.onnx --no-rule pooling

the typed remainder: every op outside INT8 gets --high-precision (fp16 by default); an op stays fp32
where a tensor it reads or writes measured max |x| > 16376 (fp16 max / 4), had > 10 % of its values
below fp16's smallest normal, or (reductions, normalisations) sums values that could pass that bound.
Ranges come from the table's measurements (quantlab calibrate records them), from --stats, or else
from the cache's thresholds (a lower bound on max |x|). Graph input and output types never change.
"""


def add_parser(sub) -> None:
    qdq = sub.add_parser("export-qdq", help="write a typed Q/DQ ONNX model (TensorRT 10/11 explicit INT8) "
                         "from any cache or table",
                         description="Insert QuantizeLinear/DequantizeLinear pairs where TensorRT fuses them, "
                                     "from a calibration cache or table of any format (TensorRT cache of any "
                                     "vintage, ONNX Runtime table, quantlab table), and type the rest fp16 "
                                     "from measured ranges: the path from a legacy cache to a TensorRT 11 "
                                     "engine.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    qdq.add_argument("model", nargs="?", help="ONNX model (default: the embedded one)")
    qdq.add_argument("--cache", required=True, metavar="FILE", help="ranges: cache or table, any format")
    qdq.add_argument("-o", "--output", required=True, metavar="ONNX", help="Q/DQ model to write")
    qdq.add_argument("--stats", nargs="+", metavar="FILE", help="statistics files (quantlab collect/--save-stats) "
                     "that type the remainder from measured ranges")
    add_qdq_arguments(qdq)
    qdq.add_argument("--allow-missing", action="store_true",
                     help="leave quantizable tensors without a range in float instead of failing")
    qdq.add_argument("--json", action="store_true", help="machine-readable report")
    qdq.set_defaults(func=run, command_parser=qdq)


def run(args: argparse.Namespace) -> int:
    check_output(args.output)
    graph = resolve_model(args.model)
    ranges = read_ranges(args.cache)
    weights = measured = biases = None
    source = "cache thresholds (lower bounds)"
    if ranges.format == "quantlab":
        table = ranges.extra["table"]
        table.check_model(graph.sha256, graph.activations)
        weights, biases = table.weights, table.biases
        if "measured" in table.provenance:
            measured = {name: MeasuredRange.from_dict(value) for name, value in table.provenance["measured"].items()}
            source = "the table's measured ranges"
    if args.stats:
        stats = merge_files(args.stats)
        if stats.model_sha256 != graph.sha256:
            raise QuantlabError(f"the statistics in {args.stats[0]} are of another model (SHA-256 "
                                f"{stats.model_sha256[:12]}..., this model {graph.sha256[:12]}...)")
        measured = measured_ranges(stats.tensors)
        source = "measured ranges from " + ", ".join(args.stats)
    model, report = export_qdq(graph, ranges.amax, weights, qdq_options(args), require_all=not args.allow_missing,
                               measured=measured, biases=biases)
    write_bytes_atomic(args.output, model.SerializeToString())
    data = {"output": str(args.output), "cache": str(args.cache), "cache_format": ranges.format,
            "unmatched_ranges": report.unmatched_ranges, "missing_ranges": report.missing_ranges,
            "skipped_nodes": report.skipped_nodes, "skipped_weights": report.skipped_weights,
            "notes": report.notes, "typed_from": source, **report.to_dict()}
    lines = qdq_summary(report, f"wrote {args.output}", f"{ranges.format} {args.cache}", source)
    lines.append(f"  next: quantlab qdq plan {args.output}   # the precision TensorRT 11 will give each layer")
    emit(args, data, "\n".join(lines))
    return 0
