"""``quantlab tune``: INT8 within an accuracy budget - auto ranges, sensitivity, float fallback."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import defaults
from ..formats.trtcache import parse_version
from .args import (
    add_calibrate_and_judge_arguments,
    add_trt_version_argument,
    collect_options,
    count_type,
    data_spec,
    emit,
    eval_options,
    eval_spec,
    executor_for,
    executor_line,
    number_type,
    range_policy,
    spelled,
)

EPILOG = """\
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


def add_parser(sub) -> None:
    tune = sub.add_parser("tune", help="INT8 within an accuracy budget: auto ranges, sensitivity, float fallback",
                          description="Calibrate with per-tensor auto ranges and leave the fewest layers in "
                                      "higher precision that keep the metric within --max-drop points of FP32.",
                          epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    tune.add_argument("model", nargs="?", help="ONNX model (default: the embedded one)")
    tune.add_argument("--max-drop", type=number_type, default=0.5, metavar="POINTS",
                      help="allowed drop of the metric against FP32, in percentage points (default 0.5)")
    tune.add_argument("--max-float-layers", type=count_type(0), metavar="N",
                      help="leave at most N layers in float (default: no limit); the result says when the "
                      "budget was missed")
    tune.add_argument("--high-precision", choices=["fp16", "fp32"], default="fp16",
                      help="precision of the fallback layers in the Q/DQ model (default fp16)")
    tune.add_argument("--sensitivity", choices=["both", "float"], default="both",
                      help="score each layer alone in float and alone in INT8 (both, default) or only the "
                      "first (float: half the cost; the ranking uses it either way)")
    tune.add_argument("--ranking-samples", type=count_type(1), default=300, metavar="N",
                      help="rank the layers' sensitivity on the first N evaluation samples (default 300); "
                      "every search step is measured on all of them")
    tune.add_argument("--auto-samples", type=count_type(1), default=64, metavar="N",
                      help="calibration samples auto judges ranges on (default 64)")
    tune.add_argument("-o", "--output", metavar="QDQ_ONNX", help="Q/DQ model to write; the cache and table go "
                      "beside it (default: <model name>.tuned.qdq.onnx in the current folder)")
    tune.add_argument("--report", metavar="DIR", help="write the report (sensitivity, search path) here")
    tune.add_argument("--output-name", dest="outputs", action="append", default=[], metavar="NAME",
                      help="model output the metric reads (default: all)")
    add_trt_version_argument(tune, "the cache's")
    tune.add_argument("--json", action="store_true", help="print the JSON result")
    add_calibrate_and_judge_arguments(tune)
    tune.set_defaults(func=run, command_parser=tune)


def run(args: argparse.Namespace) -> int:
    from ..tune.options import Budget, SearchOptions, TuneOutput
    from ..tune.pipeline import summary_lines, tune

    calib = data_spec(args)
    heldout = eval_spec(args, calib)
    model_path = Path(args.model) if args.model else defaults.MODEL
    output = args.output or f"{model_path.stem}.tuned.qdq.onnx"
    with executor_for(args) as executor:
        data = tune(args.model, calib, heldout,
                    budget=Budget(args.max_drop, args.max_float_layers, args.high_precision),
                    search=SearchOptions(args.sensitivity, args.ranking_samples, args.auto_samples),
                    evaluation=eval_options(args, args.outputs), collect=collect_options(args),
                    policy=range_policy(args), output=TuneOutput(output, args.report, parse_version(args.trt_version)),
                    progress=not args.quiet, executor=executor)
        where = executor_line(executor)
    lines = [spelled(args, line) for line in summary_lines(data)]
    if where:
        lines.append(where)
    if args.report:
        lines.append(f"  report        : {args.report}/report.md (.html, .json)")
    emit(args, data, "\n".join(lines))
    return 0
