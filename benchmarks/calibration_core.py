"""Benchmark of the calibration core: KL search speed, collection throughput, memory scaling.

    python benchmarks/calibration_core.py              # writes reports/calibration-core.{md,json}

Measures, on this machine, with the embedded Fashion-MNIST model:
1. entropy (KL) threshold search, ms per tensor, on the model's real activation histograms
   (median of repeated runs per tensor), and agreement with the naive reference in tests/;
2. collection throughput (samples/s) of ``collect_statistics`` next to one plain FP32 ONNX
   Runtime pass over the same samples (the floor);
3. peak RSS of a full ``quantlab calibrate`` process at N and 10x N samples (each in its own
   process) - it must stay flat, because statistics stream.

Samples come from the Fashion-MNIST training split of the Debian package
``dataset-fashion-mnist`` when installed, else from the embedded 512 images repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics as stats_lib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


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


def bench_throughput(samples: int, batch_size: int, repeats: int) -> dict:
    import onnxruntime as ort

    from quantlab import DataSpec, collect_statistics, defaults

    images, source = load_images(samples)
    x = (images.astype(np.float32) / 255)[:, None]
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "quantlab-bench.npy"
    np.save(path, images)
    session = ort.InferenceSession(str(defaults.MODEL), providers=["CPUExecutionProvider"])
    plain, collect = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, samples, batch_size):
            session.run(None, {"image": x[i:i + batch_size]})
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        collect_statistics(defaults.MODEL, DataSpec(path, batch_size=batch_size), progress=False)
        collect.append(time.perf_counter() - start)
    path.unlink()
    p, c = stats_lib.median(plain), stats_lib.median(collect)
    return {"samples": samples, "batch_size": batch_size, "source": source,
            "plain_fp32_pass_s": p, "collect_s": c, "collect_samples_per_s": samples / c,
            "collect_over_plain": c / p}


CHILD = """
import resource, sys, time, numpy as np
from quantlab import calibrate, DataSpec, defaults
t = time.perf_counter()
calibrate(defaults.MODEL, DataSpec(sys.argv[1], batch_size=int(sys.argv[2])), output=sys.argv[3], progress=False)
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def bench_memory(counts: list[int], batch_size: int) -> list[dict]:
    rows = []
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    for count in counts:
        images, source = load_images(count)
        data = tmp / f"quantlab-mem-{count}.npy"
        np.save(data, images)
        out = subprocess.run([sys.executable, "-c", CHILD, str(data), str(batch_size), str(tmp / "mem.cache")],
                             capture_output=True, text=True, check=True)
        seconds, rss_kb = out.stdout.split()
        rows.append({"samples": count, "calibrate_s": float(seconds), "peak_rss_mib": int(rss_kb) / 1024,
                     "data_file_mib": data.stat().st_size / 2**20})
        data.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "reports" / "calibration-core"))
    args = parser.parse_args()

    import onnxruntime

    entropy = bench_entropy(repeats=20)
    throughput = bench_throughput(args.samples, args.batch_size, args.repeats)
    memory = bench_memory([args.samples // 4, args.samples // 4 * 10], args.batch_size)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "onnxruntime": onnxruntime.__version__},
        "entropy": entropy, "throughput": throughput, "memory": memory,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    e, t = entropy, throughput
    lines = [
        "# Calibration core benchmark",
        "",
        f"Regenerate: `python benchmarks/calibration_core.py` ({result['machine']['cpus']} CPUs, "
        f"{result['machine']['platform']}, numpy {np.__version__}, onnxruntime {onnxruntime.__version__}).",
        "Model: the embedded Fashion-MNIST CNN (`quantlab/defaults/fashion_mnist_cnn.onnx`).",
        "",
        "## Entropy (KL) threshold search, 2048-bin histograms of the model's real activations",
        "",
        "| tensors | median ms/tensor | max ms/tensor | naive reference ms/tensor | same amax as reference |",
        "|---|---|---|---|---|",
        f"| {e['tensors']} | {e['median_ms_per_tensor']:.2f} | {e['max_ms_per_tensor']:.2f} | "
        f"{e['naive_reference_ms_per_tensor']:.0f} | {e['same_amax_as_reference']}/{e['checked_against_reference']} |",
        "",
        "The naive reference is `tests/entropy_reference.py` (the reference algorithm, loop over",
        "candidates); NVIDIA's own code is measured in the peer benchmark.",
        "",
        f"## Collection throughput ({t['samples']} samples, batch {t['batch_size']}; {t['source']})",
        "",
        "| plain FP32 ORT pass (s) | quantlab collect (s) | samples/s | collect / plain |",
        "|---|---|---|---|",
        f"| {t['plain_fp32_pass_s']:.2f} | {t['collect_s']:.2f} | {t['collect_samples_per_s']:.0f} | "
        f"{t['collect_over_plain']:.2f}x |",
        "",
        "## Peak memory of a whole `calibrate` process (own process each)",
        "",
        "| samples | calibrate (s) | peak RSS (MiB) | input .npy file (MiB; read a sample at a time) |",
        "|---|---|---|---|",
    ]
    for row in memory:
        lines.append(f"| {row['samples']} | {row['calibrate_s']:.2f} | {row['peak_rss_mib']:.0f} | "
                     f"{row['data_file_mib']:.1f} |")
    ratio = memory[-1]["peak_rss_mib"] / memory[0]["peak_rss_mib"]
    lines += ["", f"Peak RSS ratio, 10x samples vs 1x: **{ratio:.2f}x**.", ""]
    Path(args.out + ".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
