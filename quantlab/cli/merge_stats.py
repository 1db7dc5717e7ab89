"""``quantlab merge-stats``: statistics files of data shards -> one, equal to one collection over all."""

from __future__ import annotations

import argparse

from ..atomic import check_output
from ..statistics import merge_files
from .args import emit

EPILOG = """\
examples:
  quantlab merge-stats shard0.npz shard1.npz -o all.npz
  quantlab merge-stats node*/stats.npz -o all.npz --json        # files of many machines
  quantlab calibrate model.onnx --stats all.npz --method entropy -o model.cache
"""


def add_parser(sub) -> None:
    mrg = sub.add_parser("merge-stats", help="merge statistics files of data shards",
                         description="Merge statistics of shards; the result equals one "
                                     "collection over all of the data, byte for byte.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    mrg.add_argument("inputs", nargs="+", metavar="FILE")
    mrg.add_argument("-o", "--output", required=True, metavar="FILE")
    mrg.add_argument("--json", action="store_true", help="print the result as JSON instead of the summary")
    mrg.set_defaults(func=run, command_parser=mrg)


def run(args: argparse.Namespace) -> int:
    check_output(args.output)
    merged = merge_files(args.inputs)
    merged.save(args.output)
    data = {"inputs": list(args.inputs), "output": str(args.output), "samples": merged.num_samples,
            "tensors": len(merged.tensors)}
    emit(args, data, f"merged {len(args.inputs)} files ({merged.num_samples} samples) -> {args.output}\n"
                     f"  next: quantlab calibrate MODEL --stats {args.output} --method entropy   # ranges from them")
    return 0
