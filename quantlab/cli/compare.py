"""``quantlab compare``: FP32 vs the INT8 (Q/DQ) model of a cache on held-out data, with a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import QuantlabError
from ..evaluation.options import CompareOptions
from ..evaluation.roundtrip import DIVERGENCE_DB, EngineFiles
from .args import (
    add_data_arguments,
    add_evaluation_arguments,
    add_qdq_arguments,
    command_line,
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
                                 "--int8-arithmetic onnxruntime --tensor-samples 0\n"
                                 "  quantlab compare model.onnx --cache model.cache --data heldout/ "
                                 "--first-divergence\n\n"
                                 "the engine round trip (docs/gpu-round-trip.md):\n"
                                 "  quantlab export-inputs model.onnx --data heldout/ -o inputs.json\n"
                                 "  # GPU host: polygraphy run model.qdq.onnx --trt --load-inputs inputs.json "
                                 "--save-outputs engine.json\n"
                                 "  quantlab compare model.onnx --qdq model.qdq.onnx --data heldout/ "
                                 "--engine-outputs engine.json --layer-info layers.json",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    cmp_.add_argument("model", nargs="?", help="ONNX model (default: the embedded one)")
    source = cmp_.add_mutually_exclusive_group()
    source.add_argument("--cache", metavar="FILE", help="ranges (any format; default for the embedded "
                        "model: ./fashion_mnist_cnn.cache from 'quantlab calibrate')")
    source.add_argument("--qdq", metavar="MODEL", help="a Q/DQ ONNX model (any tool's), compared as written instead "
                        "of one built from --cache: the file an engine was built from")
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
    cmp_.add_argument("--first-divergence", nargs="?", type=float, const=DIVERGENCE_DB, metavar="DB",
                      help="name the first tensors (graph order) whose SQNR falls below DB (default "
                      f"{DIVERGENCE_DB:g}) and those that lose most against their own inputs")
    cmp_.add_argument("--json", action="store_true", help="print the JSON report instead of the summary")
    trt = cmp_.add_argument_group("a real engine's files (from the GPU host; docs/gpu-round-trip.md)")
    trt.add_argument("--engine-outputs", metavar="JSON", help="Polygraphy --save-outputs or trtexec --exportOutput "
                     "of the engine run on 'quantlab export-inputs' samples: held against FP32 and the emulation")
    trt.add_argument("--runner", metavar="NAME", help="which runner of a Polygraphy file holding several "
                     "(a prefix is enough)")
    trt.add_argument("--layer-info", metavar="JSON", help="trtexec --exportLayerInfo (or a --verbose build log): "
                     "what ran in INT8, against the precision plan")
    trt.add_argument("--profile", metavar="JSON", help="trtexec --exportProfile of the same engine (with --layer-info)")
    add_data_arguments(cmp_, "held-out data (default: the embedded held-out Fashion-MNIST test images)")
    cmp_.set_defaults(func=run, command_parser=cmp_)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.compare import compare

    cache = args.qdq or args.cache
    if cache is None:
        if args.model is not None:
            raise QuantlabError("compare needs --cache (ranges) or --qdq (a Q/DQ model) for a model of your own")
        cache = "fashion_mnist_cnn.cache"
        if not Path(cache).exists():
            raise QuantlabError("no ./fashion_mnist_cnn.cache here: run 'quantlab calibrate' first, or pass --cache")
    result = compare(args.model, cache, data_spec(args), evaluation=eval_options(args, args.output),
                     qdq=qdq_options(args),
                     options=CompareOptions(args.backend, args.tensor_samples, args.worst, args.first_divergence),
                     engine=EngineFiles(args.engine_outputs, args.runner, args.layer_info, args.profile),
                     report=args.report, progress=not args.quiet)
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
    lines += _roundtrip_lines(data)
    lines += [f"  {spelled(args, note)}" for note in data["notes"]]
    if args.report:
        lines.append(f"  report: {args.report}/report.md (.html, .json)")
    lines += _next_lines(args, data, cache)
    emit(args, data, "\n".join(lines))
    return 0


def _next_lines(args: argparse.Namespace, data: dict, cache: str) -> list[str]:
    """What to do next: find better ranges and where INT8 goes wrong when it loses, else build."""
    first = data["outputs"][0]
    lost = (first["fp32_top1"] - first["int8_top1"] > 0.01 if "int8_top1" in first
            else first.get("sqnr_db", 99.0) < DIVERGENCE_DB)
    if lost:
        sweep = command_line("sweep", args, "" if args.model is None else "--eval-data HELDOUT",
                             "--pick best --report reports/sweep", data=False)
        where = "" if args.first_divergence is not None else (
            "\n  next: " + command_line("compare", args, f"--qdq {args.qdq}" if args.qdq else
                                         f"--cache {args.cache}" if args.cache else "", "--first-divergence",
                                         "--data HELDOUT" if args.model and not args.data else "")
            + "   # the first tensors where INT8 goes wrong")
        hint = "" if args.model is None else "  (--data: the calibration data)"
        return [f"  next: {sweep}   # every method ranked on held-out data, the best one written{hint}{where}"]
    if args.qdq:
        return [f"  next: quantlab export-inputs{' ' + args.model if args.model else ''} -o inputs.json   # samples "
                f"to run the engine of {args.qdq} on (docs/gpu-round-trip.md)"]
    return [f"  next: quantlab export-qdq{' ' + args.model if args.model else ''} --cache {cache} "
            "-o model.qdq.onnx   # the TensorRT 11 model; or trtexec --int8 --calib with the cache on TensorRT <= 10"]


def _roundtrip_lines(data: dict) -> list[str]:
    """The summary lines of the engine's files and of the first divergence, when asked for."""
    lines = []
    engine = data.get("engine")
    if engine:
        lines.append(f"  engine ({engine['tool']} {engine['runner']}, {engine['samples']} samples):")
        for vs, agree in zip(engine["vs_fp32"]["outputs"], engine["emulation_vs_engine"]["outputs"]):
            keys = (("top-1", "int8_top1"), ("agreement", "top1_agreement"), ("SQNR dB", "sqnr_db"))
            parts = [f"{label} {vs[key]:.4f}" for label, key in keys if key in vs]
            lines.append(f"    {vs['output']}: vs FP32 " + ", ".join(parts)
                         + f"; emulation vs engine SQNR {agree['sqnr_db']:.2f} dB, max abs err "
                         f"{agree['max_abs_error']:.3g}")
    info = data.get("layer_info")
    if info:
        lines.append(f"  layer info: {info['headline']}")
        if info["nodes"]:
            ran = sum(1 for n in info["nodes"] if n["engine"] == "int8")
            lines.append(f"    Conv/Gemm/MatMul in INT8: {ran} of {len(info['nodes'])}; "
                         f"{len(info['differs_from_plan'])} differ from the plan")
        lines += [f"    note: {note}" for note in info["notes"]]
    found = data.get("first_divergence")
    if found:
        first = found["below_threshold"][:1]
        drop = found["largest_drops"][:1]
        if first:
            r = first[0]
            lines.append(f"  first divergence below {found['threshold_db']:g} dB: {r['tensor']} ({r['op_type']} "
                         f"{r['node']}, {r['sqnr_db']:.1f} dB)")
        else:
            lines.append(f"  no tensor falls below {found['threshold_db']:g} dB")
        if drop:
            r = drop[0]
            lines.append(f"  largest drop: {r['tensor']} ({r['op_type']} {r['node']}): {r['input_sqnr_db']:.1f} -> "
                         f"{r['sqnr_db']:.1f} dB")
    return lines
