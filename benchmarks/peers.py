"""quantlab next to its peers, on the same models, data and machine, in one run.

    pip install -e '.[bench]'                          # the peers: ModelOpt ONNX (+ torch) for the reference
    apt-get install -y dataset-fashion-mnist
    python benchmarks/models/make_mobilenetv2.py        # the ImageNet-sized workload (seeded weights)
    python benchmarks/peers.py                          # -> reports/benchmarks.md and reports/benchmarks.json
    python benchmarks/peers.py --workload mobilenetv2   # re-measure one workload, keep the other's numbers

Workloads: ``fashion`` (the embedded Fashion-MNIST CNN, trained; 1x28x28) and ``mobilenetv2``
(MobileNetV2 1.0 at 3x224x224, 1000 classes, seeded weights: timing only, see
``benchmarks/models/make_mobilenetv2.py``). Every tool is fed the very same float32 tensors,
in batches of 32.

1. KL threshold search per tensor, on the real activation histograms of each workload:
   quantlab ``entropy`` vs NVIDIA's reference (``_compute_amax_entropy`` of nvidia-modelopt,
   on the same histogram) vs ONNX Runtime's ``get_entropy_threshold`` (2048 bins).
2. End-to-end calibration, each tool in its own process (wall time, peak RSS), at 64, 256 and
   1024 samples: quantlab (statistics + thresholds + TensorRT cache + JSON table + Q/DQ model)
   with ``entropy`` and ``percentile`` 99.99 (and ``mse`` on the trained model); ONNX Runtime
   ``quantize_static`` (MinMax; Entropy with its default 128 bins and with 2048; Percentile);
   ModelOpt ONNX INT8 (entropy, max) on the CPU; and one plain FP32 ONNX Runtime pass over the
   same samples (the floor). Children run under a memory cap (``--memory-gib``) and a time limit
   (``--timeout``); a tool that fails at one size is not run at larger sizes.
3. Where collection time goes: inference with every activation as an output vs filling the
   histograms, against the plain FP32 pass, per sample and per activation value.
4. Accuracy of each tool's INT8 model (calibrated on 1024 training images) on the full 10,000-image
   Fashion-MNIST test split: top-1 and agreement with FP32. None on the untrained MobileNetV2.
Medians of ``--repeats`` runs (default 3). Peers are benchmark-only dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
MOBILENET = ROOT / "benchmarks" / "data" / "mobilenetv2"
BATCH = 32

CHILD = r'''
import json, resource, sys, time
tool, model, data, workdir, input_name, memory = sys.argv[1:7]
cap = int(float(memory) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
start = time.perf_counter()
import numpy as np
BATCH = 32
if tool.startswith("quantlab"):
    from quantlab import CollectOptions, DataSpec, Method, calibrate
    from quantlab.graph import load_model
    from quantlab.qdq import export_qdq
    method, _, scope = tool.split("-", 1)[1].partition("-")
    params = {"p": 99.99} if method == "percentile" else {}
    result = calibrate(model, DataSpec(data, batch_size=BATCH), Method(method, params),
                       collect=CollectOptions(tensors=scope or "all"), output=workdir + "/q.cache", progress=False)
    qdq, _ = export_qdq(load_model(model), result.table.activations, result.table.weights)
    open(workdir + "/int8.onnx", "wb").write(qdq.SerializeToString())
elif tool == "fp32-pass":
    import onnxruntime as ort
    x = np.load(data)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for i in range(0, len(x), BATCH):
        session.run(None, {input_name: x[i:i + BATCH]})
elif tool.startswith("modelopt"):
    import logging
    from modelopt.onnx.quantization import quantize
    x = np.load(data)
    quantize(model, quantize_mode="int8", calibration_data=x, calibration_method=tool.split("-")[1],
             calibration_shapes=input_name + ":" + "x".join(map(str, (BATCH,) + x.shape[1:])),
             calibration_eps=["cpu"], high_precision_dtype="fp32", output_path=workdir + "/int8.onnx",
             log_level="ERROR")
else:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    x = np.load(data)
    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: x[i:i + BATCH]} for i in range(0, len(x), BATCH)])
        def get_next(self):
            return next(self.batches, None)
    method, extra = {
        "ort-minmax": (CalibrationMethod.MinMax, {}),
        "ort-entropy": (CalibrationMethod.Entropy, {}),
        "ort-entropy-2048": (CalibrationMethod.Entropy, {"CalibNumBins": 2048}),
        "ort-percentile": (CalibrationMethod.Percentile, {}),
    }[tool]
    quantize_static(model, workdir + "/int8.onnx", Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=method, extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                                            **extra})
seconds = time.perf_counter() - start
# VmHWM is this process image's own peak (ru_maxrss would carry the forking parent's peak over exec).
hwm_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "peak_rss_mib": hwm_kib / 1024}))
'''

# "-qdq": --tensors qdq, only the activations the Q/DQ model quantizes (what the peers' Q/DQ output needs).
QUANTLAB = ["quantlab-entropy", "quantlab-percentile", "quantlab-entropy-qdq"]
ORT = ["ort-minmax", "ort-entropy", "ort-entropy-2048", "ort-percentile"]
MODELOPT = ["modelopt-entropy", "modelopt-max"]
HISTOGRAM_PEERS = ["ort-entropy", "ort-entropy-2048", "ort-percentile", "modelopt-entropy"]


def read_idx(path: Path) -> np.ndarray:
    from quantlab.data import read_idx as read

    return read(path)


def workload(name: str) -> dict:
    """Model, input name, float32 calibration tensors (a function of the count) and tools."""
    if name == "fashion":
        from quantlab import defaults

        images = read_idx(FASHION / "train-images-idx3-ubyte.gz")

        def samples(count: int) -> np.ndarray:
            pick = np.sort(np.random.default_rng(count).choice(len(images), count, replace=False))
            return (images[pick].astype(np.float32) / 255)[:, None]

        return {"model": Path(defaults.MODEL), "input": "image", "samples": samples, "trained": True,
                "tools": QUANTLAB + ["quantlab-mse"] + ORT + MODELOPT + ["fp32-pass"],
                "label": "the embedded Fashion-MNIST CNN (trained, 1x28x28 input)"}
    if name == "mobilenetv2":
        if not (MOBILENET / "model.onnx").exists():
            raise SystemExit("run python benchmarks/models/make_mobilenetv2.py first")
        calib = np.load(MOBILENET / "calib.npy", mmap_mode="r")
        return {"model": MOBILENET / "model.onnx", "input": "image", "samples": lambda n: np.array(calib[:n]),
                "trained": False, "tools": QUANTLAB + ORT + MODELOPT + ["fp32-pass"],
                "label": "MobileNetV2 1.0 (seeded weights, not trained; 3x224x224 input, 1000 classes)"}
    raise SystemExit(f"unknown workload {name!r}")


def kl_search(load: dict, repeats: int, samples: int) -> dict:
    import onnxruntime.quantization.calibrate as ort_calibrate

    from quantlab import DataSpec, collect_statistics, get_calibrator

    try:
        from modelopt.torch.quantization.calib.histogram import _compute_amax_entropy
    except Exception as exc:  # the reference is an optional benchmark dependency
        _compute_amax_entropy, missing = None, f"{type(exc).__name__}: {exc}"
    else:
        missing = None
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/x.npy", load["samples"](samples))
        stats = collect_statistics(str(load["model"]), DataSpec(f"{tmp}/x.npy", batch_size=BATCH), progress=False)
    calibrator = get_calibrator("entropy")
    rows = []
    for name, hist in stats.tensors.items():
        counts, edges = hist.counts, hist.edges
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            ours = calibrator.compute_amax(counts, edges)
            times.append(time.perf_counter() - start)
        row = {"tensor": name, "quantlab_ms": statistics.median(times) * 1e3, "quantlab_amax": ours}
        if _compute_amax_entropy is not None:
            start = time.perf_counter()
            ref = float(_compute_amax_entropy(counts.astype(np.int64).copy(), edges, 8, False, 1, 128))
            row.update(reference_ms=(time.perf_counter() - start) * 1e3, reference_amax=ref, same=ref == ours)
        # ONNX Runtime searches a signed histogram centred on 0: mirror |x| into 2048 signed bins.
        half = counts.reshape(-1, 2).sum(axis=1)
        signed = np.concatenate([half[::-1], half])
        top = np.float32(edges[-1])
        signed_edges = np.linspace(-top, top, len(signed) + 1, dtype=np.float32)
        collector = ort_calibrate.HistogramCollector("entropy", True, 2048, 128, 99.99, None)
        start = time.perf_counter()
        threshold = collector.get_entropy_threshold((signed, signed_edges, -top, top, top), 128)
        row.update(ort_ms=(time.perf_counter() - start) * 1e3, ort_amax=float(np.max(np.abs(threshold))))
        rows.append(row)
        print(f"  KL {name}: {row}", file=sys.stderr, flush=True)
    out = {"tensors": len(rows), "samples": samples, "rows": rows,
           "quantlab_median_ms": statistics.median(r["quantlab_ms"] for r in rows),
           "ort_median_ms": statistics.median(r["ort_ms"] for r in rows), "reference_missing": missing}
    if missing is None:
        out["reference_median_ms"] = statistics.median(r["reference_ms"] for r in rows)
        out["same_amax"] = sum(r["same"] for r in rows)
    return out


def run_child(tool: str, load: dict, data: str, work: str, memory_gib: float, timeout: float) -> dict:
    # Each run gets its own copy of the model: ModelOpt writes shape information back into the
    # ONNX file it is given, which must not touch the embedded model or the next tool's input.
    model = Path(work) / "fp32.onnx"
    shutil.copyfile(load["model"], model)
    command = [sys.executable, "-c", CHILD, tool, str(model), data, work, load["input"], str(memory_gib)]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": child_failure(out.stderr, out.returncode, memory_gib)}
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_failure(stderr: str, returncode: int, memory_gib: float) -> str:
    """One line for a child that failed: its last stderr line, or out of memory under the cap."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()] or [f"exit {returncode}"]
    last = lines[-1]
    if "MemoryError" in stderr or "bad_alloc" in stderr or "Failed to allocate" in stderr:
        last = f"out of memory under the {memory_gib:g} GiB cap ({last[:120]})"
    return last


def end_to_end(load: dict, sizes: list[int], repeats: int, memory_gib: float, timeout: float,
               models_dir: Path) -> list[dict]:
    rows, failed = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            data = f"{tmp}/calib{size}.npy"
            np.save(data, load["samples"](size))
            for tool in load["tools"]:
                if tool in failed:
                    rows.append({"tool": tool, "samples": size, "seconds": None, "peak_rss_mib": None,
                                 "error": f"not run: failed at {failed[tool]} samples"})
                    continue
                runs = []
                for _ in range(repeats):
                    work = tempfile.mkdtemp(dir=tmp)
                    runs.append(run_child(tool, load, data, work, memory_gib, timeout))
                    if "error" in runs[-1]:
                        break
                    if size == sizes[-1] and tool != "fp32-pass":
                        os.replace(Path(work) / "int8.onnx", models_dir / f"{tool}.onnx")
                ok = [r for r in runs if "error" not in r]
                if not ok:
                    failed[tool] = size
                rows.append({"tool": tool, "samples": size,
                             "seconds": statistics.median(r["seconds"] for r in ok) if ok else None,
                             "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in ok) if ok else None,
                             "runs": [r.get("seconds") for r in runs],
                             "error": None if ok else runs[0]["error"]})
                print(f"  {tool:18s} {size:5d}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def anatomy(load: dict, samples: int, scope: str = "all") -> dict:
    """Where quantlab's collection time goes, against the plain FP32 pass, on ``samples`` samples,
    measuring the activations of ``scope`` (``all`` or ``qdq``, as ``--tensors``)."""
    import onnxruntime as ort

    from quantlab.calibrate import select_tensors
    from quantlab.collector import ActivationCollector
    from quantlab.graph import load_model
    from quantlab.preprocess import Batch

    x = load["samples"](samples)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(load["model"]), options, providers=["CPUExecutionProvider"])
    session.run(None, {load["input"]: x[:BATCH]})
    start = time.perf_counter()
    for i in range(0, len(x), BATCH):
        session.run(None, {load["input"]: x[i:i + BATCH]})
    fp32 = time.perf_counter() - start
    graph = load_model(load["model"])
    collector = ActivationCollector(graph, select_tensors(graph, scope))
    start = time.perf_counter()
    for i in range(0, len(x), BATCH):
        collector.update(Batch({load["input"]: x[i:i + BATCH]}, None, np.arange(i, min(i + BATCH, len(x)))))
    total = time.perf_counter() - start
    collector.close()
    stats = collector.statistics
    values = sum(int(h.counts.sum()) + h.nan_count + h.inf_count for h in stats.tensors.values())
    return {"scope": scope, "samples": samples, "tensors": len(stats.tensors), "values_per_sample": values / samples,
            "fp32_pass_s": fp32, "collect_s": total, "threads": collector.threads, **collector.seconds}


def evaluate_models(models_dir: Path, tools: list[str]) -> dict:
    import onnxruntime as ort

    from quantlab import defaults

    x = (read_idx(FASHION / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255)[:, None]
    y = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    options = ort.SessionOptions()
    options.log_severity_level = 3

    def predict(path) -> np.ndarray:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        logits = [session.run(None, {"image": x[i:i + 1000]})[0] for i in range(0, len(x), 1000)]
        return np.concatenate(logits).argmax(1)

    fp32 = predict(defaults.MODEL)
    out = {"fp32_top1": float((fp32 == y).mean()), "samples": len(y)}
    for tool in tools:
        path = models_dir / f"{tool}.onnx"
        if path.exists():
            pred = predict(path)
            out[tool] = {"top1": float((pred == y).mean()), "agreement": float((pred == fp32).mean())}
    return out


def fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def render(result: dict) -> str:
    m = result["machine"]
    lines = ["# quantlab vs peers", "",
             f"Regenerate: `python benchmarks/peers.py` (see its docstring for the setup). Machine: {m['cpus']} CPUs "
             f"({m['cpu']}), {m['platform']}, Python {m['python']}, numpy {m['numpy']}, onnxruntime "
             f"{m['onnxruntime']}, nvidia-modelopt {m['modelopt']}. Medians of {result['repeats']} runs; every "
             f"tool is fed the same float32 tensors in batches of {BATCH}.", "",
             "## Headline (1024 calibration samples)", ""] + headline(result) + [
             "", "## 1. KL threshold search per tensor (real 2048-bin activation histograms)", "",
             "| workload | tensors | quantlab ms | NVIDIA reference ms | ONNX Runtime (2048 bins) ms | "
             "reference / quantlab | same amax as reference |", "|---|---|---|---|---|---|---|"]
    for name, kl in result["kl"].items():
        if kl.get("reference_missing"):
            ref, ratio, same = "not run", "-", kl["reference_missing"]
        else:
            ref = f"{kl['reference_median_ms']:.0f}"
            ratio = f"**{kl['reference_median_ms'] / kl['quantlab_median_ms']:.0f}x**"
            same = f"{kl['same_amax']}/{kl['tensors']}"
        lines.append(f"| {name} | {kl['tensors']} | {kl['quantlab_median_ms']:.2f} | {ref} | "
                     f"{kl['ort_median_ms']:.0f} | {ratio} | {same} |")
    lines += ["", "Medians over tensors. ONNX Runtime's search runs on a signed histogram (the same data mirrored, "
              "1024 bins a side) and is a different algorithm, so only its time is comparable.", ""]
    for name, w in result["workloads"].items():
        lines += [f"## 2. End-to-end calibration: {name} — {w['label']}", "",
                  "| tool | samples | wall s | peak RSS MiB | x FP32 pass | note |", "|---|---|---|---|---|---|"]
        if w.get("remeasured"):
            lines += [f"Rows of {', '.join(w['remeasured']['tools'])} were re-measured at {w['remeasured']['at']} "
                      "(`--tools`), the others come from the workload's full run on the same machine.", ""]
        floor = {r["samples"]: r["seconds"] for r in w["end_to_end"] if r["tool"] == "fp32-pass"}
        for r in w["end_to_end"]:
            multiple = r["seconds"] / floor[r["samples"]] if r["seconds"] and floor.get(r["samples"]) else None
            lines.append(f"| {r['tool']} | {r['samples']} | {fmt(r['seconds'])} | {fmt(r['peak_rss_mib'], '.0f')} | "
                         f"{fmt(multiple, '.1f')} | {(r['error'] or '')[:160]} |")
        scopes = w.get("anatomy") or {}
        if "samples" in scopes:  # one scope, as first written
            scopes = {"all": scopes}
        if scopes:
            first = next(iter(scopes.values()))
            lines += ["", f"**Where quantlab's collection time goes** ({first['samples']} samples, batches of {BATCH}, "
                      f"histograms on {first['threads']} threads; `--tensors all` measures every activation, "
                      "`--tensors qdq` only the inputs of Conv/Gemm/MatMul that a Q/DQ model quantizes):", "",
                      "| per sample, ms | " + " | ".join(f"`--tensors {s}`" for s in scopes) + " |",
                      "|---|" + "---|" * len(scopes)]
            per = {s: 1e3 / a["samples"] for s, a in scopes.items()}
            rows = [("activations measured",
                     lambda a, k: f"{a['tensors']} ({a['values_per_sample'] / 1e6:.2f} M values)"),
                    ("plain FP32 pass (the floor)", lambda a, k: f"{a['fp32_pass_s'] * k:.2f}"),
                    ("inference with the measured activations as outputs (runs alongside the histograms)",
                     lambda a, k: f"{a['inference'] * k:.2f}"),
                    ("filling the histograms", lambda a, k: f"{a['histograms'] * k:.2f} "
                     f"({a['histograms'] / (a['samples'] * a['values_per_sample']) * 1e9:.2f} ns/value)"),
                    ("whole collection", lambda a, k: f"{a['collect_s'] * k:.2f}"),
                    ("collection / FP32 pass", lambda a, k: f"{a['collect_s'] / a['fp32_pass_s']:.1f}x")]
            for label, cell in rows:
                lines.append(f"| {label} | " + " | ".join(cell(a, per[s]) for s, a in scopes.items()) + " |")
        acc = w.get("accuracy")
        if acc:
            lines += ["", f"**INT8 accuracy** on the {acc['samples']:,} Fashion-MNIST test images (the whole test "
                      "split; calibrated on 1024 training images):", "",
                      "| tool | top-1 | agreement with FP32 |", "|---|---|---|",
                      f"| FP32 | {acc['fp32_top1']:.4f} | 1 |"]
            for tool, value in acc.items():
                if isinstance(value, dict):
                    lines.append(f"| {tool} | {value['top1']:.4f} | {value['agreement']:.4f} |")
        elif not w["trained"]:
            lines += ["", "No accuracy on this workload: its weights are seeded, not trained."]
        lines.append("")
    lines += ["Wall time runs from the top of each child script: it includes importing the tool (numpy, "
              "onnxruntime, quantlab, onnxruntime.quantization or modelopt) but not starting Python. Peak RSS is the "
              "child's VmHWM. quantlab's time includes writing the TensorRT cache, the JSON table and the Q/DQ model.",
              "", "## Targets", ""] + targets(result)
    return "\n".join(lines) + "\n"


def at_top(w: dict) -> tuple[int, dict]:
    top = max(r["samples"] for r in w["end_to_end"])
    return top, {r["tool"]: r for r in w["end_to_end"] if r["samples"] == top and not r["error"]}


def headline(result: dict) -> list[str]:
    out = ["| workload | tool | wall s | speed vs fastest histogram peer | peak RSS MiB | x FP32 pass | "
           "INT8 top-1 (10k test) |", "|---|---|---|---|---|---|---|"]
    for name, w in result["workloads"].items():
        top, at = at_top(w)
        acc = w.get("accuracy") or {}
        peers = [t for t in HISTOGRAM_PEERS if t in at]
        fastest = min(peers, key=lambda t: at[t]["seconds"]) if peers else None
        for r in (r for r in w["end_to_end"] if r["samples"] == top):
            floor = at.get("fp32-pass", {}).get("seconds")
            top1 = acc.get(r["tool"], {}).get("top1") if r["tool"] != "fp32-pass" else acc.get("fp32_top1")
            wall = fmt(r["seconds"]) if not r["error"] else f"failed: {r['error'][:60]}"
            speed = (f"{at[fastest]['seconds'] / r['seconds']:.1f}x" if fastest and r["seconds"]
                     and r["tool"] != "fp32-pass" else "-")
            out.append(f"| {name} | {r['tool']} | {wall} | {speed} | {fmt(r['peak_rss_mib'], '.0f')} | "
                       f"{fmt(r['seconds'] / floor if r['seconds'] and floor else None, '.1f')} | "
                       f"{fmt(top1, '.4f')} |")
        if fastest:
            out.append(f"| {name} | *fastest histogram peer: {fastest}* | | | | | |")
    return out


def targets(result: dict) -> list[str]:
    """Each target of the benchmark issue, met or missed, from the numbers above."""
    out = []
    for name, kl in result["kl"].items():
        if not kl.get("reference_missing"):
            speed = kl["reference_median_ms"] / kl["quantlab_median_ms"]
            met = speed >= 100 and kl["same_amax"] == kl["tensors"]
            out.append(f"- {name}: KL search >= 100x the NVIDIA reference with the same amax: {speed:.0f}x, "
                       f"{kl['same_amax']}/{kl['tensors']} same - **{'met' if met else 'missed'}**")
    for name, w in result["workloads"].items():
        top, at = at_top(w)
        acc = w.get("accuracy")
        peers = [t for t in HISTOGRAM_PEERS if t in at]
        ours_all = [t for t in at if t.startswith("quantlab")]
        if not peers:
            failed = ", ".join(f"{r['tool']} ({r['error'][:60]})" for r in w["end_to_end"]
                               if r["samples"] == top and r["tool"] in HISTOGRAM_PEERS)
            out.append(f"- {name}: end to end >= 3x faster than the fastest histogram peer at {top} samples: no "
                       f"histogram peer finished there - {failed}. quantlab finished in "
                       + ", ".join(f"{t} {at[t]['seconds']:.1f} s" for t in ours_all) + " - **met**")
            finished = [r["samples"] for r in w["end_to_end"] if r["tool"] in HISTOGRAM_PEERS and not r["error"]]
            if finished:
                size = max(finished)
                there = {r["tool"]: r for r in w["end_to_end"] if r["samples"] == size and not r["error"]}
                fastest = min((t for t in HISTOGRAM_PEERS if t in there), key=lambda t: there[t]["seconds"])
                for ours in (t for t in there if t.startswith("quantlab")):
                    ratio = there[fastest]["seconds"] / there[ours]["seconds"]
                    out.append(f"  - at {size} samples, the largest size a histogram peer finished: {ours} "
                               f"{there[ours]['seconds']:.1f} s vs {fastest} {there[fastest]['seconds']:.1f} s, "
                               f"{ratio:.1f}x - **{'met' if ratio >= 3 else 'missed'}** there")
        else:
            fastest = min(peers, key=lambda t: at[t]["seconds"])
            for ours in ours_all:
                ratio = at[fastest]["seconds"] / at[ours]["seconds"]
                if acc and ours in acc and fastest in acc:
                    better = acc[ours]["top1"] >= acc[fastest]["top1"]
                    accuracy = f", top-1 {acc[ours]['top1']:.4f} vs {acc[fastest]['top1']:.4f}"
                else:
                    better, accuracy = True, " (untrained model: speed only)"
                out.append(f"- {name}: {ours} end to end >= 3x faster than the fastest histogram peer ({fastest}) "
                           f"at equal or better accuracy, {top} samples: {ratio:.1f}x faster{accuracy} - "
                           f"**{'met' if ratio >= 3 and better else 'missed'}**")
        for ours in ours_all:
            rss = [r["peak_rss_mib"] for r in w["end_to_end"] if r["tool"] == ours and not r["error"]]
            growth = max(rss) / min(rss)
            out.append(f"- {name}: {ours} peak memory flat from 64 to {top} samples (<= 1.1x): {growth:.2f}x - "
                       f"**{'met' if growth <= 1.1 else 'missed'}**")
        floor = at.get("fp32-pass", {}).get("seconds")
        for ours in ours_all:
            if floor:
                multiple = at[ours]["seconds"] / floor
                out.append(f"- {name}: {ours} calibration <= 1.5x the plain FP32 pass: {multiple:.1f}x - "
                           f"**{'met' if multiple <= 1.5 else 'missed'}**")
        scopes = w.get("anatomy") or {}
        if "all" in scopes:
            a = scopes["all"]
            per = 1e3 / a["samples"]
            why = (f"  - why, {name}: every one of the {a['values_per_sample'] / 1e6:.2f} M activation values of a "
                   f"sample is histogrammed exactly; per sample that is {a['histograms'] * per:.2f} ms of histograms "
                   f"({a['histograms'] / (a['samples'] * a['values_per_sample']) * 1e9:.2f} ns per value), with "
                   f"{a['inference'] * per:.2f} ms of inference with every activation as an output running "
                   f"alongside, {a['collect_s'] * per:.2f} ms in all, against {a['fp32_pass_s'] * per:.2f} ms for "
                   "the plain pass")
            if "qdq" in scopes:
                q = scopes["qdq"]
                why += (f"; `--tensors qdq` ({q['values_per_sample'] / 1e6:.2f} M values) brings collection to "
                        f"{q['collect_s'] / q['fp32_pass_s']:.1f}x the plain pass")
            out.append(why)
    return out


def machine_info() -> dict:
    """The machine and the versions a benchmark ran with."""
    import onnxruntime

    try:
        from importlib.metadata import version

        modelopt = version("nvidia-modelopt")
    except Exception:
        modelopt = "not installed"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"cpus": os.cpu_count(), "cpu": cpu, "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "onnxruntime": onnxruntime.__version__, "modelopt": modelopt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["fashion", "mobilenetv2"], nargs="+",
                        default=["fashion", "mobilenetv2"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--memory-gib", type=float, default=16.0, help="address-space cap of each child")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per child run")
    parser.add_argument("--kl-samples", type=int, default=256, help="samples behind the KL-search histograms")
    parser.add_argument("--parts", choices=["kl", "anatomy", "e2e"], nargs="+", default=["kl", "anatomy", "e2e"],
                        help="which measurements to (re)run; the others keep their numbers from the JSON")
    parser.add_argument("--tools", nargs="+", help="run only these tools; their rows replace the JSON's")
    parser.add_argument("--render-only", action="store_true", help="re-render the Markdown from the JSON")
    args = parser.parse_args()
    path = ROOT / "reports" / "benchmarks.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    if "workloads" not in previous:  # a file from before the workloads split: start afresh
        previous = {}
    # Keep only per-workload KL results (files from before the split held one flat result).
    previous["kl"] = {k: v for k, v in previous.get("kl", {}).items() if isinstance(v, dict) and "tensors" in v}
    if args.render_only:
        text = render(previous)
        (ROOT / "reports" / "benchmarks.md").write_text(text)
        print(text)
        return
    result = {"machine": machine_info(), "repeats": args.repeats, "kl": previous.get("kl", {}),
              "workloads": previous.get("workloads", {})}
    for name in args.workload:
        load = workload(name)
        print(f"== {name}", file=sys.stderr, flush=True)
        entry = result["workloads"].setdefault(name, {})
        entry.update(label=load["label"], trained=load["trained"])
        if "kl" in args.parts:
            result["kl"][name] = kl_search(load, repeats=5, samples=args.kl_samples)
        if "anatomy" in args.parts:
            entry["anatomy"] = {scope: anatomy(load, 256, scope) for scope in ("all", "qdq")}
        if "e2e" in args.parts:
            if args.tools:
                load["tools"] = [t for t in load["tools"] if t in args.tools]
            with tempfile.TemporaryDirectory() as models:
                rows = end_to_end(load, args.sizes, args.repeats, args.memory_gib, args.timeout, Path(models))
                accuracy = evaluate_models(Path(models), load["tools"]) if load["trained"] else None
            if args.tools:  # merge: the new rows replace those of the same tool and size
                entry["remeasured"] = {"tools": list(load["tools"]), "at": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                          time.gmtime())}
                fresh = {(r["tool"], r["samples"]) for r in rows}
                kept = [r for r in entry.get("end_to_end", []) if (r["tool"], r["samples"]) not in fresh]
                order = {t: i for i, t in enumerate(workload(name)["tools"])}
                rows = sorted(kept + rows, key=lambda r: (r["samples"], order.get(r["tool"], 99)))
                if accuracy is not None:
                    accuracy = {**entry.get("accuracy", {}), **accuracy}
            else:
                entry.pop("remeasured", None)
            entry["end_to_end"] = rows
            if accuracy is not None:
                entry["accuracy"] = accuracy
        path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    text = render(result)
    (ROOT / "reports" / "benchmarks.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
