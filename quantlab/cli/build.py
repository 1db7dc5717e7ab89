"""``quantlab build``: a TensorRT INT8 engine from a model and a cache, or from a Q/DQ model (needs TensorRT)."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from ..atomic import check_output
from ..errors import QuantlabError
from ..graph import load_model
from .args import count_type, emit


def add_parser(sub) -> None:
    bld = sub.add_parser("build", help="build a TensorRT INT8 engine (needs TensorRT and a GPU)",
                         description="Build a TensorRT INT8 engine: from an ONNX model plus a calibration "
                                     "cache (implicit INT8, TensorRT 8.x-10.x) or from a Q/DQ model (explicit "
                                     "INT8, TensorRT 8.x-11.x). Without TensorRT, prints the equivalent trtexec "
                                     "command.",
                         epilog="examples:\n  quantlab build model.onnx --cache model.cache -o model.int8.plan\n"
                                "  quantlab build model.qdq.onnx -o model.int8.plan\n"
                                "  quantlab build model.onnx --cache model.cache -o m.plan --print-trtexec "
                                "--trt-version 8.6", formatter_class=argparse.RawDescriptionHelpFormatter)
    bld.add_argument("model", help="ONNX model (FP32 with --cache, or a Q/DQ model)")
    bld.add_argument("--cache", metavar="FILE", help="TensorRT calibration cache (implicit INT8, TensorRT <= 10)")
    bld.add_argument("-o", "--output", required=True, metavar="PLAN", help="engine file to write")
    bld.add_argument("--fp16", action="store_true", help="allow FP16 fallback for layers without INT8 kernels")
    bld.add_argument("--workspace", type=count_type(1), default=1024, metavar="MiB",
                     help="builder workspace (default 1024)")
    bld.add_argument("--trt-version", help="for --print-trtexec without TensorRT: the target version "
                     "(default: the installed one, else 10.3.0)")
    bld.add_argument("--print-trtexec", action="store_true", help="print the equivalent trtexec command and exit")
    bld.add_argument("--json", action="store_true", help="print the result as JSON instead of the summary")
    bld.set_defaults(func=run, command_parser=bld)


def run(args: argparse.Namespace) -> int:
    from ..backends import tensorrt as backend

    graph = load_model(args.model)
    plan = backend.plan_for_print(args.trt_version, args.cache is not None, graph.model)
    command = backend.trtexec_command(args.model, args.output, plan, cache=args.cache, fp16=args.fp16)
    if args.print_trtexec:
        emit(args, {"trtexec": command, "path": plan.path, "reason": plan.reason}, command)
        return 0
    if backend.installed_version() is None:
        raise QuantlabError(f"TensorRT is not installed (Python package 'tensorrt'); {backend.INSTALL_HINT}. "
                            f"Equivalent trtexec build: {command}")
    check_output(args.output)
    settings = backend.build_engine(args.model, args.output, cache=args.cache, fp16=args.fp16,
                                    workspace_bytes=args.workspace << 20)
    emit(args, {"output": str(args.output), **asdict(settings)},
          f"built {args.output} ({settings.path} INT8, TensorRT {settings.trt_version}"
          + (f", {settings.calibrator} serving {settings.cache}" if settings.calibrator else "") + ")")
    return 0
