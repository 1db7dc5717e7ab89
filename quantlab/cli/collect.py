"""``quantlab collect``: the FP32 model over data -> a statistics file, calibrated later with ``--stats``."""

from __future__ import annotations

import argparse

from ..atomic import check_output
from ..calibrate import collect_statistics
from .args import (
    add_collection_arguments,
    add_data_arguments,
    add_executor_arguments,
    collect_options,
    command_line,
    data_spec,
    emit,
    executor_for,
    executor_line,
)

EPILOG = """\
examples:
  quantlab collect model.onnx --data shard0/ -o shard0.npz          # one shard of the data...
  quantlab collect model.onnx --data shard1/ -o shard1.npz --executor processes
  quantlab calibrate model.onnx --stats shard0.npz shard1.npz --method mse -o model.cache   # ...calibrated offline
"""


def add_parser(sub) -> None:
    col = sub.add_parser("collect", help="collect activation statistics into a file",
                         description="Run the FP32 model over data and save per-tensor histograms; "
                                     "calibrate them later with 'calibrate --stats'.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    col.add_argument("model", nargs="?", help="ONNX model (default: the embedded one)")
    col.add_argument("-o", "--output", required=True, metavar="FILE", help="statistics file (.npz)")
    col.add_argument("--json", action="store_true", help="print the result as JSON instead of the summary")
    add_data_arguments(col)
    add_collection_arguments(col)
    add_executor_arguments(col)
    col.set_defaults(func=run, command_parser=col)


def run(args: argparse.Namespace) -> int:
    check_output(args.output)
    with executor_for(args) as executor:
        stats = collect_statistics(args.model, data_spec(args), collect_options(args), progress=not args.quiet,
                                   executor=executor)
    stats.save(args.output)
    data = {"output": str(args.output), "tensors": len(stats.tensors), "samples": stats.num_samples,
            "bins": stats.bins, "input_scaling": stats.scaling}
    text = f"collected {len(stats.tensors)} tensors over {stats.num_samples} samples -> {args.output}"
    if executor_line(executor):
        text += "\n" + executor_line(executor)
        data["executor"] = {"where": executor.describe(), "ran": executor.ran()}
    text += ("\n  next: " + command_line("calibrate", args, f"--stats {args.output} --method entropy", data=False)
             + "   # ranges from these histograms, without running the model again")
    emit(args, data, text)
    return 0
