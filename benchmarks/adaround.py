"""Does adaptive rounding of the INT8 weights (AdaRound) pay at INT8 per channel? Measured, not assumed.

    python benchmarks/adaround.py [--models fashion ppocrv5_cls orinet mtcnn_onet] [--iterations 1000]
    # -> reports/adaround.md and .json

For each model and each of two range tables (entropy, and max: the common default and the method
that clips least), three INT8 models are scored on the held-out split of the accuracy league
(benchmarks/accuracy_league.py: the embedded model's test images, crops of other source images for
the corpus) in TensorRT-faithful arithmetic: nearest rounding (what quantlab exports), and AdaRound
(Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"): per quantized
Conv/Gemm, in graph order, the rounding of each weight (down, or up) is learned so that the layer's
output on the first ``--samples`` calibration samples, its input fake-quantized with the table's
range, matches the FP32 layer's output on the FP32 input; the soft rounding h(V) = clip(sigmoid(V)
* 1.2 - 0.1, 0, 1) starts at the fractional part, a regulariser anneals it to 0 or 1 (beta 20 -> 2),
Adam, ``--iterations`` steps. The per-channel scales stay max |w| / 127 (each channel's largest weight
keeps its rounding), so the learned integers deploy as ordinary int8 initializers with their
DequantizeLinear: the experiment writes the AdaRound weights as q * scale into the float model and
exports it through quantlab's own Q/DQ export, which recovers q exactly.

Kept as a benchmark, not a feature, until the numbers say it pays (see the report's verdict).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from accuracy_league import workload_files  # noqa: E402
from tune import score_models  # noqa: E402

from quantlab.weights import per_channel_amax, quantize_weight  # noqa: E402

ZETA, GAMMA = 1.1, -0.1
REPORT = ROOT / "reports" / "adaround"


def layer_function(node: onnx.NodeProto, torch):
    """(x, w) -> the layer's output without bias, in torch, for a Conv (1-D/2-D) or Gemm/MatMul; None if
    the node uses something this experiment does not model."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    functional = torch.nn.functional
    if node.op_type == "Conv":
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            return None
        pads = list(attrs.get("pads", []))
        groups, strides, dilations = attrs.get("group", 1), attrs.get("strides"), attrs.get("dilations")

        def conv(x, w):
            rank = w.dim() - 2
            if rank not in (1, 2):
                raise ValueError("conv rank")
            padding = pads or [0] * (2 * rank)
            # ONNX pads: all begins, then all ends; F.pad wants the last axis first
            flat = [p for axis in reversed(range(rank)) for p in (padding[axis], padding[axis + rank])]
            x = functional.pad(x, flat)
            op = functional.conv1d if rank == 1 else functional.conv2d
            return op(x, w, None, strides or 1, 0, dilations or 1, groups)

        return conv
    if node.op_type == "Gemm":
        if attrs.get("transA", 0):
            return None
        return (lambda x, w: x @ w.T) if attrs.get("transB", 0) else (lambda x, w: x @ w)
    if node.op_type == "MatMul":
        return lambda x, w: x @ w
    return None


def fake_quantize(x, amax: float, torch):
    scale = torch.tensor(np.float32(amax / 127.0))
    return torch.clamp(torch.round(x / scale), -128, 127) * scale


def adaround_layer(w: np.ndarray, axis: int, x_in, target, function, iterations: int, torch,
                   lam: float = 0.01) -> tuple[np.ndarray, np.ndarray, dict]:
    """The AdaRound integers of one weight, its per-channel max-abs scales, and how the loss went."""
    q_near, scales = quantize_weight(w, per_channel_amax(w, axis), axis)
    shape = [1] * w.ndim
    shape[axis % w.ndim] = -1
    s = torch.from_numpy(scales.reshape(shape))
    wt = torch.from_numpy(w)
    ratio = wt / s
    floor = torch.floor(ratio)
    rest = (ratio - floor).clamp(1e-4, 1 - 1e-4)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)
    fixed = torch.from_numpy(np.abs(q_near.astype(np.int32)) == 127)  # each channel's largest keeps its rounding
    optimizer = torch.optim.Adam([v], lr=1e-2)

    def soft(v):
        return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def weight(h):
        q = torch.where(fixed, torch.from_numpy(q_near.astype(np.float32)), torch.clamp(floor + h, -127, 127))
        return q * s

    with torch.no_grad():
        near_loss = float(((function(x_in, torch.from_numpy(q_near.astype(np.float32)) * s) - target) ** 2).mean())
    warmup = iterations // 5
    for step in range(iterations):
        h = soft(v)
        loss = ((function(x_in, weight(h)) - target) ** 2).mean()
        if step >= warmup:
            beta = 20 + (2 - 20) * (step - warmup) / max(1, iterations - warmup)
            loss = loss + lam * (1 - (2 * h - 1).abs().pow(beta)).sum() / h.numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        up = (soft(v) >= 0.5).float()
        q = torch.where(fixed, torch.from_numpy(q_near.astype(np.float32)), torch.clamp(floor + up, -127, 127))
        final_loss = float(((function(x_in, q * s) - target) ** 2).mean())
    q = q.numpy().astype(np.int8)
    return q, scales, {"nearest_mse": near_loss, "adaround_mse": final_loss,
               "changed": float((q != q_near).mean())}


def adarounded_model(graph, amax: dict, calib: str, samples: int, iterations: int) -> tuple[onnx.ModelProto, dict]:
    """The float model with each quantized layer's weight replaced by its AdaRound integers times scales."""
    import torch

    from quantlab.evaluation.engine import OrtRunner
    from quantlab.qdq import quantized_layers
    from quantlab.workload import DataSpec, sample_inputs

    torch.manual_seed(0)
    quantized = quantized_layers(graph, amax)
    nodes = {node.name or node.output[0]: node for node in graph.model.graph.node}
    specs = [spec for spec in graph.weights if spec.node in quantized and spec.op_type in ("Conv", "Gemm", "MatMul")]
    inputs = sample_inputs(graph, DataSpec(calib), samples)
    wanted = sorted({nodes[spec.node].input[0] for spec in specs} | {nodes[spec.node].output[0] for spec in specs})
    runner = OrtRunner(graph.model, [n for n in wanted if n not in inputs])
    fp32 = {**inputs, **runner.run(inputs)}
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    initializers = {i.name: i for i in model.graph.initializer}
    layers = {}
    for spec in specs:
        node = nodes[spec.node]
        function = layer_function(node, torch)
        if function is None or spec.name not in initializers:
            layers[spec.node] = {"skipped": "not modelled"}
            continue
        w = numpy_helper.to_array(initializers[spec.name]).astype(np.float32)
        x = torch.from_numpy(np.asarray(fp32[node.input[0]], np.float32))
        try:
            target = function(x, torch.from_numpy(w)).detach()
        except (ValueError, RuntimeError) as exc:
            layers[spec.node] = {"skipped": str(exc)[:80]}
            continue
        x_in = fake_quantize(x, amax[node.input[0]], torch) if node.input[0] in amax else x
        started = time.perf_counter()
        q, scales, record = adaround_layer(w, spec.axis, x_in, target, function, iterations, torch)
        record["seconds"] = time.perf_counter() - started
        shape = [1] * w.ndim
        shape[spec.axis % w.ndim] = -1
        initializers[spec.name].CopyFrom(numpy_helper.from_array(q.astype(np.float32) * scales.reshape(shape),
                                                                 spec.name))
        layers[spec.node] = record
    return model, layers


def run_model(name: str, work: Path, samples: int, iterations: int) -> dict:
    from quantlab.calibrate import Method, calibrate_statistics, collect_statistics
    from quantlab.qdq import export_qdq, measured_ranges
    from quantlab.workload import DataSpec, resolve_model

    files = workload_files(name, work)
    graph = resolve_model(files["model"])
    stats = collect_statistics(graph, DataSpec(files["calib"]), progress=False)
    measured = measured_ranges(stats.tensors)
    models, details = {}, {}
    for method in ("entropy", "max"):
        table = calibrate_statistics(graph, stats, Method(method))
        models[method] = export_qdq(graph, table.activations, table.weights, measured=measured, emulate=True)[0]
        started = time.perf_counter()
        rounded, layers = adarounded_model(graph, table.activations, files["calib"], samples, iterations)
        seconds = time.perf_counter() - started
        rounded_graph = resolve_model(rounded)
        models[f"{method} + AdaRound"] = export_qdq(rounded_graph, table.activations, measured=measured,
                                                    emulate=True)[0]
        details[method] = {"seconds": seconds, "layers": layers}
    return {"scores": score_models(graph, models, files["eval"]), "adaround": details}


def markdown(results: dict, meta: dict) -> str:
    lines = ["# AdaRound at INT8 per channel: does it pay?", "",
             f"Measured {meta['date']} with `python benchmarks/adaround.py` ({meta['samples']} calibration samples "
             f"per layer, {meta['iterations']} Adam steps), on {meta['machine']}. SQNR of the first output in dB on "
             "the accuracy league's held-out split, TensorRT-faithful arithmetic; time = AdaRound over all "
             "layers.",
             "", "| model | ranges | nearest SQNR dB | AdaRound SQNR dB | gain dB | top-1 agreement nearest / "
             "AdaRound | layer MSE ratio (median) | weights changed | AdaRound s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        if "error" in result:
            lines.append(f"| {name} | failed: {result['error'][:100]} | | | | | | | |")
            continue
        scores = result["scores"]
        for method, detail in result["adaround"].items():
            near, ada = scores[method], scores[f"{method} + AdaRound"]
            layers = [v for v in detail["layers"].values() if "adaround_mse" in v]
            ratios = [v["adaround_mse"] / v["nearest_mse"] for v in layers if v["nearest_mse"] > 0]
            changed = np.mean([v["changed"] for v in layers]) if layers else math.nan
            lines.append(f"| {name} | {method} | {near['sqnr_db']:.2f} | {ada['sqnr_db']:.2f} | "
                         f"{ada['sqnr_db'] - near['sqnr_db']:+.2f} | {near.get('top1_agreement', math.nan):.4f} / "
                         f"{ada.get('top1_agreement', math.nan):.4f} | "
                         f"{np.median(ratios) if ratios else math.nan:.3f} | {changed:.1%} | {detail['seconds']:.1f} |")
    lines += ["", "## Verdict", "", *meta.get("verdict", [])]
    return "\n".join(lines) + "\n"


def main() -> None:
    import os
    import platform

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fashion", "ppocrv5_cls", "orinet", "mtcnn_onet"])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--work", default="/tmp/accuracy-league")
    args = parser.parse_args()
    results = {}
    for name in args.models:  # the report is rewritten after each model: a long run keeps what it measured
        print(f"[{name}]", file=sys.stderr, flush=True)
        try:
            results[name] = run_model(name, Path(args.work) / name, args.samples, args.iterations)
        except Exception as exc:  # one model's failure is reported, the others still run
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        gains = [r["scores"][f"{m} + AdaRound"]["sqnr_db"] - r["scores"][m]["sqnr_db"]
                 for r in results.values() if "scores" in r for m in r["adaround"]]
        meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
                "samples": args.samples, "iterations": args.iterations,
                "verdict": [f"SQNR gain over nearest rounding: min {min(gains):+.2f}, median "
                            f"{np.median(gains):+.2f}, max {max(gains):+.2f} dB over {len(gains)} model x range "
                            "pairs."] if gains else []}
        REPORT.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
        REPORT.with_suffix(".md").write_text(markdown(results, meta))
    print(REPORT.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
