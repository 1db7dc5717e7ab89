"""``quantlab sweep``: every method on one collection, each evaluated the same way, ranked."""

from __future__ import annotations

import argparse

from ..formats.trtcache import parse_version
from .args import (
    add_calibrate_and_judge_arguments,
    add_trt_version_argument,
    collect_options,
    command_line,
    data_spec,
    emit,
    eval_options,
    eval_spec,
    executor_for,
    range_policy,
    spelled,
)


def add_parser(sub) -> None:
    swp = sub.add_parser("sweep", help="calibrate with every method, evaluate each, rank them",
                         description="Collect statistics once, calibrate max, entropy, percentile 99.9/99.99/"
                                     "99.999, mse and auto on them, evaluate each Q/DQ model on held-out data and "
                                     "rank them.",
                         epilog="examples:\n  quantlab sweep                     # the embedded model and its data\n"
                                "  quantlab sweep model.onnx --data calib/ --eval-data heldout/ "
                                "--report reports/model-sweep --pick best\n"
                                "  quantlab sweep model.onnx --data calib/ --eval-data heldout/ --executor processes "
                                "--rank-by fidelity",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    swp.add_argument("model", nargs="?", help="ONNX model (default: the embedded one)")
    swp.add_argument("--report", metavar="DIR", help="write the ranking report here")
    swp.add_argument("--pick", choices=["best"], help="write the winner's cache, table and Q/DQ model "
                     "into the report folder")
    swp.add_argument("--output", action="append", default=[], metavar="NAME", help="model output to rank on")
    add_trt_version_argument(swp, "the picked cache's")
    swp.add_argument("--json", action="store_true", help="print the JSON result")
    add_calibrate_and_judge_arguments(swp, "--rank-by")
    swp.set_defaults(func=run, command_parser=swp)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.sweep import SweepOutput, sweep

    calib = data_spec(args)
    heldout = eval_spec(args, calib)
    with executor_for(args) as executor:
        data = sweep(args.model, calib, heldout, evaluation=eval_options(args, args.output),
                     collect=collect_options(args), policy=range_policy(args),
                     output=SweepOutput(args.report, args.pick, parse_version(args.trt_version)),
                     progress=not args.quiet, executor=executor)
    lines = [f"sweep over {len(data['results'])} methods; ranked by {data['ranking_key']}"]
    reference = data["results"][0] if data["results"] else {}
    baseline = [f"{label} {reference[key]:.4f}" for label, key in (("top-1", "fp32_top1"), ("top-5", "fp32_top5"))
                if key in reference]
    lines.append("     FP32 (the reference)     " + (", ".join(baseline) if baseline else
                                                  "agreement 1.0000, SQNR dB inf (by definition)"))
    for r in data["results"]:
        parts = [f"{label} {r[key]:.4f}" for label, key in (
            ("top-1", "int8_top1"), ("agreement", "top1_agreement"), ("SQNR dB", "sqnr_db")) if key in r]
        if r.get("score") is not None and r.get("score_name") not in ("int8_top1", "top1_agreement", "sqnr_db"):
            parts.append(f"{r['score_name']} {r['score']:.4f}")
        lines.append(f"  {r['rank']}. {r['method']:24s} " + ", ".join(parts))
    lines += [f"  {spelled(args, note)}" for note in data["notes"]]
    if "picked" in data:
        lines.append(f"  picked {data['picked']['method']}: {data['picked']['cache']}, {data['picked']['qdq_model']}")
    if executor.name != "local":
        lines.append(f"  executor: {data['executor']['where']}; {data['executor']['ran']}")
    if args.report:
        lines.append(f"  report: {args.report}/report.md (.html, .json)")
    if "picked" not in data and data["results"]:
        lines.append("  next: " + command_line("sweep", args, "--report " + (args.report or "reports/sweep"),
                                               "--pick best")
                     + f"   # writes {data['results'][0]['method']}'s cache, table and Q/DQ model")
    emit(args, data, "\n".join(lines))
    return 0
