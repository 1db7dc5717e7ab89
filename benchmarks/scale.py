"""Scale-out benchmark: wall time of ``quantlab collect``, ``sweep`` and ``tune`` against the executor
and its number of workers, and a cost model of N nodes that says where scaling stops.

    python benchmarks/scale.py --label "2-core AMD EPYC (this machine)" --workers 1 2 \\
        --executors local processes ray --mobilenet-samples 256
    python benchmarks/scale.py --label "16-core GPU machine (CPU only)" --workers 1 2 4 8 16 \\
        --executors local processes --mobilenet-samples 1024 --repeats 2
                                                        # -> reports/scale.{md,json}

Every figure is one whole CLI process, as a user runs it (interpreter, imports, the worker pool or
the Ray instance starting, the work, the merge, the file written); medians of ``--repeats``.
``local`` is the default executor with its defaults (ONNX Runtime's threads and the histogram
threads on every CPU); ``processes``/``ray`` with W workers give each worker ``CPUs // W`` threads.
The output of every run is hashed: statistics files (collect) and the ranking with every number
(sweep) must be identical across executors and worker counts on one machine.

Workloads: ``mobilenetv2`` (MobileNetV2 1.0 at 3x224x224 with seeded weights,
benchmarks/models/make_mobilenetv2.py; ``--mobilenet-samples`` of its calibration tensors) and the
embedded Fashion-MNIST CNN (512 calibration images; sweep on its 1000 held-out images). The
calibration tensors are rebuilt from ``benchmarks/data/mobilenetv2/calib-28.npy`` (the 1024 source
images, 28x28 uint8, 0.8 MB; written here from the Fashion-MNIST training file) when ``calib.npy``
(616 MB) is absent, e.g. on a machine the working tree was copied to: bilinear upscaling with
half-pixel centres, as torch's, equal to make_mobilenetv2.py's tensors to 1e-6.

The cost model (``--model-costs``, measured in this process on this machine): per-sample collection
time of one worker thread, the merge of one shard's statistics (tensors x bins), the bytes a shard
sends back and their (un)pickling; predicted wall time on N nodes follows in the report.
Each run keeps the other machines' results in reports/scale.json.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import pickle
import platform
import statistics as stats_lib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from quantlab.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
MOBILENET = ROOT / "benchmarks" / "data" / "mobilenetv2"
FASHION_TRAIN = [ROOT / "benchmarks" / "data" / "fashion" / "train-images-idx3-ubyte.gz",
                 Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")]
REPORT = ROOT / "reports" / "scale.md"
RESULTS = ROOT / "reports" / "scale.json"
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
BATCH = 32
# Assumed for the cost model of several nodes (not measured here: one machine): a 10 GbE link.
NETWORK_BYTES_PER_S = 1.25e9


# --------------------------------------------------------------------------- data


def mobilenet_sources() -> np.ndarray:
    """The 1024 source images of the MobileNetV2 calibration tensors (Fashion-MNIST train 0..1023)."""
    small = MOBILENET / "calib-28.npy"
    if small.exists():
        return np.load(small)
    for path in FASHION_TRAIN:
        if path.exists():
            with gzip.open(path, "rb") as handle:
                raw = np.frombuffer(handle.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
            MOBILENET.mkdir(parents=True, exist_ok=True)
            np.save(small, raw[:1024])
            return raw[:1024].copy()
    raise SystemExit("no MobileNetV2 calibration data: run benchmarks/models/make_mobilenetv2.py, or give "
                     "benchmarks/data/mobilenetv2/calib-28.npy or the Fashion-MNIST training file")


def upscale(images: np.ndarray, size: int = 224) -> np.ndarray:
    """uint8 [n, 28, 28] -> float32 [n, 3, size, size]: bilinear (half-pixel centres, as torch's
    ``interpolate(mode="bilinear", align_corners=False)``), ImageNet mean/std."""
    def axis(out: int, inp: int):
        source = np.maximum((np.arange(out, dtype=np.float64) + 0.5) * (inp / out) - 0.5, 0)
        low = np.floor(source).astype(int)
        return low, np.minimum(low + 1, inp - 1), source - low

    y0, y1, fy = axis(size, images.shape[1])
    x0, x1, fx = axis(size, images.shape[2])
    x = images.astype(np.float32) / 255
    rows = x[:, y0, :] * (1 - fy)[None, :, None] + x[:, y1, :] * fy[None, :, None]
    out = (rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx).astype(np.float32)[:, None].repeat(3, 1)
    return ((out - MEAN[:, None, None]) / STD[:, None, None]).astype(np.float32)


def mobilenet_data() -> Path:
    """benchmarks/data/mobilenetv2/calib.npy, rebuilt from the source images when absent."""
    target = MOBILENET / "calib.npy"
    if target.exists():
        return target
    sources = mobilenet_sources()
    started = time.perf_counter()
    out = np.lib.format.open_memmap(target.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32,
                                    shape=(len(sources), 3, 224, 224))
    for start in range(0, len(sources), 64):
        out[start:start + 64] = upscale(sources[start:start + 64])
    out.flush()
    del out
    os.replace(target.with_suffix(".tmp.npy"), target)
    print(f"rebuilt {target} from the source images in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return target


# --------------------------------------------------------------------------- whole-process runs


def workload_command(workload: str, out: Path, args) -> list[str]:
    model = str(MOBILENET / "model.onnx")
    if workload == "collect:mobilenetv2":
        return ["collect", model, "--data", str(mobilenet_data()), "--num-samples", str(args.mobilenet_samples),
                "--batch-size", str(BATCH), "-o", str(out), "-q"]
    if workload == "collect:fashion":
        return ["collect", "--batch-size", str(BATCH), "-o", str(out), "-q"]
    if workload == "sweep:fashion":
        return ["sweep", "--batch-size", str(BATCH), "--json", "-q"]
    if workload == "tune:fashion":  # a budget that binds: the sensitivity and a few search steps run
        return ["tune", "--batch-size", str(BATCH), "--max-drop", "0", "--max-float-layers", "3", "--sensitivity",
                "float", "--eval-num-samples", "500", "-o", str(out.with_name("tuned.qdq.onnx")), "--json", "-q"]
    if workload == "sweep:mobilenetv2":
        data = str(mobilenet_data())
        return ["sweep", model, "--data", data, "--num-samples", str(args.mobilenet_samples), "--eval-data", data,
                "--eval-num-samples", str(args.mobilenet_sweep_samples), "--batch-size", str(BATCH), "--json", "-q"]
    raise ValueError(workload)


def output_digest(workload: str, out: Path, stdout: str) -> str:
    """What must be identical across executors: the statistics file, or the sweep's numbers."""
    if workload.startswith("collect"):
        return hashlib.sha256(out.read_bytes()).hexdigest()
    data = json.loads(stdout)
    if workload.startswith("tune"):
        kept = {key: data[key] for key in ("all_int8", "sensitivity", "ranking", "search", "fallback", "written")}
        return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()
    return hashlib.sha256(json.dumps(data["results"], sort_keys=True).encode()).hexdigest()


def run_once(workload: str, executor: str, workers, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="quantlab-scale-") as folder:
        out = Path(folder) / "stats.npz"
        command = [sys.executable, "-m", "quantlab", *workload_command(workload, out, args), "--executor", executor]
        if workers is not None:
            command += ["--workers", str(workers)]
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(command)}\n{proc.stderr[-2000:]}")
        return {"seconds": seconds, "digest": output_digest(workload, out, proc.stdout)}


def measure(workload: str, executor: str, workers, args) -> dict:
    repeats = args.repeats if workload.startswith("collect") else 1
    runs = [run_once(workload, executor, workers, args) for _ in range(repeats)]
    seconds = [r["seconds"] for r in runs]
    row = {"workload": workload, "executor": executor, "workers": workers, "runs": len(runs),
           "seconds": stats_lib.median(seconds), "all_seconds": seconds, "digest": runs[0]["digest"],
           "repeatable": len({r["digest"] for r in runs}) == 1,
           "samples": (args.mobilenet_samples if workload.endswith("mobilenetv2") else 512) if workload.startswith(
               "collect") else ("512 + 1000 held-out" if workload == "sweep:fashion"
                                else "512 + 500 held-out" if workload == "tune:fashion"
                                else f"{args.mobilenet_samples} + {args.mobilenet_sweep_samples} held-out")}
    print(f"{workload:22s} {executor:10s} {str(workers or '-'):>3s}  {row['seconds']:7.2f} s  {row['digest'][:12]}",
          file=sys.stderr)
    return row


# --------------------------------------------------------------------------- cost model inputs


def model_costs(samples: int = 32) -> dict:
    """In this process: the parts of a shard's cost that the cost model scales."""
    from quantlab import defaults
    from quantlab.calibrate import CollectShard, collect_shard
    from quantlab.executors.shipping import ModelRef
    from quantlab.graph import load_model
    from quantlab.workload import DataSpec, DataTask

    found = {}
    for name, model, data in (("mobilenetv2", MOBILENET / "model.onnx", mobilenet_data()),
                              ("fashion", defaults.MODEL, defaults.CALIBRATION_DATA)):
        graph = load_model(model)
        spec = DataSpec(str(data), batch_size=BATCH)
        ref = ModelRef.of(graph)
        DataTask(ref, spec).open()  # opened once per worker; not part of a shard's cost
        shard = CollectShard(ref, spec, 0, samples, BATCH, 2048, None, "all", 1, 1)
        collect_shard(CollectShard(ref, spec, 0, BATCH, BATCH, 2048, None, "all", 1, 1))  # warm-up
        started = time.perf_counter()
        first = collect_shard(shard)
        per_sample = (time.perf_counter() - started) / samples
        second = collect_shard(CollectShard(ref, spec, samples, 2 * samples, BATCH, 2048, None, "all", 1, 1))
        payload = pickle.dumps(second, protocol=pickle.HIGHEST_PROTOCOL)
        started = time.perf_counter()
        for _ in range(5):
            pickle.loads(pickle.dumps(second, protocol=pickle.HIGHEST_PROTOCOL))
        pickling = (time.perf_counter() - started) / 5
        merges = []
        for _ in range(5):
            target = pickle.loads(pickle.dumps(first))
            started = time.perf_counter()
            target.merge(second)
            merges.append(time.perf_counter() - started)
        cells = len(second.tensors) * second.bins
        found[name] = {"per_sample_s_one_thread": per_sample, "tensors": len(second.tensors), "bins": second.bins,
                       "merge_s": stats_lib.median(merges), "merge_ns_per_cell": stats_lib.median(merges) / cells * 1e9,
                       "shard_bytes": len(payload), "pickle_roundtrip_s": pickling}
        print(f"costs {name}: {found[name]}", file=sys.stderr)
    return found


# --------------------------------------------------------------------------- report


def machine_info(label: str) -> dict:
    import onnxruntime

    try:
        import numba

        kernel = f"numba {numba.__version__}"
    except ImportError:
        kernel = "numpy path (numba not installed)"
    from calibration_core import cpu_name

    from quantlab.collector import available_cpus

    cpu = cpu_name()

    return {"label": label, "cpus": available_cpus(), "cpu": cpu, "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "histogram_kernel": kernel,
            "load_average_at_start": round(os.getloadavg()[0], 2)}


def predict(costs: dict, fixed_s: float, samples: int, nodes: int, cores: int) -> dict:
    """Wall time of a collection of ``samples`` on ``nodes`` nodes of ``cores`` cores (one worker per
    core), as the shards of quantlab.executors.plan_shards go: compute in parallel, the driver's
    receive-unpickle-merge in series."""
    workers = nodes * cores
    batches = -(-samples // BATCH)
    shards = max(1, min(batches, 4 * workers))
    per_shard = -(-batches // shards) * BATCH
    waves = -(-shards // workers)
    compute = waves * per_shard * costs["per_sample_s_one_thread"]
    transfer = costs["shard_bytes"] / NETWORK_BYTES_PER_S if nodes > 1 else 0.0
    driver = shards * (costs["merge_s"] + costs["pickle_roundtrip_s"] / 2 + transfer)
    return {"workers": workers, "shards": shards, "compute_s": compute, "driver_s": driver,
            "total_s": fixed_s + compute + driver}


def render(results: dict) -> str:
    lines = ["# Scale-out: collect and sweep against executors and workers", "",
             "Regenerate: `python benchmarks/scale.py --label NAME ...` on each machine (see its docstring; each run "
             "keeps the other machines' results in `reports/scale.json`). Every figure is one whole `quantlab` process "
             "as a user runs it (interpreter, imports, starting the workers or Ray, the work, the merge, the file); "
             "medians of the runs listed. `local` is the default executor with its defaults (ONNX Runtime and the "
             "histogram threads on every CPU); `processes`/`ray` with W workers give each worker CPUs // W threads. "
             "Workloads: `mobilenetv2`, MobileNetV2 1.0 at 3x224x224 with seeded weights "
             "(benchmarks/models/make_mobilenetv2.py), batches of 32; `fashion`, the embedded Fashion-MNIST CNN "
             "(collect: its 512 calibration images; sweep: every method, evaluated on its 1000 held-out images).", ""]
    for label, machine in results["machines"].items():
        info = machine["info"]
        lines += [f"## {label}", "",
                  f"{info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, ONNX Runtime {info['onnxruntime']}, "
                  f"histograms: {info['histogram_kernel']}. Load average (1 min) {info.get('load_average_at_start')} "
                  f"at the start, {info.get('load_average_at_end')} at the end"
                  + (" (other jobs shared this machine)" if info.get("load_average_at_start", 0) > 1.0 else "") + ".",
                  ""]
        lines += ["| workload | samples | executor | workers | wall time (s) | runs | vs local | vs 1 worker "
                  "| output identical to local |", "|---|---|---|---|---|---|---|---|---|"]
        rows = machine["runs"]
        for workload in dict.fromkeys(r["workload"] for r in rows):
            group = [r for r in rows if r["workload"] == workload]
            local = next((r for r in group if r["executor"] == "local"), None)
            for row in group:
                one = next((r for r in group if r["executor"] == row["executor"] and r["workers"] == 1), None)
                vs_local = f"{local['seconds'] / row['seconds']:.2f}x" if local else ""
                vs_one = f"{one['seconds'] / row['seconds']:.2f}x" if one and row["workers"] else ""
                same = "yes" if local and row["digest"] == local["digest"] and row["repeatable"] else (
                    "" if not local else "**no**")
                lines.append(f"| {workload} | {row['samples']} | {row['executor']} | {row['workers'] or '-'} | "
                             f"{row['seconds']:.2f} | {row['runs']} | {vs_local} | {vs_one} | {same} |")
        lines.append("")
        for note in machine.get("notes", []):
            lines += [note, ""]
        costs = machine.get("costs")
        if costs:
            lines += [f"### Cost model inputs ({label})", "",
                      "| workload | per sample, one worker thread (ms) | tensors x bins | merge of one shard (ms) | "
                      "merge (ns per cell) | bytes a shard sends back | pickle + unpickle (ms) |",
                      "|---|---|---|---|---|---|---|"]
            for name, c in costs.items():
                lines.append(f"| {name} | {c['per_sample_s_one_thread'] * 1e3:.1f} | {c['tensors']} x {c['bins']} | "
                             f"{c['merge_s'] * 1e3:.2f} | {c['merge_ns_per_cell']:.2f} | {c['shard_bytes']:,} | "
                             f"{c['pickle_roundtrip_s'] * 1e3:.2f} |")
            lines.append("")
    lines += findings(results)
    lines += cost_model_section(results)
    return "\n".join(lines) + "\n"


def _row(machine: dict, workload: str, executor: str, workers=None):
    return next((r for r in machine["runs"] if r["workload"] == workload and r["executor"] == executor
                 and r["workers"] == workers), None)


def loaded_sample_cost(machine: dict):
    """Per-sample cost of one worker when every worker is busy: the wall time of the largest processes
    collection on MobileNetV2 beyond T_fixed, times its workers, over its samples beyond T_fixed's 32."""
    runs = [r for r in machine["runs"] if r["workload"] == "collect:mobilenetv2" and r["executor"] == "processes"]
    if not runs or "fixed_s" not in machine:
        return None
    widest = max(runs, key=lambda r: r["workers"])
    if widest["samples"] <= BATCH:
        return None
    return (widest["seconds"] - machine["fixed_s"]) * widest["workers"] / (widest["samples"] - BATCH), widest


def findings(results: dict) -> list[str]:
    """The target, met or missed, and what the numbers say, computed from the table above."""
    lines = ["## Findings", ""]
    for label, machine in results["machines"].items():
        local = _row(machine, "collect:mobilenetv2", "local")
        runs = [r for r in machine["runs"] if r["workload"] == "collect:mobilenetv2" and r["executor"] == "processes"]
        if not local or not runs:
            continue
        best = min(runs, key=lambda r: r["seconds"])
        one = _row(machine, "collect:mobilenetv2", "processes", 1)
        speedup = local["seconds"] / best["seconds"]
        if machine["info"]["cpus"] >= 16 and local["samples"] == 1024:
            verdict = "**met**" if speedup >= 8 else "**missed**"
            lines.append(f"- Target, `processes` on 16 cores at least 8x faster than `local` for collection of 1024 "
                         f"samples on MobileNetV2 ({label}): {verdict}. Best: {best['workers']} workers, "
                         f"{best['seconds']:.2f} s against {local['seconds']:.2f} s, {speedup:.2f}x.")
        else:
            lines.append(f"- {label}: collection of {local['samples']} MobileNetV2 samples, best `processes` run "
                         f"{best['workers']} workers, {best['seconds']:.2f} s against {local['seconds']:.2f} s local "
                         f"({speedup:.2f}x).")
        if one:
            lines.append(f"  Against one worker process with all {machine['info']['cpus']} CPUs ({one['seconds']:.2f} "
                         f"s) the best is {one['seconds'] / best['seconds']:.2f}x.")
        fixed = machine.get("fixed_s")
        loaded = loaded_sample_cost(machine)
        costs = machine.get("costs", {}).get("mobilenetv2")
        if fixed and loaded and costs and machine["info"]["cpus"] >= 16:
            per_sample, widest = loaded
            eight_x = local["seconds"] / 8
            at8, at16 = (_row(machine, "collect:mobilenetv2", "processes", w) for w in (8, 16))
            lines.append(
                "  Why: (1) `local` is not one thread: ONNX Runtime and the histogram kernel already use every CPU, "
                f"so 8x over it would be {eight_x:.2f} s, while the fixed cost alone (interpreter, imports, "
                f"{widest['workers']} workers starting, each loading the model and the kernel: a 32-sample "
                f"collection) is {fixed:.2f} s. (2) With all {widest['workers']} workers busy, a worker spends "
                f"{per_sample * 1e3:.1f} ms a sample, against {costs['per_sample_s_one_thread'] * 1e3:.1f} ms for one "
                "worker alone (the likely cause, not measured here: the memory bandwidth and caches the workers "
                "share; every activation is written by ONNX Runtime and read back by the histograms).")
            if at8 and at16 and at16["seconds"] >= at8["seconds"]:
                lines.append("  (3) Workers beyond 8 buy nothing here: the 16 CPUs give no more throughput than 8.")
        lines.append("")
    sweeps = [(label, _row(m, "sweep:fashion", "local"), _row(m, "sweep:fashion", "processes", 1))
              for label, m in results["machines"].items()]
    sweeps = [(label, local, one) for label, local, one in sweeps if local and one]
    if sweeps:
        lines.append("- Sweep: " + "; ".join(f"{label}: `local` {local['seconds']:.2f} s, one worker process "
                                             f"{one['seconds']:.2f} s" for label, local, one in sweeps)
                     + ". Its statistics collection and its evaluation run as shards; calibrating the methods (method "
                     "`auto` runs the model on calibration samples to judge ranges) and the report stay in the driver, "
                     "which bounds its scaling. Evaluation sessions (FP32 and one per method) do not spin while idle, "
                     "under every executor; a worker's also have their threads pinned.")
        digests = {r["digest"] for m in results["machines"].values() for r in m["runs"]
                   if r["workload"] == "sweep:fashion"}
        if len(digests) == 1:
            lines.append("  Every sweep above, on both machines, every executor and worker count, gave the same "
                         "ranking and numbers (one digest).")
    lines.append("")
    return lines


def cost_model_section(results: dict) -> list[str]:
    basis = next((m for m in results["machines"].values() if m.get("costs") and m["info"]["cpus"] >= 16), None)
    basis = basis or next((m for m in results["machines"].values() if m.get("costs")), None)
    if basis is None:
        return []
    costs = dict(basis["costs"]["mobilenetv2"])
    fixed = basis.get("fixed_s", 3.0)
    loaded = loaded_sample_cost(basis)
    alone = costs["per_sample_s_one_thread"]
    if loaded:  # what a worker costs when the whole node is busy: what N busy nodes will see
        costs["per_sample_s_one_thread"] = loaded[0]
    cores = 16
    lines = ["## Cost model: N nodes", "",
             f"From the inputs measured on {basis['info']['label']}: a collection of S samples on N nodes of {cores} "
             "cores (one worker per core, W = 16 N) is cut into min(S/32, 4 W) shards of whole batches; its wall "
             "time is",
             "",
             "    T = T_fixed + ceil(shards / W) * samples_per_shard * t_sample"
             " + shards * (t_merge + t_unpickle + bytes_per_shard / bandwidth)",
             "",
             f"with t_sample = {costs['per_sample_s_one_thread'] * 1e3:.1f} ms (a worker of a fully busy node, "
             f"MobileNetV2, every tensor, from the widest run above; {alone * 1e3:.1f} ms for a worker alone), "
             f"t_merge = {costs['merge_s'] * 1e3:.2f} ms ({costs['tensors']} tensors x "
             f"{costs['bins']} bins at {costs['merge_ns_per_cell']:.2f} ns a cell), "
             f"{costs['shard_bytes'] / 1e6:.1f} MB per shard, bandwidth {NETWORK_BYTES_PER_S / 1e9:.2f} GB/s "
             "(10 GbE, assumed) between nodes, and "
             f"T_fixed = {fixed:.1f} s (interpreter, imports, workers starting: measured as the wall time of a "
             "32-sample collection on all workers). The merge is the driver's alone, in shard order; everything else "
             "runs on the workers.", "",
             "| samples | nodes | workers | shards | compute on workers (s) | driver: receive + merge (s) "
             "| predicted wall time (s) |", "|---|---|---|---|---|---|---|"]
    for samples in (1024, 50_000):
        for nodes in (1, 2, 4, 8, 16, 64):
            p = predict(costs, fixed, samples, nodes, cores)
            lines.append(f"| {samples:,} | {nodes} | {p['workers']} | {p['shards']} | {p['compute_s']:.2f} | "
                         f"{p['driver_s']:.2f} | {p['total_s']:.2f} |")
    lines.append("")
    for label, machine in results["machines"].items():
        ray, processes = (_row(machine, "collect:fashion", name, 1) for name in ("ray", "processes"))
        if ray and processes:
            lines += [f"Not in T_fixed above: a Ray cluster's own start. On {label}, `--executor ray` starting a local "
                      f"Ray instance cost {ray['seconds'] - processes['seconds']:.1f} s more than `processes` for the "
                      "same one-worker collection; joining a running cluster (`--address`) skips the start but not "
                      "its workers' imports.", ""]
    lines += limits(costs, fixed, cores)
    return lines


def limits(costs: dict, fixed: float, cores: int) -> list[str]:
    """Where scaling stops, in words, from the same model."""
    batches_1024 = -(-1024 // BATCH)
    per_batch = BATCH * costs["per_sample_s_one_thread"]
    driver_per_shard = costs["merge_s"] + costs["pickle_roundtrip_s"] / 2 + costs["shard_bytes"] / NETWORK_BYTES_PER_S
    # Past one batch per shard, more workers only add shards the driver merges: compute ~ S * t / W,
    # driver ~ 4 W * per-shard cost; they meet at W = sqrt(S * t / (4 * per-shard cost)).
    crossing = {samples: (samples * costs["per_sample_s_one_thread"] / (4 * driver_per_shard)) ** 0.5
                for samples in (50_000, 1_000_000)}
    return [
        f"Where it stops. (1) Shards are whole batches, so at most S/32 workers have work: at 1,024 samples that is "
        f"{batches_1024} workers ({batches_1024 // cores} nodes of {cores}); after that one batch "
        f"({per_batch:.1f} s of one worker's time) is the floor, plus T_fixed. (2) T_fixed ({fixed:.1f} s here) does "
        f"not shrink with workers: it is {fixed / predict(costs, fixed, 1024, 1, cores)['total_s']:.0%} of the "
        f"predicted wall time of 1,024 samples on one node of {cores}. (3) "
        "The driver receives and merges every shard in turn "
        f"({driver_per_shard * 1e3:.1f} ms a shard across nodes); with 4 shards per worker the workers' compute "
        f"(S t / W) falls to the driver's merging (4 W x {driver_per_shard * 1e3:.1f} ms) at about W = "
        f"{crossing[50_000]:.0f} workers for 50,000 samples and W = {crossing[1_000_000]:.0f} for 1,000,000; "
        "beyond that, more nodes make it slower (fewer shards per worker would move the limit: the merge is "
        "tensors x bins per shard, independent of the shard's size).", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", help="this machine's name in the report")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--executors", nargs="+", default=["local", "processes"],
                        choices=["local", "processes", "ray"])
    parser.add_argument("--workloads", nargs="+",
                        default=["collect:mobilenetv2", "collect:fashion", "sweep:fashion"],
                        choices=["collect:mobilenetv2", "collect:fashion", "sweep:fashion", "sweep:mobilenetv2",
                                 "tune:fashion"])
    parser.add_argument("--mobilenet-samples", type=int, default=1024)
    parser.add_argument("--mobilenet-sweep-samples", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each collect figure (median)")
    parser.add_argument("--json", type=Path, default=RESULTS, help="results file (other machines' kept)")
    parser.add_argument("--render-only", action="store_true", help="write reports/scale.md from --json")
    parser.add_argument("--update", action="store_true", help="re-measure only --workloads of this machine")
    args = parser.parse_args()
    results = json.loads(args.json.read_text()) if args.json.exists() else {"machines": {}}
    if not args.render_only:
        if not args.label:
            parser.error("--label names this machine in the report")
        machine = {"info": machine_info(args.label), "runs": []}
        previous = results["machines"].get(args.label)
        if args.update and previous:  # re-measure only these workloads; keep the rest of this machine's results
            machine = {**previous, "info": {**previous["info"], **machine["info"]},
                       "runs": [r for r in previous["runs"] if r["workload"] not in args.workloads]}
            machine.setdefault("notes", []).append(
                f"Rows of {', '.join(args.workloads)} re-measured in a later run (see the load average).")
        results["machines"][args.label] = machine
        args.json.parent.mkdir(parents=True, exist_ok=True)
        for workload in args.workloads:
            for executor in args.executors:
                for workers in ([None] if executor == "local" else args.workers):
                    machine["runs"].append(measure(workload, executor, workers, args))
                    write_text_atomic(args.json, json.dumps(results, indent=1) + "\n")  # a cut-short run keeps these
        if not args.update:
            biggest = max(args.workers)
            fixed_args = argparse.Namespace(**{**vars(args), "mobilenet_samples": BATCH, "repeats": 1})
            machine["fixed_s"] = measure("collect:mobilenetv2", "processes", biggest, fixed_args)["seconds"]
            machine["costs"] = model_costs()
        machine["info"]["load_average_at_end"] = round(os.getloadavg()[0], 2)
        write_text_atomic(args.json, json.dumps(results, indent=1) + "\n")
    if args.json.resolve() == RESULTS.resolve() or args.render_only:
        write_text_atomic(REPORT, render(results))
        print(f"wrote {REPORT}", file=sys.stderr)


if __name__ == "__main__":
    main()
