"""Benchmark of the calibration core: calibration time against the plain FP32 pass, the histogram
kernel, KL search speed, memory scaling. One machine per run; results of other machines are kept.

    apt-get install -y dataset-fashion-mnist            # real Fashion-MNIST samples (else the embedded 512, repeated)
    python benchmarks/models/make_mobilenetv2.py        # the ImageNet-sized workload (needs torch)
    python benchmarks/calibration_core.py --baseline-rev 2dc0b88 --label "2-core AMD EPYC"
                                                        # -> reports/calibration-core.{md,json}

Measures, on this machine:
1. calibration as a multiple of the FP32 pass, whole processes side by side: ``quantlab calibrate
   --method entropy`` (all tensors, batches of 32, ``--threads`` 1, 2, 4, 8, 16 up to this
   machine's CPUs) on the MobileNetV2-architecture model and on the embedded Fashion-MNIST CNN,
   against one plain FP32 ONNX Runtime pass over the same samples in its own process (start-up,
   model load, data read and inference; the inference loop alone is reported too). Every figure
   includes every start-up: the interpreter, the imports, numba and its cached kernel (a warm-up
   process first fills numba's cache; the cold start is measured in 2.). ``--baseline-rev``
   also times the code before the compiled kernel (this tree with ``quantlab/histogram.py`` and
   ``quantlab/collector.py`` of that revision); the cache and statistics bytes of every run are
   compared with each other and with the baseline's; ``--tensors qdq`` at the most threads too;
   and, in one process, where collection time goes: the plain FP32 loop, the collector's inference
   alone (every activation an output, histograms left unfilled) and the whole collector;
2. the histogram kernel: ns per activation value on the model's real activations, numpy path vs
   compiled kernel, on 1..N threads (pieces of the activations, no inference), and the kernel's
   start-up in fresh processes: cold (empty numba cache: compile) and warm (cache load);
3. entropy (KL) threshold search, ms per tensor, on the embedded model's real histograms, and
   agreement with the naive reference in tests/;
4. peak RSS of a whole ``quantlab calibrate`` process (embedded model) at N/4, N and 10x N samples,
   N = ``--fashion-samples``: below and above the size from which the kernel is loaded.

Medians of ``--repeats`` runs, one run where a single run takes longer than ``--long`` seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics as stats_lib
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
MOBILENET = ROOT / "benchmarks" / "data" / "mobilenetv2"
BASELINE = ROOT / "benchmarks" / "data" / "baseline"  # a package tree: BASELINE/quantlab
BATCH = 32
THREADS = [1, 2, 4, 8, 16]

FP32_CHILD = r"""
import sys, time
start = time.perf_counter()
import numpy as np, onnxruntime as ort
model, data, uint8 = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
x = np.load(data, mmap_mode="r")
loop = time.perf_counter()
for i in range(0, len(x), 32):
    batch = np.ascontiguousarray(x[i:i + 32])
    if uint8:
        batch = (batch.astype(np.float32) / 255)[:, None]
    session.run(None, {name: batch})
end = time.perf_counter()
print(end - loop, end - start)
"""

STARTUP_CHILD = r"""
import time
start = time.perf_counter()
from quantlab import histogram
ok = histogram.load_kernel()
info = histogram.kernel_info()
import json
print(json.dumps({"ok": ok, "seconds": time.perf_counter() - start, **info}))
"""

# Peak RSS from /proc/self/status (VmHWM, this process's own memory): ru_maxrss would also count the
# parent's pages, which a child started by vfork holds until exec.
MEMORY_CHILD = """
import resource, sys, time
from quantlab import calibrate, DataSpec, defaults
t = time.perf_counter()
calibrate(defaults.MODEL, DataSpec(sys.argv[1], batch_size=int(sys.argv[2])), output=sys.argv[3], progress=False)
seconds = time.perf_counter() - t
try:
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0].split()[1]
except (OSError, IndexError):
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from quantlab import histogram
print(seconds, hwm, histogram.kernel_info()["state"])
"""


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def median_runs(run, repeats: int, long: float) -> tuple[list, object]:
    """``run()`` ``repeats`` times (once if the first run takes over ``long`` seconds)."""
    results = [run()]
    if results[0]["seconds"] <= long:
        results += [run() for _ in range(repeats - 1)]
    return results, stats_lib.median(r["seconds"] for r in results)


def load_images(count: int) -> tuple[np.ndarray, str]:
    from quantlab import defaults
    from quantlab.data import IdxDataset

    if FASHION.exists():
        images = IdxDataset(FASHION).images
        source = f"Fashion-MNIST train split ({FASHION})"
    else:
        images = IdxDataset(defaults.CALIBRATION_DATA).images
        source = "embedded 512 Fashion-MNIST images, repeated"
    reps = -(-count // len(images))
    return np.concatenate([images] * reps)[:count], source


def workloads(args, tmp: Path) -> list[dict]:
    from quantlab import defaults

    out = []
    if (MOBILENET / "model.onnx").exists() and (MOBILENET / "calib.npy").exists():
        x = np.load(MOBILENET / "calib.npy", mmap_mode="r")
        count = min(args.mobilenet_samples, len(x))
        data = tmp / f"mobilenetv2-{count}.npy"
        np.save(data, x[:count])
        out.append({"name": "mobilenetv2", "model": str(MOBILENET / "model.onnx"), "data": str(data),
                    "samples": count, "uint8": False,
                    "about": "MobileNetV2 1.0, 3x224x224, seeded weights (benchmarks/models/make_mobilenetv2.py)"})
    images, source = load_images(args.fashion_samples)
    data = tmp / f"fashion-{len(images)}.npy"
    np.save(data, images)
    out.append({"name": "fashion", "model": str(defaults.MODEL), "data": str(data), "samples": len(images),
                "uint8": True, "about": f"the embedded Fashion-MNIST CNN; {source}"})
    return out


def make_baseline(rev: str, dest: Path) -> None:
    """This tree's package with histogram.py and collector.py as they were at ``rev``."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(ROOT / "quantlab", dest / "quantlab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "calibrators", dest / "quantlab" / "calibrators",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("histogram.py", "collector.py"):
        text = subprocess.run(["git", "show", f"{rev}:quantlab/{name}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        (dest / "quantlab" / name).write_text(text)
    (dest / "REVISION").write_text(rev + "\n")


def calibrate_process(load: dict, threads: int, tmp: Path, baseline: Path | None = None,
                      tensors: str = "all") -> dict:
    """One whole ``quantlab calibrate`` process; its wall time and the sha256 of what it wrote."""
    tag = f"{load['name']}-{'base' if baseline else 'new'}-{threads}-{tensors}"
    cache, stats = tmp / f"{tag}.cache", tmp / f"{tag}.npz"
    command = [sys.executable, "-m", "quantlab", "calibrate", load["model"], "--data", load["data"],
               "--method", "entropy", "--batch-size", str(BATCH), "--threads", str(threads), "-q",
               "--tensors", tensors, "-o", str(cache), "--save-stats", str(stats)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cwd = ROOT
    if baseline is not None:  # the baseline package first on the path, from outside this tree
        env["PYTHONPATH"] = str(baseline)
        cwd = tmp
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr}")
    return {"seconds": seconds, "cache_sha256": sha(cache), "stats_sha256": sha(stats),
            "stderr": proc.stderr.strip()}


def fp32_process(load: dict) -> dict:
    start = time.perf_counter()
    command = [sys.executable, "-c", FP32_CHILD, load["model"], load["data"], "1" if load["uint8"] else "0"]
    proc = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    loop, inside = map(float, proc.stdout.split())
    return {"seconds": seconds, "loop_s": loop, "in_process_s": inside}


def bench_calibration(loads: list[dict], threads: list[int], baseline_threads: list[int], repeats: int,
                      long: float, tmp: Path) -> list[dict]:
    rows = []
    for load in loads:
        calibrate_process(load, threads[-1], tmp)  # warm-up: numba's cache, the page cache
        fp32_runs, fp32 = median_runs(lambda load=load: fp32_process(load), repeats, long)
        row = {"workload": load["name"], "about": load["about"], "samples": load["samples"],
               "fp32_process_s": fp32, "fp32_loop_s": stats_lib.median(r["loop_s"] for r in fp32_runs),
               "fp32_runs": fp32_runs, "calibrate": [], "baseline": []}
        for count in threads:
            runs, seconds = median_runs(lambda load=load, count=count: calibrate_process(load, count, tmp),
                                        repeats, long)
            row["calibrate"].append({"threads": count, "seconds": seconds, "over_fp32": seconds / fp32, "runs": runs})
            print(f"  {load['name']} --threads {count}: {seconds:.2f} s = {seconds / fp32:.2f}x FP32", flush=True)
        if BASELINE.exists():
            for count in baseline_threads:
                runs, seconds = median_runs(
                    lambda load=load, count=count: calibrate_process(load, count, tmp, BASELINE), repeats, long)
                row["baseline"].append({"threads": count, "seconds": seconds, "over_fp32": seconds / fp32,
                                        "runs": runs})
                print(f"  {load['name']} baseline --threads {count}: {seconds:.2f} s = {seconds / fp32:.2f}x FP32",
                      flush=True)
        runs, seconds = median_runs(lambda load=load: calibrate_process(load, threads[-1], tmp, tensors="qdq"),
                                    repeats, long)
        row["qdq"] = {"threads": threads[-1], "seconds": seconds, "over_fp32": seconds / fp32, "runs": runs}
        print(f"  {load['name']} --tensors qdq --threads {threads[-1]}: {seconds:.2f} s = {seconds / fp32:.2f}x FP32",
              flush=True)
        every = [r for entry in row["calibrate"] + row["baseline"] for r in entry["runs"]]
        row["same_cache_bytes"] = len({r["cache_sha256"] for r in every}) == 1
        row["same_statistics_bytes"] = len({r["stats_sha256"] for r in every}) == 1
        row["runs_compared"] = len(every)
        rows.append(row)
    return rows


def activations(load: dict, samples: int) -> list[np.ndarray]:
    """Every float activation (and the input) of ``samples`` samples, from one ONNX Runtime run."""
    import onnxruntime as ort

    from quantlab.graph import add_outputs, load_model

    graph = load_model(load["model"])
    names = [n for n in graph.activations if n not in {s.name for s in graph.inputs}]
    session = ort.InferenceSession(add_outputs(graph.model, names).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = np.load(load["data"], mmap_mode="r")[:samples]
    x = (x.astype(np.float32) / 255)[:, None] if load["uint8"] else np.ascontiguousarray(x)
    outputs = session.run(None, {graph.inputs[0].name: x})
    return [o.reshape(-1) for o in outputs if o.dtype == np.float32] + [x.reshape(-1)]


def bench_kernel(load: dict, samples: int, threads: list[int], tmp: Path) -> dict:
    from quantlab import histogram
    from quantlab.histogram import TensorHistogram

    arrays = activations(load, samples)
    values = sum(a.size for a in arrays)
    pieces = [a[i:i + (1 << 20)] for a in arrays for i in range(0, a.size, 1 << 20)]
    assert histogram.load_kernel(), histogram.kernel_info()
    kernel = histogram._kernel

    def one_pass(use_kernel: bool, count: int) -> float:
        histogram._kernel = kernel if use_kernel else None
        try:
            with ThreadPoolExecutor(count) as pool:
                start = time.perf_counter()
                list(pool.map(lambda piece: TensorHistogram().update(piece), pieces))
                return time.perf_counter() - start
        finally:
            histogram._kernel = kernel

    rows = []
    for count in threads:
        row = {"threads": count}
        for label, use in (("numpy", False), ("kernel", True)):
            one_pass(use, count)
            row[f"{label}_ns_per_value"] = min(one_pass(use, count) for _ in range(3)) / values * 1e9
        rows.append(row)
        print(f"  kernel threads {count}: numpy {row['numpy_ns_per_value']:.2f} ns/value, "
              f"kernel {row['kernel_ns_per_value']:.2f} ns/value", flush=True)
    # Start-up in fresh processes: an empty numba cache (compilation), then the same cache again.
    cache_dir = tmp / "numba-cache"
    startup = {}
    for label in ("cold", "warm"):
        proc = subprocess.run([sys.executable, "-c", STARTUP_CHILD], capture_output=True, text=True, check=True,
                              env={**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)})
        startup[label] = json.loads(proc.stdout)
    return {"workload": load["name"], "samples": samples, "values": values, "tensors": len(arrays),
            "threads": rows, "startup": startup}


def bench_anatomy(load: dict, samples: int, threads: list[int]) -> dict:
    """Where collection time goes, in one process: the plain FP32 loop, the collector's inference
    alone (every activation an output; histograms not filled), and the collector whole."""
    import onnxruntime as ort

    from quantlab import histogram
    from quantlab.collector import ActivationCollector
    from quantlab.graph import load_model
    from quantlab.preprocess import Batch

    graph = load_model(load["model"])
    x = np.load(load["data"], mmap_mode="r")[:samples]
    x = (x.astype(np.float32) / 255)[:, None] if load["uint8"] else np.ascontiguousarray(x)
    name = graph.inputs[0].name
    session = ort.InferenceSession(load["model"], providers=["CPUExecutionProvider"])
    session.run(None, {name: x[:BATCH]})
    start = time.perf_counter()
    for i in range(0, samples, BATCH):
        session.run(None, {name: x[i:i + BATCH]})
    plain = time.perf_counter() - start
    assert histogram.load_kernel(), histogram.kernel_info()
    update = histogram.TensorHistogram.update

    def collect(count: int, fill: bool) -> dict:
        if not fill:
            histogram.TensorHistogram.update = lambda self, values: None
        try:
            collector = ActivationCollector(graph, threads=count)
            collector.update(Batch({name: x[:2]}, None, np.arange(2)))  # the probe and the buffers
            collector.seconds = {"inference": 0.0, "histograms": 0.0}
            start = time.perf_counter()
            for i in range(0, samples, BATCH):
                collector.update(Batch({name: x[i:i + BATCH]}, None, np.arange(i, min(i + BATCH, samples))))
            collector.close()
            return {"seconds": time.perf_counter() - start, **collector.seconds}
        finally:
            histogram.TensorHistogram.update = update

    inference = min((collect(threads[-1], False) for _ in range(3)), key=lambda r: r["seconds"])
    whole = {count: min((collect(count, True) for _ in range(3)), key=lambda r: r["seconds"]) for count in threads}
    values = sum(a.size for a in activations(load, 1)) * samples
    return {"workload": load["name"], "samples": samples, "values": values, "plain_fp32_loop_s": plain,
            "inference_only": inference, "collect": whole}


def bench_entropy(repeats: int) -> dict:
    from quantlab import DataSpec, collect_statistics, get_calibrator

    from entropy_reference import reference_entropy_amax

    stats = collect_statistics(None, DataSpec(), progress=False)
    calibrator = get_calibrator("entropy")
    per_tensor, agree, reference_ms = [], 0, []
    for index, hist in enumerate(stats.tensors.values()):
        calibrator.compute_amax(hist.counts, hist.edges)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            amax = calibrator.compute_amax(hist.counts, hist.edges)
            times.append(time.perf_counter() - start)
        per_tensor.append(stats_lib.median(times) * 1e3)
        if index < 8:  # the reference takes ~1 s per tensor: check a subset
            start = time.perf_counter()
            expected, _ = reference_entropy_amax(hist.counts, hist.edges)
            reference_ms.append((time.perf_counter() - start) * 1e3)
            agree += int(expected == amax)
    return {
        "tensors": len(per_tensor),
        "median_ms_per_tensor": stats_lib.median(per_tensor),
        "max_ms_per_tensor": max(per_tensor),
        "naive_reference_ms_per_tensor": stats_lib.median(reference_ms),
        "checked_against_reference": len(reference_ms),
        "same_amax_as_reference": agree,
    }


def bench_memory(counts: list[int], batch_size: int, tmp: Path) -> list[dict]:
    """Peak RSS of whole calibrate processes at each sample count (after one warm-up process, so
    that numba's cache is filled: a first run after install also compiles the kernel)."""
    rows = []
    for index, count in enumerate([counts[-1], *counts]):
        images, _ = load_images(count)
        data = tmp / f"quantlab-mem-{count}.npy"
        np.save(data, images)
        out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(data), str(batch_size), str(tmp / "mem.cache")],
                             capture_output=True, text=True, check=True)
        seconds, rss_kb, kernel = out.stdout.split()
        if index:
            rows.append({"samples": count, "calibrate_s": float(seconds), "peak_rss_mib": int(rss_kb) / 1024,
                         "data_file_mib": data.stat().st_size / 2**20, "kernel": kernel})
    return rows


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one), for the reports' machine lines."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine_info() -> dict:
    import onnxruntime

    cpu = cpu_name()
    try:
        import numba
        numba_version = numba.__version__
    except Exception as exc:  # reported, not fatal: the numpy path still runs
        numba_version = f"unavailable ({exc})"
    return {"cpus": len(os.sched_getaffinity(0)), "cpu": cpu, "load_average": os.getloadavg()[0],
            "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
            "numba": numba_version}


def fmt_threads(entries: list[dict]) -> str:
    return " / ".join(f"{e['seconds']:.2f}" for e in entries)


def render(result: dict) -> str:
    lines = [
        "# Calibration core benchmark",
        "",
        "Regenerate: `python benchmarks/calibration_core.py --baseline-rev REV --label NAME` on each machine "
        "(see its docstring; each run keeps the other machines' results). `quantlab calibrate --method entropy` "
        "(all tensors, batches of 32) against one plain FP32 ONNX Runtime pass over the same samples, both "
        "as whole processes, side by side in one run; every figure includes the interpreter, the imports and "
        "the kernel's start-up (numba import and cache load). Medians of 3 runs (one run where a run takes "
        "over 15 s). *Before*: this tree with `quantlab/histogram.py` and `quantlab/collector.py` of the "
        "baseline revision (numpy `bincount` under the GIL, one tensor per thread).",
        "",
        "## Calibration time as a multiple of the FP32 pass",
        "",
        "| machine | workload | samples | FP32 pass process (s) [loop] | threads | calibrate (s) | ratio "
        "| before: threads, calibrate (s), ratio | caches and statistics identical |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, m in result["machines"].items():
        for row in m.get("calibration", []):
            before = ", ".join(f"{b['threads']}: {b['seconds']:.2f} s = {b['over_fp32']:.1f}x"
                               for b in row["baseline"]) or "-"
            same = (f"{'yes' if row['same_cache_bytes'] and row['same_statistics_bytes'] else 'NO'} "
                    f"({row['runs_compared']} runs)")
            fp32 = f"{row['fp32_process_s']:.2f} [{row['fp32_loop_s']:.2f}]"
            for i, entry in enumerate(row["calibrate"]):
                head = [label, row["workload"], row["samples"], fp32] if i == 0 else ["", "", "", ""]
                tail = [before, same] if i == 0 else ["", ""]
                cells = [*head, entry["threads"], f"{entry['seconds']:.2f}", f"**{entry['over_fp32']:.2f}x**", *tail]
                lines.append("| " + " | ".join(str(c) for c in cells) + " |")
            if row.get("qdq"):
                q = row["qdq"]
                cells = ["", "", "", "", f"{q['threads']}, `--tensors qdq`", f"{q['seconds']:.2f}",
                         f"**{q['over_fp32']:.2f}x**", "", ""]
                lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    about = sorted({f"`{r['workload']}`: {r['about']}" for m in result["machines"].values()
                    for r in m.get("calibration", [])})
    lines += ["", "Workloads: " + "; ".join(about) + ".", ""]
    lines += ["## Where the time goes (one process, after start-up; best of 3)", "",
              "| machine | workload | samples | plain FP32 loop (s) | inference alone, every activation an output (s) "
              "| ratio | threads | collect (s) | ratio | of which waiting for histograms (s) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for label, m in result["machines"].items():
        for a in m.get("anatomy", []):
            plain, alone = a["plain_fp32_loop_s"], a["inference_only"]["seconds"]
            for i, (count, c) in enumerate(a["collect"].items()):
                head = ([label, a["workload"], a["samples"], f"{plain:.3f}", f"{alone:.3f}", f"{alone / plain:.1f}x"]
                        if i == 0 else [""] * 6)
                cells = [*head, count, f"{c['seconds']:.3f}", f"{c['seconds'] / plain:.1f}x", f"{c['histograms']:.3f}"]
                lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "*Inference alone* is the collector with the histograms left unfilled: ONNX Runtime computing "
              "and writing out every activation (IOBinding into reused buffers, slices of at most 256 MiB). "
              "*Waiting for histograms* is the time the collector's main thread waits for the histogram "
              "threads after the run's inference (the next run's inference goes on meanwhile).", ""]
    lines += ["## Histogram kernel: ns per activation value (real activations, no inference)", "",
              "| machine | workload | values | threads | numpy path | compiled kernel | numpy / kernel |",
              "|---|---|---|---|---|---|---|"]
    for label, m in result["machines"].items():
        k = m.get("kernel")
        if not k:
            continue
        for i, row in enumerate(k["threads"]):
            head = [label, f"{k['workload']} x{k['samples']}", f"{k['values'] / 1e6:.0f} M"] if i == 0 else ["", "", ""]
            ratio = row["numpy_ns_per_value"] / row["kernel_ns_per_value"]
            cells = [*head, row["threads"], f"{row['numpy_ns_per_value']:.3f}", f"{row['kernel_ns_per_value']:.3f}",
                     f"{ratio:.1f}x"]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "ns per value = wall time of all threads together / values: with N threads it is the cost the "
              "collector sees. Pieces of 1 Mi values; minimum of 3 passes.", "",
              "Kernel start-up, fresh process (`from quantlab import histogram; histogram.load_kernel()`):", ""]
    for label, m in result["machines"].items():
        k = m.get("kernel")
        if k:
            s = k["startup"]
            lines.append(f"- {label}: cold (empty numba cache, compiles) {s['cold']['seconds']:.2f} s, warm "
                         f"(cache load) {s['warm']['seconds']:.2f} s; numba {s['warm'].get('numba', '?')}.")
    lines += ["", "## Entropy (KL) threshold search, 2048-bin histograms of the embedded model's real activations",
              "", "| machine | tensors | median ms/tensor | max ms/tensor | naive reference ms/tensor "
              "| same amax as reference |", "|---|---|---|---|---|---|"]
    for label, m in result["machines"].items():
        e = m.get("entropy")
        if e:
            agree = f"{e['same_amax_as_reference']}/{e['checked_against_reference']}"
            lines.append(f"| {label} | {e['tensors']} | {e['median_ms_per_tensor']:.2f} | "
                         f"{e['max_ms_per_tensor']:.2f} | {e['naive_reference_ms_per_tensor']:.0f} | {agree} |")
    lines += ["", "The naive reference is `tests/entropy_reference.py` (the reference algorithm, loop over",
              "candidates); NVIDIA's own code is measured in the peer benchmark.", "",
              "## Peak memory of a whole `calibrate` process (embedded model, own process each)", "",
              "| machine | samples | compiled kernel | calibrate (s) | peak RSS (MiB) | ratio to the fewest samples "
              "with the same kernel state |", "|---|---|---|---|---|---|"]
    for label, m in result["machines"].items():
        rows = m.get("memory") or []
        for row in rows:
            first = next(r for r in rows if r.get("kernel") == row.get("kernel"))
            lines.append(f"| {label} | {row['samples']} | {row.get('kernel', '?')} | {row['calibrate_s']:.2f} | "
                         f"{row['peak_rss_mib']:.0f} | {row['peak_rss_mib'] / first['peak_rss_mib']:.2f}x |")
    lines += ["", "Peak RSS is the process's own high-water mark (VmHWM). Below "
              "`collector.KERNEL_MIN_VALUES` values the compiled kernel is not loaded (numba is not imported)."]
    lines += ["", "## Machines", ""]
    for label, m in result["machines"].items():
        i = m["machine"]
        runs = m.get("section_runs", {})
        loads = "; ".join(f"{name}: load average {r['load_average']:.1f} at the start"
                          + (f", {r['platform']}" if r["platform"] != i["platform"] else "")
                          for name, r in runs.items() if r.get("load_average") is not None)
        load = f"; {loads}" if loads else ""
        lines.append(f"- {label}: {i['cpus']} CPUs ({i['cpu']}), {i['platform']}, Python {i['python']}, "
                     f"numpy {i['numpy']}, onnxruntime {i['onnxruntime']}, numba {i['numba']}; measured {m['date']}"
                     + (f"; baseline revision {m['baseline_rev']}" if m.get("baseline_rev") else "") + load + ".")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", help="machine name in the report (default: '<cpus>-core <cpu model>')")
    parser.add_argument("--threads", type=int, nargs="+", help="--threads values (default: 1 2 4 8 16, up to the CPUs)")
    parser.add_argument("--baseline-threads", type=int, nargs="*", help="--threads values of the baseline "
                        "(default: the largest and, from 8 CPUs, 4)")
    parser.add_argument("--baseline-rev", help="git revision whose histogram.py and collector.py are the baseline "
                        f"(written to {BASELINE.relative_to(ROOT)}; without it, a tree already there is used)")
    parser.add_argument("--mobilenet-samples", type=int, default=1024)
    parser.add_argument("--fashion-samples", type=int, default=2048)
    parser.add_argument("--kernel-samples", type=int, default=2, help="MobileNetV2 samples of activations for 2.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long", type=float, default=15.0, help="seconds over which a run is not repeated")
    parser.add_argument("--anatomy-samples", type=int, default=256, help="MobileNetV2 samples for 'anatomy'")
    parser.add_argument("--sections", nargs="+", default=["kernel", "anatomy", "calibration", "entropy", "memory"])
    parser.add_argument("--out", default=str(ROOT / "reports" / "calibration-core"))
    args = parser.parse_args()

    info = machine_info()
    label = args.label or f"{info['cpus']}-core {info['cpu']}"
    threads = args.threads or [t for t in THREADS if t <= info["cpus"]]
    baseline_threads = args.baseline_threads
    if baseline_threads is None:
        baseline_threads = sorted({threads[-1]} | ({4} if info["cpus"] >= 8 else set()))
    if args.baseline_rev:
        make_baseline(args.baseline_rev, BASELINE)
    out_json = Path(args.out + ".json")
    result = json.loads(out_json.read_text()) if out_json.exists() else {}
    if "machines" not in result:
        result = {"machines": {}}  # an older layout: its numbers are not comparable
    # Sections not run now keep what an earlier run on this machine measured; each says when and
    # how loaded the machine was (load average at the start of its run).
    entry = result["machines"].get(label, {})
    entry.update(machine=info, date=time.strftime("%Y-%m-%d"))
    if (BASELINE / "REVISION").exists():
        entry["baseline_rev"] = (BASELINE / "REVISION").read_text().strip()
    runs = entry.setdefault("section_runs", {})
    for name in args.sections:
        runs[name] = {"date": entry["date"], "platform": info["platform"], "load_average": info["load_average"]}
    result["machines"][label] = entry
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every section, so that an interrupted run keeps what it measured
        out_json.write_text(json.dumps(result, indent=1) + "\n")

    with tempfile.TemporaryDirectory(prefix="quantlab-bench-") as name:
        tmp = Path(name)
        loads = workloads(args, tmp)
        print(f"{label}: {info}", flush=True)
        if "kernel" in args.sections:
            samples = args.kernel_samples if loads[0]["name"] == "mobilenetv2" else 512
            entry["kernel"] = bench_kernel(loads[0], samples, threads, tmp)
            save()
        if "anatomy" in args.sections:
            entry["anatomy"] = [bench_anatomy(load, min(load["samples"], args.anatomy_samples)
                                              if load["name"] == "mobilenetv2" else load["samples"], threads)
                                for load in loads]
            save()
        if "calibration" in args.sections:
            entry["calibration"] = bench_calibration(loads, threads, baseline_threads, args.repeats, args.long, tmp)
            save()
        if "entropy" in args.sections:
            entry["entropy"] = bench_entropy(repeats=20)
            save()
        if "memory" in args.sections:
            entry["memory"] = bench_memory([args.fashion_samples // 4, args.fashion_samples, args.fashion_samples * 10],
                                           64, tmp)
            save()
    report = render(result)
    Path(args.out + ".md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
