"""``quantlab compare``: FP32 vs the INT8 (Q/DQ) model of a cache on held-out data, with a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import QuantlabError
from ..evaluation.options import CompareOptions
from .args import (
    add_data_arguments,
    add_evaluation_arguments,
    add_qdq_arguments,
    count_type,
    data_spec,
    emit,
    eval_options,
    qdq_options,
    spelled,
)


def add_parser(sub) -> None:
    cmp_ = sub.add_parser("compare", help="FP32 vs INT8 (Q/DQ in ONNX Runtime) on held-out data, with a report",
                          description="Build the Q/DQ model from a cache or table, run it next to the FP32 "
                                      "model on held-out data and report accuracy, output fidelity, the "
                                      "worst layers, size, latency and whether integer kernels ran.",
                          epilog="examples:\n  quantlab compare model.onnx --cache model.cache --data heldout/ "
                                 "--report reports/model\n  quantlab compare      # embedded model, after "
                                 "'quantlab calibrate'\n  quantlab compare model.onnx --cache model.quantlab.json "
                                 "--data val.npz --metric detection --metric-param score_threshold=0.3\n"
                                 "  quantlab compare model.onnx --cache model.cache --data heldout/ "
                                 "--int8-arithmetic onnxruntime --tensor-samples 0",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    cmp_.add_argument("model", nargs="?", help="ONNX model (default: the embedded one)")
    cmp_.add_argument("--cache", metavar="FILE", help="ranges (any format; default for the embedded "
                      "model: ./fashion_mnist_cnn.cache from 'quantlab calibrate')")
    cmp_.add_argument("--report", metavar="DIR", help="write report.md/.html/.json and plots here")
    cmp_.add_argument("--output", action="append", default=[], metavar="NAME",
                      help="model output to compare (repeatable; default: all)")
    cmp_.add_argument("--worst", type=count_type(0), default=10, help="how many worst tensors to list (default 10)")
    add_qdq_arguments(cmp_)
    cmp_.add_argument("--backend", choices=["onnxruntime", "tensorrt"], default="onnxruntime",
                      help="run the INT8 model in ONNX Runtime (CPU, default) or as a TensorRT engine (GPU)")
    add_evaluation_arguments(cmp_, "--metric")
    cmp_.add_argument("--tensor-samples", type=count_type(0), default=32, metavar="N",
                      help="held-out samples the per-tensor errors are measured on (default 32; 0: skip)")
    cmp_.add_argument("--json", action="store_true", help="print the JSON report instead of the summary")
    add_data_arguments(cmp_, "held-out data (default: the embedded held-out Fashion-MNIST test images)")
    cmp_.set_defaults(func=run, command_parser=cmp_)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.compare import compare

    cache = args.cache
    if cache is None:
        if args.model is not None:
            raise QuantlabError("compare needs --cache for a model of your own")
        cache = "fashion_mnist_cnn.cache"
        if not Path(cache).exists():
            raise QuantlabError("no ./fashion_mnist_cnn.cache here: run 'quantlab calibrate' first, or pass --cache")
    result = compare(args.model, cache, data_spec(args), evaluation=eval_options(args, args.output),
                     qdq=qdq_options(args),
                     options=CompareOptions(args.backend, args.tensor_samples, args.worst), report=args.report,
                     progress=not args.quiet)
    data = result.data
    lines = [f"compared on {data['data']['samples']} held-out samples "
             f"(ranges: {data['ranges']['format']} {data['ranges']['file']})",
             f"  input: {spelled(args, data['data']['scaling'])}"]
    for o in data["outputs"]:
        parts = [f"{label} {o[key]:.4f}" for label, key in (
            ("top-1 FP32", "fp32_top1"), ("top-1 INT8", "int8_top1"), ("agreement", "top1_agreement"),
            ("cosine", "cosine_similarity"), ("SQNR dB", "sqnr_db")) if key in o]
        lines.append(f"  {o['output']}: " + ", ".join(parts))
    metric = data.get("metric", {})
    if metric.get("score") is not None:
        lines.append(f"  metric: {metric['metric']}, {metric.get('score_name', 'score')} {metric['score']:.4f}")
    if data["worst_tensors"]:
        worst = data["worst_tensors"][0]
        lines.append(f"  worst tensor: {worst['tensor']} ({worst['sqnr_db']:.1f} dB)")
    lines.append(f"  latency batch 1 (median): FP32 {data['latency']['fp32_ms']:.3f} ms, "
                 f"INT8 {data['latency']['int8_ms']:.3f} ms")
    lines.append(f"  INT8 arithmetic: {data['execution']['verdict']}")
    lines += [f"  {spelled(args, note)}" for note in data["notes"]]
    if args.report:
        lines.append(f"  report: {args.report}/report.md (.html, .json)")
    emit(args, data, "\n".join(lines))
    return 0
