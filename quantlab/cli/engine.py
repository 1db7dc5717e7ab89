"""``quantlab engine inspect``: what a real TensorRT engine ran, read from its layer info."""

from __future__ import annotations

import argparse

from .args import count_type, emit

EPILOG = """\
Reads trtexec --exportLayerInfo JSON (detailed, from --profilingVerbosity=detailed, or names only;
TensorRT 7 to 11 layouts) or the 'Engine Layer Information' block of a trtexec --verbose log.
With --model (the Q/DQ ONNX the engine was built from), each Conv/Gemm/MatMul is matched to the
engine layer that ran it and held against 'quantlab qdq plan'.

examples:
  quantlab engine inspect layers.json
  quantlab engine inspect layers.json --model model.qdq.onnx --profile profile.json
  quantlab engine inspect build.log --json
"""


def add_parser(sub) -> None:
    eng = sub.add_parser("engine", help="read what a real TensorRT engine ran (trtexec --exportLayerInfo)",
                         description="Read the files trtexec and Polygraphy write on the GPU host.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = eng.add_subparsers(dest="verb", metavar="VERB", required=True)
    cmd = verbs.add_parser("inspect", help="per engine layer: precision, fused ONNX nodes, reformats; with --model, "
                           "where the engine departs from the precision plan", epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.add_argument("layer_info", metavar="LAYERS", help="trtexec --exportLayerInfo JSON or a --verbose build log")
    cmd.add_argument("--model", metavar="ONNX", help="the (Q/DQ) ONNX model the engine was built from")
    cmd.add_argument("--profile", metavar="JSON", help="trtexec --exportProfile of the same engine: time per layer")
    cmd.add_argument("--limit", type=count_type(0), default=40, help="layers to list (0: all; default 40)")
    cmd.add_argument("--json", action="store_true", help="machine-readable output")
    cmd.set_defaults(func=run_inspect, command_parser=cmd)


def run_inspect(args: argparse.Namespace) -> int:
    from ..graph import load_model
    from ..roundtrip.inspect import inspect, report_lines
    from ..roundtrip.layers import read_layer_info
    from ..roundtrip.trtexec import read_profile

    model = load_model(args.model).model if args.model else None
    profile = read_profile(args.profile)[-1] if args.profile else None
    result = inspect(read_layer_info(args.layer_info), model, profile)
    emit(args, result.to_dict(), f"{args.layer_info}\n" + "\n".join(report_lines(result, args.limit)))
    return 0
