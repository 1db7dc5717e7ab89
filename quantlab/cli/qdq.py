"""``quantlab qdq lint|plan``: check any Q/DQ ONNX model, and the precision TensorRT 11 will give it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import defaults
from ..errors import QuantlabError
from ..graph import load_model
from ..qdq.lint import lint
from ..qdq.plan import precision_plan
from .args import count_type, emit

EPILOG = """\
Works on any Q/DQ ONNX model: quantlab's, ModelOpt's, a PyTorch QAT export. Without MODEL, the
Q/DQ model of the embedded default that 'quantlab calibrate --format qdq' writes in the current
folder (./fashion_mnist_cnn.qdq.onnx).

examples:
  quantlab qdq lint model.qdq.onnx                  # exit 0 clean, 1 warnings, 2 errors
  quantlab qdq lint modelopt.int8.onnx --json
  quantlab qdq plan model.qdq.onnx                  # INT8 / fp16 / fp32 per expected fusion, FLOP shares
  quantlab qdq plan model.qdq.onnx --input-shape x:1,3,640,640 --limit 0
"""

LINT_EPILOG = """\
examples:
  quantlab qdq lint model.qdq.onnx
  quantlab qdq lint modelopt.int8.onnx --json
"""

PLAN_EPILOG = """\
The plan is what TensorRT 11 is expected to do with the file (a strongly typed network runs INT8
between Q/DQ pairs and every other op in its ONNX type); fusion groups follow TensorRT's documented
fusions and are expectations, not an engine's layer list ('quantlab engine inspect LAYERS --model M'
holds them against a real engine's trtexec --exportLayerInfo).

examples:
  quantlab qdq plan model.qdq.onnx
  quantlab qdq plan model.qdq.onnx --input-shape x:1,3,640,640 --json
"""


def add_parser(sub) -> None:
    qdq = sub.add_parser("qdq", help="lint any Q/DQ ONNX model, and show the precision TensorRT 11 will give it",
                         description="Check a Q/DQ ONNX model against what TensorRT can fuse, and show the "
                                     "precision each layer is expected to run in.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = qdq.add_subparsers(dest="verb", metavar="VERB", required=True)
    check = verbs.add_parser("lint", help="Q/DQ TensorRT cannot fuse, fp32 regions, unquantized layers "
                             "(exit 0 clean, 1 warnings, 2 errors)", epilog=LINT_EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    plan = verbs.add_parser("plan", help="the precision of each layer on TensorRT 11 and the FLOPs in each",
                            epilog=PLAN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    for verb, run in ((check, run_lint), (plan, run_plan)):
        verb.add_argument("model", nargs="?", help="Q/DQ ONNX model (default: ./fashion_mnist_cnn.qdq.onnx)")
        verb.add_argument("--input-shape", action="append", default=[], metavar="NAME:D,D,...",
                          help="shape to count FLOPs at, for an input with symbolic dimensions (repeatable; "
                          "default: batch 1, other symbolic dimensions 224)")
        verb.add_argument("--json", action="store_true", help="machine-readable output")
        verb.set_defaults(func=run, command_parser=verb)
    plan.add_argument("--limit", type=count_type(0), default=40,
                      help="fusion groups to list, the largest by FLOPs (0: only the headline; default 40)")


def _model(args: argparse.Namespace):
    path = Path(args.model) if args.model else Path(f"{defaults.MODEL.stem}.qdq.onnx")
    if not args.model and not path.exists():
        raise QuantlabError(f"no model given and no {path} here; write the embedded model's Q/DQ model first with "
                            "'quantlab calibrate --format qdq', or name a Q/DQ ONNX model")
    return path, load_model(path).model


def _shapes(args: argparse.Namespace) -> dict:
    shapes = {}
    for text in args.input_shape:
        name, _, dims = text.rpartition(":")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise QuantlabError(f"--input-shape {text!r} is not NAME:D,D,... (e.g. images:1,3,640,640)",
                                params=("input_shape",)) from None
        if not name or any(d <= 0 for d in shapes[name]):
            raise QuantlabError(f"--input-shape {text!r} needs an input name and positive dimensions",
                                params=("input_shape",))
    return shapes


def run_lint(args: argparse.Namespace) -> int:
    path, model = _model(args)
    result = lint(model, input_shapes=_shapes(args))
    emit(args, {"model": str(path), **result.to_dict()}, f"{path}\n{result.summary()}")
    return result.exit_code


def run_plan(args: argparse.Namespace) -> int:
    path, model = _model(args)
    plan = precision_plan(model, input_shapes=_shapes(args))
    text = plan.headline() if args.limit == 0 else plan.table(args.limit)
    if plan.assumptions:
        text += "\n" + "\n".join(f"assumed: {a}" for a in dict.fromkeys(plan.assumptions))
    emit(args, {"model": str(path), **plan.to_dict()}, f"{path}\n{text}")
    return 0
