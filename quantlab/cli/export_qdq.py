"""``quantlab export-qdq``: a Q/DQ ONNX model (TensorRT 10/11 explicit INT8) from any cache or table."""

from __future__ import annotations

import argparse

from ..atomic import check_output, write_bytes_atomic
from ..formats.ranges import read_ranges
from ..qdq import QdqOptions, export_qdq
from ..workload import resolve_model
from .args import emit

EPILOG = """\
examples:
  quantlab export-qdq model.onnx --cache model.cache -o model.qdq.onnx          # any cache: TensorRT 4 to 10
  quantlab export-qdq model.onnx --cache model.quantlab.json -o model.qdq.onnx --placement residual
  quantlab export-qdq model.onnx --cache calibration.flatbuffers -o model.qdq.onnx --exclude-op Gemm
"""


def add_parser(sub) -> None:
    qdq = sub.add_parser("export-qdq", help="write a Q/DQ ONNX model (TensorRT 10/11 explicit INT8) "
                         "from any cache or table",
                         description="Insert QuantizeLinear/DequantizeLinear nodes from a calibration "
                                     "cache or table of any format (TensorRT cache of any vintage, ONNX "
                                     "Runtime table, quantlab table): the path from a legacy cache to a "
                                     "TensorRT 11 engine.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    qdq.set_defaults(func=run, command_parser=qdq)


def run(args: argparse.Namespace) -> int:
    check_output(args.output)
    graph = resolve_model(args.model)
    ranges = read_ranges(args.cache)
    weights = None
    if ranges.format == "quantlab":
        table = ranges.extra["table"]
        table.check_model(graph.sha256, graph.activations)
        weights = table.weights
    model, report = export_qdq(graph, ranges.amax, weights,
                               QdqOptions(args.exclude_nodes, args.exclude_ops, args.placement),
                               require_all=not args.allow_missing)
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
    emit(args, data, "\n".join(text))
    return 0
