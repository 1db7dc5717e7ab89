"""``--method auto`` and ``quantlab tune`` next to their peers, same model, data and machine, one run.

    python benchmarks/tune.py                                   # -> reports/tune.md and reports/tune.json
    python benchmarks/tune.py --workloads fashion --no-peers    # quantlab only, one workload

Peers run as child processes in the side environment of ``benchmarks/tune_peers.py`` (its
docstring says how to make it; ``QUANTLAB_PEERS_PYTHON`` points elsewhere). Every tool is fed the
very same float32 tensors (``tune_peers.py make-npz`` for the embedded model and MobileNetV2,
quantlab's own preprocessing for the corpus models), and every Q/DQ model is scored by quantlab's
evaluation engine in TensorRT-faithful arithmetic (ONNX Runtime's graph optimizations and Q/DQ
fusions off: each Q/DQ executed as written, see quantlab/evaluation/engine.py).

1. Fidelity of all-INT8 models on the evaluation split: ``auto`` vs every single method of
   quantlab (one collection) vs ModelOpt ONNX entropy/max vs ONNX Runtime quantize_static
   MinMax/Entropy/Percentile: SQNR and cosine of the outputs against FP32, top-1 agreement, and
   top-1 accuracy when there are labels.
2. Cost: ``calibrate --method auto`` vs ``--method entropy``, wall time of the Python call, same
   model and samples, in this process, after one warm-up call of each.
3. ``tune --max-drop X`` vs NNCF ``quantize_with_accuracy_control`` (ONNX backend, same model,
   data, metric and drop): layers left in float, metric reached, wall time of the call.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
from tune_peers import PEERS_PYTHON, make_npz, peer_runs, run_peer  # noqa: E402

from quantlab.calibrate import Method, calibrate, calibrate_statistics, collect_statistics, method_label  # noqa: E402
from quantlab.evaluation.engine import OrtRunner, evaluate  # noqa: E402
from quantlab.evaluation.heldout import HeldOut  # noqa: E402
from quantlab.evaluation.options import EvalOptions  # noqa: E402
from quantlab.preprocess import Preprocess, iterate_batches, select_indices  # noqa: E402
from quantlab.qdq import export_qdq  # noqa: E402
from quantlab.tune.auto import AUTO_CANDIDATES  # noqa: E402
from quantlab.tune.options import Budget, SearchOptions, TuneOutput  # noqa: E402
from quantlab.tune.pipeline import tune  # noqa: E402
from quantlab.tune.sensitivity import quantized_layers  # noqa: E402
from quantlab.workload import DataSpec, open_dataset, resolve_model  # noqa: E402

REPORTS = ROOT / "reports"
PEER_TOOLS = (("modelopt entropy", ["modelopt", "--method", "entropy"]),
              ("modelopt max", ["modelopt", "--method", "max"]),
              ("ort MinMax", ["ort", "--method", "MinMax"]),
              ("ort Entropy", ["ort", "--method", "Entropy"]),
              ("ort Percentile", ["ort", "--method", "Percentile"]))
# Workloads: how their data is made, the metric tune and NNCF are judged by, and the budget.
WORKLOADS = {
    "fashion": {"model": ROOT / "quantlab" / "defaults" / "fashion_mnist_cnn.onnx",
                "tune": [("top1", 0.1), ("agreement", 0.5)]},
    # Seeded, untrained weights (benchmarks/models/make_mobilenetv2.py): fidelity and cost only. Its
    # all-INT8 models agree with FP32 on about half of the samples whatever the tool, so an agreement
    # budget says nothing about a trained network (NNCF had not met 0.5 points after 40 minutes).
    "mobilenetv2": {"model": ROOT / "benchmarks" / "data" / "mobilenetv2" / "model.onnx", "tune": []},
    "ppocrv5_cls": {"corpus": "ppocrv5_cls", "calib": 64, "eval": 64, "tune": [("agreement", 1.6)]},
    "mtcnn_onet": {"corpus": "mtcnn_onet", "calib": 64, "eval": 64, "tune": []},
    "orinet": {"corpus": "orinet", "calib": 64, "eval": 32, "tune": []},
}


def corpus_npz(name: str, work: Path, calib: int, evaluation: int) -> dict:
    """Calibration and evaluation tensors of a corpus model, preprocessed by quantlab once (float32)."""
    model = corpus.by_name(name)
    graph = resolve_model(model.path)
    pre = Preprocess(resize=model.resize, mean=model.mean, std=model.std)
    out = {}
    for split, count, tag in (("calibration", calib, "calib"), ("heldout", evaluation, "eval")):
        raw = corpus.write_split(model, split, count, work / f"{tag}-raw.npz")
        dataset = open_dataset(str(raw), None, graph)
        batches = iterate_batches(dataset, select_indices(len(dataset), None, 0), graph.inputs, pre, 32)
        x = np.concatenate([b.inputs[graph.inputs[0].name] for b in batches]).astype(np.float32)
        np.savez(work / f"{tag}.npz", x=x)
        out[tag] = str(work / f"{tag}.npz")
    return {"model": str(model.path), **out}


def score_models(graph, models: dict[str, onnx.ModelProto], eval_npz: str) -> dict[str, dict]:
    """Every model against FP32 on the evaluation tensors, one pass, quantlab's engine."""
    held = HeldOut(graph, DataSpec(eval_npz))
    _, per_run = held.activation_sizes()
    candidates = {label: OrtRunner(model) for label, model in models.items()}
    results = evaluate(OrtRunner(graph.model), candidates, held.batches(), graph.output_names, per_run=per_run)
    rows = {}
    for label, found in results.items():
        first = found.outputs[0]
        rows[label] = {key: first.get(key) for key in ("sqnr_db", "cosine_similarity", "top1_agreement",
                                                       "int8_top1", "fp32_top1") if key in first}
        rows[label]["worst_output_sqnr_db"] = min(o.get("sqnr_db", math.inf) for o in found.outputs)
    return rows


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def run_workload(name: str, spec: dict, work: Path, peers: bool, tune_it: bool) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    if "corpus" in spec:
        files = corpus_npz(spec["corpus"], work, spec["calib"], spec["eval"])
    else:
        made = make_npz(name, work)
        files = {"model": str(spec["model"]), "calib": str(work / "calib.npz"), "eval": str(work / "eval.npz")}
        del made
    graph = resolve_model(files["model"])
    calib = DataSpec(files["calib"])
    print(f"[{name}] collecting and calibrating", file=sys.stderr)
    # Cost: one warm-up call of each, then the measured ones.
    calibrate(graph, calib, method="entropy", progress=False)
    _, entropy_seconds = timed(calibrate, graph, calib, method="entropy", progress=False)
    auto_result, auto_seconds = timed(calibrate, graph, calib, method="auto", progress=False)
    stats = collect_statistics(graph, calib, progress=False)
    tables = {method_label(m, p): calibrate_statistics(graph, stats, Method(m, p)) for m, p in AUTO_CANDIDATES}
    tables["auto"] = auto_result.table
    models = {label: export_qdq(graph, t.activations, t.weights)[0] for label, t in tables.items()}
    peer_records = {}
    if peers:
        for label, out, record in peer_runs(name, PEER_TOOLS, files, work, 1200):
            peer_records[label] = {k: record.get(k) for k in ("ok", "error", "seconds", "versions", "float_layers",
                                                              "partial_layers") if k in record}
            if record.get("ok"):
                models[label] = onnx.load(out)
    print(f"[{name}] scoring {len(models)} models", file=sys.stderr)
    fidelity = score_models(graph, models, files["eval"])
    result = {"model": files["model"], "calibration_samples": stats.num_samples,
              "evaluation_samples": int(np.load(files["eval"])["x"].shape[0]),
              "auto": {"chosen_counts": auto_result.table.provenance["auto"]["chosen_counts"],
                       "winner": auto_result.table.provenance["auto"]["winner"],
                       "network_error_on_calibration_samples": auto_result.table.provenance["auto"]["network_error"]},
              "fidelity": fidelity, "peers": peer_records,
              "cost": {"entropy_s": entropy_seconds, "auto_s": auto_seconds, "ratio": auto_seconds / entropy_seconds},
              "quantized_layers": len(quantized_layers(models["auto"]))}
    if tune_it:
        result["tune"] = []
        for metric_name, max_drop in spec["tune"]:
            result["tune"].append(tune_against_nncf(graph, calib, files, work, metric_name, max_drop, peers))
    return result


def tune_against_nncf(graph, calib: DataSpec, files: dict, work: Path, metric_name: str, max_drop: float,
                      peers: bool) -> dict:
    """quantlab tune and NNCF's accuracy control, same model, data, metric and budget."""
    heldout = DataSpec(files["eval"])
    if metric_name == "agreement":  # no labels: the metric is top-1 agreement with FP32
        unlabelled = work / "eval-nolabels.npz"
        np.savez(unlabelled, x=np.load(files["eval"])["x"])
        heldout = DataSpec(str(unlabelled))
    print(f"[{Path(files['model']).name}] tune --max-drop {max_drop} ({metric_name})", file=sys.stderr)
    data, seconds = timed(tune, graph, calib, heldout, budget=Budget(max_drop=max_drop),
                          evaluation=EvalOptions(metric="classification"), search=SearchOptions(sensitivity="float"),
                          progress=False, output=TuneOutput(work / f"tuned-{metric_name}.qdq.onnx"))
    row = {"metric": metric_name, "max_drop": max_drop,
           "quantlab": {"fallback": data["fallback"], "float_layers": len(data["fallback"]), "met": data["met"],
                        "all_int8": data["all_int8"], "written": data["written"], "seconds": seconds,
                        "fp32": data["metric"]["fp32"], "score_name": data["metric"]["score_name"],
                        "passes": data["passes_over_eval_data"]}}
    if peers:
        print(f"[{Path(files['model']).name}] nncf-ac --max-drop {max_drop} ({metric_name})", file=sys.stderr)
        row["nncf"] = run_peer(["nncf-ac", files["model"], files["calib"], files["eval"], "--max-drop", max_drop,
                                "--metric", metric_name, "-o", work / f"nncf-ac-{metric_name}.onnx"],
                               work / f"nncf-ac-{metric_name}.json", timeout=1800)
    return row


def left_in_float(peer) -> str:
    """The Conv/Gemm/MatMul layers a peer's model leaves without Q/DQ (quantlab's: none)."""
    if not peer:
        return "0"
    names = (peer.get("float_layers") or []) + (peer.get("partial_layers") or [])
    return f"{len(names)}" + (f" ({', '.join(f'`{n}`' for n in names[:2])}{' ...' if len(names) > 2 else ''})"
                              if names else "")


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}"
    return str(value)


def markdown(results: dict, meta: dict) -> str:
    lines = ["# `--method auto` and `quantlab tune` vs peers", "",
             f"Measured {meta['date']} on {meta['machine']} with `python benchmarks/tune.py` (one run; peers in "
             f"child processes, {meta['peers_python']}). Every INT8 model is scored by quantlab's evaluation engine "
             "in TensorRT-faithful arithmetic (each Q/DQ executed as written, float accumulation of exactly "
             "dequantized int8 values) on the evaluation split, against the FP32 model. quantlab's models quantize "
             "every Conv/Gemm/MatMul; a peer's may leave some in float (last column, from the peer's own model: "
             "ModelOpt's default placement leaves small Gemm/MatMul heads such as a classifier's in float), which is "
             "fidelity bought with float layers, not with better ranges.", ""]
    lines += ["## 1. Fidelity of all-INT8 models (first output vs FP32, evaluation split)", ""]
    for name, r in results.items():
        if "error" in r:
            lines += [f"### {name}: not measured ({r['error']})", ""]
            continue
        lines += [f"### {name}", "",
                  f"`{Path(r['model']).name}`, {r['calibration_samples']} calibration / {r['evaluation_samples']} "
                  f"evaluation samples, {r['quantized_layers']} quantized layers. auto chose "
                  + ", ".join(f"{k} {v}" for k, v in r["auto"]["chosen_counts"].items())
                  + f" (winner at the outputs on calibration samples: {r['auto']['winner']}).", "",
                  "| ranges | SQNR dB | cosine | top-1 agreement | top-1 (labels) | worst output SQNR dB | "
                  "layers left in float |",
                  "|---|---|---|---|---|---|---|"]
        ranked = sorted(r["fidelity"].items(), key=lambda item: -(item[1].get("sqnr_db") or -1e9))
        for label, row in ranked:
            bold = "**" if label == "auto" else ""
            lines.append(f"| {bold}{label}{bold} | {fmt(row.get('sqnr_db'), 2)} | "
                         f"{fmt(row.get('cosine_similarity'), 5)} | {fmt(row.get('top1_agreement'))} | "
                         f"{fmt(row.get('int8_top1'))} | "
                         f"{fmt(row.get('worst_output_sqnr_db'), 2)} | {left_in_float(r['peers'].get(label))} |")
        failed = {k: v.get("error") for k, v in r["peers"].items() if not v.get("ok")}
        for label, error in failed.items():
            lines.append(f"\n{label} failed: {str(error)[:300]}")
        lines.append("")
    lines += ["## 2. Cost of `--method auto` (Python call, same model and samples)", "",
              "| workload | entropy s | auto s | auto / entropy |", "|---|---|---|---|"]
    for name, r in results.items():
        if "cost" in r:
            lines.append(f"| {name} | {fmt(r['cost']['entropy_s'], 2)} | {fmt(r['cost']['auto_s'], 2)} | "
                         f"{fmt(r['cost']['ratio'], 2)}x |")
    lines += ["", "## 3. `tune --max-drop` vs NNCF `quantize_with_accuracy_control`", "",
              "| workload | metric | budget (points) | tool | float layers | metric reached | drop (points) | met | "
              "wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for row in r.get("tune", []):
            t, budget = row["quantlab"], row["max_drop"]
            lines.append(f"| {name} | {t['score_name']} (FP32 {fmt(t['fp32'])}) | {budget} | quantlab tune | "
                         f"{t['float_layers']} | {fmt(t['written']['score'])} | {fmt(t['written']['drop'], 2)} | "
                         f"{'yes' if t['met'] else 'no'} | {fmt(t['seconds'], 1)} |")
            n = row.get("nncf")
            if n and n.get("ok"):
                final = n.get("final_metric")
                lines.append(f"| {name} | | {budget} | NNCF accuracy control | {n.get('float_count', '?')} "
                             f"(+{n.get('partial_count', 0)} partly) | "
                             f"{fmt(final / 100 if final is not None else None)} | "
                             f"{fmt(n.get('final_drop_points'), 2)} | {'yes' if n.get('met') else 'no'} | "
                             f"{fmt(n.get('seconds', {}).get('tool'), 1)} |")
            elif n:
                error = " ".join(str(n.get("error")).split())[:200]
                partial = n.get("partial") if isinstance(n.get("partial"), dict) else {}
                path = [v for v in partial.get("search_path") or [] if v is not None]
                start = partial.get("initial_int8_metric", 0) / 100
                best = (f"its search reached {path[-1] / 100:.4f} (from {start:.4f} in {len(path)} evaluations), "
                        if path else "")
                lines.append(f"| {name} | | {budget} | NNCF accuracy control | - | {best}then failed: {error} | | no | "
                             f"{fmt(partial.get('seconds_in_tool'), 1)} |")
    lines += ["", "## Targets", ""] + targets(results) + [""]
    return "\n".join(lines)


QUANTLAB_METHODS = tuple(method_label(m, p) for m, p in AUTO_CANDIDATES)


def targets(results: dict) -> list[str]:
    """Each target of the issue, met or missed, with the numbers (SQNR of the first output, evaluation split)."""
    out = []
    for name, r in results.items():
        if "fidelity" not in r:
            continue
        f = r["fidelity"]
        auto = f["auto"]["sqnr_db"]
        best_label = max((k for k in QUANTLAB_METHODS if k in f), key=lambda k: f[k]["sqnr_db"])
        best = f[best_label]["sqnr_db"]
        verdict = "met" if auto >= best else "missed"
        line = f"- {name}: auto {auto:.2f} dB vs the best single method, {best_label}, {best:.2f} dB: **{verdict}**"
        if "modelopt entropy" in f:
            m = f["modelopt entropy"]["sqnr_db"]
            line += f"; vs ModelOpt entropy {m:.2f} dB: **{'met' if auto >= m else 'missed'}**"
        out.append(line + ".")
    for name, r in results.items():
        if "cost" in r:
            ratio = r["cost"]["ratio"]
            out.append(f"- cost on {name}: auto {ratio:.2f}x entropy (target at most 5x): "
                       f"**{'met' if ratio <= 5 else 'missed'}**.")
    for name, r in results.items():
        for row in r.get("tune", []):
            q, n = row["quantlab"], row.get("nncf") or {}
            if not n.get("ok"):
                continue
            fewer = q["met"] and q["float_layers"] <= n.get("float_count", 0) + n.get("partial_count", 0)
            faster = q["seconds"] < n["seconds"]["tool"]
            out.append(f"- tune on {name} ({row['metric']}, {row['max_drop']} points): {q['float_layers']} float "
                       f"layers in {q['seconds']:.1f} s vs NNCF {n.get('float_count')} in "
                       f"{n['seconds']['tool']:.1f} s: "
                       f"**{'met' if fewer and faster else 'missed'}**.")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--no-peers", action="store_true", help="quantlab only")
    parser.add_argument("--no-tune", action="store_true", help="fidelity and cost only")
    parser.add_argument("--work", type=Path, help="keep the intermediate files here")
    parser.add_argument("--out", type=Path, default=REPORTS / "tune.md")
    parser.add_argument("--render-only", action="store_true", help="rewrite the markdown from the JSON")
    args = parser.parse_args()
    if args.render_only:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        args.out.write_text(markdown(saved["results"], saved["meta"]))
        return 0
    peers = not args.no_peers and PEERS_PYTHON.exists()
    work = args.work or Path(tempfile.mkdtemp(prefix="quantlab-tune-bench-"))
    previous = {}
    json_path = args.out.with_suffix(".json")
    if json_path.exists():
        previous = json.loads(json_path.read_text()).get("results", {})
    results = dict(previous)
    for name in args.workloads:
        try:
            results[name] = run_workload(name, WORKLOADS[name], work / name, peers, not args.no_tune)
        except Exception as exc:  # a workload that cannot run here is reported, the others go on
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
                "peers_python": str(PEERS_PYTHON) if peers else "no peers"}
        args.out.write_text(markdown(results, meta))
        json_path.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
