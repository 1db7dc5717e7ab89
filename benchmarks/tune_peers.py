"""The peers of ``quantlab calibrate --method auto`` and ``quantlab tune``, one tool per process.

``benchmarks/tune.py`` runs in the project's environment and calls this file as a child process
in a side environment that holds the peers (they pin torch, onnx and telemetry packages that the
project must not depend on). Every tool reads float32 ``.npz`` files (``x``: model input, NCHW,
already preprocessed; optional ``y``: integer labels), writes a Q/DQ ONNX model and a JSON record of
what it did (settings, versions, layers left in float, wall time of the tool's own work and in
total, peak RSS). The JSON is printed as the last stdout line and written next to the model
(``OUT.json``, or ``--json PATH``); a tool that fails writes ``{"ok": false, "error": ...}`` and exits 1.

Side environment (outside the repository; the versions these tools were run with)::

    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl \\
        nncf==3.4.0 nvidia-modelopt==0.47.0 onnx-graphsurgeon==0.6.1 onnxslim==0.1.98 lief==1.0.0 \\
        nvidia-ml-py==13.615.71 onnxscript==0.7.2 onnxruntime==1.32.0 onnx==1.23.2 numpy==2.4.6
    # (torch: any CPU build >= 2.8 does; elsewhere pip install torch --index-url https://download.pytorch.org/whl/cpu)

ModelOpt's own ``[onnx]`` extra pins onnx 1.21 and onnxruntime-gpu (and cupy), so its ONNX
dependencies are listed by hand, as in pyproject's ``bench`` extra, plus ``onnxscript``, which
ModelOpt 0.47 imports. NNCF 3.4 accepts onnx 1.23 / onnxruntime 1.32. NNCF's telemetry is off
(``NNCF_CI=1`` is set before NNCF is imported): this machine reaches no analytics host.

Tools (``PY=/work/peers-venv/bin/python``)::

    $PY benchmarks/tune_peers.py make-npz fashion DIR              # DIR/calib.npz (512, x+y), DIR/eval.npz (1000)
    $PY benchmarks/tune_peers.py make-npz mobilenetv2 DIR --calib 256 --eval 64   # x only
    $PY benchmarks/tune_peers.py modelopt --method entropy MODEL CALIB.npz -o OUT.onnx
    $PY benchmarks/tune_peers.py ort --method Entropy MODEL CALIB.npz -o OUT.onnx
    $PY benchmarks/tune_peers.py nncf MODEL CALIB.npz -o OUT.onnx
    $PY benchmarks/tune_peers.py nncf-ac MODEL CALIB.npz EVAL.npz --max-drop 0.5 --metric top1 -o OUT.onnx

1. ``modelopt``: ``modelopt.onnx.quantization.quantize(quantize_mode="int8")`` on the CPU with
   ``calibration_method`` entropy or max and its default TensorRT Q/DQ placement, called as
   ``benchmarks/peers.py``'s child does (batches of 32, ``high_precision_dtype="fp32"`` unless
   ``--high-precision fp16``: the float parts stay fp32 so fidelity compares ranges, not fp16).
   That placement leaves a Gemm/MatMul with N or K < 16 in float (the embedded model's 10-class
   classifier): ``float_layers`` says so.
2. ``ort``: ONNX Runtime ``quantize_static``, QDQ format, QInt8 activations and weights,
   per-channel weights, ``ActivationSymmetric`` and ``WeightSymmetric`` (what TensorRT needs),
   MinMax / Entropy / Percentile, batches of 32, as ``benchmarks/peers.py``'s child does. Its
   Entropy and Percentile calibrators keep every activation of every sample in memory (MobileNetV2
   at 224x224 with 256 samples passes 16 GiB: ``--memory-gib`` caps the address space, default 16).
3. ``nncf``: ``nncf.quantize`` with the ONNX backend; ``nncf-ac``: ``nncf.quantize_with_accuracy_control``.
   NNCF 3.4 has no TensorRT target (it knows ANY, CPU, GPU, NPU, CPU_SPR). Closest to TensorRT:
   ``preset=PERFORMANCE`` (symmetric weights and activations), ``target_device=ANY`` (= its CPU
   placement: Q/DQ on the inputs of Conv/Gemm/MatMul and also on both inputs of Add and on
   ReduceMean's input), activations per tensor (``per_channel=False``: NNCF's CPU placement
   would quantize depthwise inputs per channel, which TensorRT cannot), per-channel weights,
   ``overflow_fix=DISABLE`` (the 7-bit weight work-around is for old Intel CPUs), fast bias
   correction on (NNCF's default), ``model_type`` unset (CNNs). NNCF cannot be told to make
   activations signed (its hardware configs leave signedness open and a ``signedness_to_force``
   constraint fails): a tensor whose calibrated minimum is >= 0 gets a uint8 quantizer, which
   TensorRT does not run. ``--activations int8`` (default) rewrites those as TensorRT's int8
   quantizer with NNCF's range (scale x 255/127, zero point int8 0), inside ``validation_fn`` too,
   so NNCF's search measures what TensorRT would compute; ``--activations nncf`` keeps NNCF's.
   Calibration items are single samples by default (``--batch 1``): NNCF's default activation
   range is the *mean* over items of per-item min/max, so batching changes its ranges.
   ``nncf-ac``: the validation set is one item per sample; ``validation_fn`` runs them in batches
   of ``--eval-batch`` through ONNX Runtime and returns the metric as a fraction (0..1) with the
   per-sample values (NNCF then ranks on the metric itself, on its ``ranking_subset_size``, by
   default its ``subset_size`` = 300 samples); ``max_drop = X / 100`` with ``drop_type=ABSOLUTE``,
   so ``--max-drop X`` is in percentage points. ``top1``: accuracy against ``y``; ``agreement``:
   top-1 agreement with the FP32 model's predictions (computed once, timed apart as
   ``seconds.reference``). INT8 models inside ``validation_fn`` run as quantlab evaluates them
   (``--arithmetic tensorrt``: ONNX Runtime's graph optimizations and Q/DQ fusions off, the Q/DQ
   graph executed as written); ``onnxruntime`` leaves ONNX Runtime's integer kernels on.
   The record has the metric (in percent) of FP32, of NNCF's first INT8 model and of the final
   model as ``validation_fn`` measured them, the metric after each step of NNCF's search,
   NNCF's own report (reverted operations, quantized-operation count, iterations) and how many
   ``validation_fn`` calls, samples and seconds it took.

Every tool checks its output (``onnx.checker`` with ``full_check``, and an ONNX Runtime session
with graph optimizations off) and lists ``float_layers``: the Conv/ConvTranspose/Gemm/MatMul nodes
with no DequantizeLinear on their inputs (``partial_layers``: on one of data and weight).

Timing: ``seconds.tool`` is the tool's own call (quantize / quantize_static / nncf.quantize /
quantize_with_accuracy_control, including every ``validation_fn`` call NNCF makes); ``seconds.total``
runs from the top of this script (imports, data loading, the FP32 reference, the layer analysis).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

START = time.perf_counter()
os.environ.setdefault("NNCF_CI", "1")  # NNCF's telemetry off (set before nncf is imported)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import BATCH, MOBILENET, ROOT, child_failure  # noqa: E402

# What a long tool has measured so far: a run stopped by SIGTERM (a time limit) reports it.
PARTIAL: dict[str, Any] = {}
PEERS_PYTHON = Path(os.environ.get("QUANTLAB_PEERS_PYTHON", "/work/peers-venv/bin/python"))
DEFAULTS = ROOT / "quantlab" / "defaults"
QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops a DequantizeLinear's output may pass through on its way to a layer's input (weights: ModelOpt
# and NNCF feed Gemm/MatMul weights through Transpose/Reshape at times).
PASS_THROUGH = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast"}


# ---------------------------------------------------------------- data


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST / Fashion-MNIST), gzipped or not (quantlab.data.read_idx without quantlab's
    imports: the side environment does not hold quantlab)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[0] or raw[1] or raw[2] not in dtypes:
        raise ValueError(f"{path} is not an IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim).reshape(shape)


def make_npz(workload: str, out_dir: Path, calib: Optional[int] = None, evaluation: Optional[int] = None) -> dict:
    """``calib.npz`` and ``eval.npz`` for a named workload; returns their paths and sizes.

    ``fashion``: the embedded default's data (quantlab/defaults: 512 calibration images of the
    training split, 1000 held-out test images, labels), pixels / 255, [N, 1, 28, 28].
    ``mobilenetv2``: benchmarks/data/mobilenetv2/calib.npy (already preprocessed, no labels):
    the first ``calib`` (256) samples for calibration, the next ``evaluation`` (64) for evaluation.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if workload == "fashion":
        def load(kind: str, count: Optional[int]) -> dict:
            x = (read_idx(DEFAULTS / f"{kind}-images-idx3-ubyte.gz").astype(np.float32) / 255)[:, None]
            y = read_idx(DEFAULTS / f"{kind}-labels-idx1-ubyte.gz").astype(np.int64)
            return {"x": x[:count], "y": y[:count]}
        parts = {"calib": load("calib", calib), "eval": load("heldout", evaluation)}
    elif workload == "mobilenetv2":
        source = np.load(MOBILENET / "calib.npy", mmap_mode="r")
        calib, evaluation = calib or 256, evaluation or 64
        if calib + evaluation > len(source):
            raise SystemExit(f"{MOBILENET / 'calib.npy'} holds {len(source)} samples, asked for {calib}+{evaluation}")
        parts = {"calib": {"x": np.ascontiguousarray(source[:calib], dtype=np.float32)},
                 "eval": {"x": np.ascontiguousarray(source[calib:calib + evaluation], dtype=np.float32)}}
    else:
        raise SystemExit(f"unknown workload {workload!r} (fashion, mobilenetv2)")
    written = {}
    for name, arrays in parts.items():
        path = out_dir / f"{name}.npz"
        np.savez(path, **arrays)
        written[name] = {"path": str(path), "samples": len(arrays["x"]), "labels": "y" in arrays}
    return written


def load_npz(path: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    with np.load(path) as data:
        if "x" not in data:
            raise SystemExit(f"{path} has no array 'x' (arrays: {', '.join(data.files)})")
        x = np.ascontiguousarray(data["x"], dtype=np.float32)
        y = data["y"].astype(np.int64).reshape(-1) if "y" in data.files else None
    if y is not None and len(y) != len(x):
        raise SystemExit(f"{path}: {len(x)} inputs but {len(y)} labels")
    return x, y


# ---------------------------------------------------------------- the result model


def layer_precision(model) -> dict:
    """Which Conv/ConvTranspose/Gemm/MatMul nodes of a Q/DQ model are quantized: ``quantized`` (its
    data and weight inputs, the first two, both come from DequantizeLinear, through reshapes),
    ``float`` (neither does), ``partial`` (one does). Keyed by ONNX node name (TensorRT's layer name)."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}

    def from_dq(name: str) -> bool:
        for _ in range(16):
            node = producer.get(name)
            if node is None:
                return False
            if node.op_type == "DequantizeLinear":
                return True
            if node.op_type not in PASS_THROUGH or not node.input:
                return False
            name = node.input[0]
        return False

    out: dict[str, list[str]] = {"quantized": [], "float": [], "partial": []}
    for i, node in enumerate(graph.node):
        if node.op_type not in QUANTIZABLE_OPS:
            continue
        flags = [from_dq(name) for name in node.input[:2] if name]
        kind = "quantized" if all(flags) else "float" if not any(flags) else "partial"
        out[kind].append(node.name or f"{node.op_type}_{i}")
    counts = {op: sum(n.op_type == op for n in graph.node) for op in ("QuantizeLinear", "DequantizeLinear")}
    return {"layers": sum(len(v) for v in out.values()), "quantized_count": len(out["quantized"]),
            "float_count": len(out["float"]), "partial_count": len(out["partial"]),
            "float_layers": out["float"], "partial_layers": out["partial"], "qdq_nodes": counts}


def signed_activations(model) -> int:
    """Rewrite, in place, NNCF's unsigned activation quantizers as the signed ones TensorRT runs.

    NNCF's ONNX backend writes a symmetric activation quantizer whose calibrated minimum is >= 0
    as uint8 with zero point 0, scale = amax / 255; TensorRT's Q/DQ are int8 only. The TensorRT
    equivalent keeps NNCF's range: int8, zero point 0, scale = amax / 127 (one bit less resolution
    on that tensor, which is what TensorRT computes). Returns how many scale tensors changed; raises
    on a uint8 zero point that is not 0 (an asymmetric quantizer TensorRT cannot run either)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    pairs: dict[str, str] = {}  # zero point -> scale
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = inits.get(node.input[2])
            if zp is not None and zp.data_type == onnx_uint8():
                if pairs.setdefault(node.input[2], node.input[1]) != node.input[1]:
                    raise ValueError(f"uint8 zero point {node.input[2]} is shared by different scales")
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    for zp_name, scale_name in pairs.items():
        zp = numpy_helper.to_array(inits[zp_name])
        if np.any(zp != 0):
            raise ValueError(f"{zp_name}: uint8 zero point {zp.ravel()[:4]} is not 0 (asymmetric)")
        scale = numpy_helper.to_array(inits[scale_name]).astype(np.float32)
        if users.get(scale_name, 0) != users.get(zp_name, 0):
            raise ValueError(f"scale {scale_name} is used outside its uint8 quantizer pair")
        inits[scale_name].CopyFrom(numpy_helper.from_array((scale * np.float32(255 / 127)).astype(np.float32),
                                                           scale_name))
        inits[zp_name].CopyFrom(numpy_helper.from_array(np.zeros(zp.shape, np.int8), zp_name))
    # The quantized tensors are int8 now: so must be any recorded type of theirs.
    retyped = set(pairs) | {node.output[0] for node in model.graph.node
                            if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in pairs}
    for info in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        if info.name in retyped and info.type.HasField("tensor_type"):
            info.type.tensor_type.elem_type = onnx_int8()
    return len(pairs)


def onnx_uint8() -> int:
    import onnx

    return onnx.TensorProto.UINT8


def onnx_int8() -> int:
    import onnx

    return onnx.TensorProto.INT8


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("numpy", "onnx", "onnxruntime", "nvidia-modelopt", "nncf", "torch"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def peak_rss_mib() -> float:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024


def input_name(model_path: str) -> str:
    import onnx

    graph = onnx.load(model_path, load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in inits]
    if len(names) != 1:
        raise SystemExit(f"{model_path}: these tools feed one input, the model has {names}")
    return names[0]


def make_session(model, quantized: bool, arithmetic: str, threads: int = 0):
    """An ONNX Runtime CPU session as quantlab's evaluation engine makes it
    (quantlab.evaluation.engine.session_settings): a Q/DQ model under ``tensorrt`` arithmetic runs
    with graph optimizations and Q/DQ fusions off; a float model runs optimized."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if quantized and arithmetic == "tensorrt":
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


def predict(session, name: str, x: np.ndarray, batch: int) -> np.ndarray:
    """Top-1 class per sample (argmax of the first output over its last axis)."""
    out = [session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    logits = np.concatenate(out)
    return logits.reshape(len(x), -1).argmax(axis=1)


# ---------------------------------------------------------------- tools


def run_modelopt(model: str, x: np.ndarray, name: str, out: str, method: str, batch: int,
                 high_precision: str) -> dict:
    import logging  # noqa: F401  (ModelOpt configures logging on import)

    from modelopt.onnx.quantization import quantize

    if len(x) % batch:
        raise SystemExit(f"ModelOpt calibrates in batches of {batch}: {len(x)} samples is not a multiple")
    settings = {"quantize_mode": "int8", "calibration_method": method,
                "calibration_shapes": name + ":" + "x".join(map(str, (batch,) + x.shape[1:])),
                "calibration_eps": ["cpu"], "high_precision_dtype": high_precision, "log_level": "ERROR"}
    # ModelOpt leaves intermediate models (fp32_named, fp32_opset19 ...) beside its output: write
    # into the model's (temporary) folder and move the result out.
    staged = str(Path(model).with_name("int8.onnx"))
    start = time.perf_counter()
    quantize(model, calibration_data=x, output_path=staged, **settings)
    seconds = time.perf_counter() - start
    shutil.move(staged, out)
    return {"seconds_tool": seconds, "settings": settings}


def run_ort(model: str, x: np.ndarray, name: str, out: str, method: str, batch: int,
            num_bins: Optional[int], percentile: Optional[float]) -> dict:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: x[i:i + batch]} for i in range(0, len(x), batch)])

        def get_next(self):
            return next(self.batches, None)

    extra = {"ActivationSymmetric": True, "WeightSymmetric": True}
    if num_bins:
        extra["CalibNumBins"] = num_bins
    if percentile is not None:
        extra["CalibPercentile"] = percentile
    settings = {"quant_format": "QDQ", "activation_type": "QInt8", "weight_type": "QInt8", "per_channel": True,
                "calibrate_method": method, "extra_options": extra, "batch": batch}
    start = time.perf_counter()
    quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True, calibrate_method=getattr(CalibrationMethod, method),
                    extra_options=extra)
    return {"seconds_tool": time.perf_counter() - start, "settings": settings}


class Batches(list):
    """Calibration items for nncf.Dataset; ``batch_size`` as a DataLoader has it, which NNCF reads."""

    def __init__(self, x: np.ndarray, batch: int):
        super().__init__(x[i:i + batch] for i in range(0, len(x), batch))
        self.batch_size = batch


def nncf_settings(batch: int, items: int) -> tuple[dict, Any, dict]:
    """The keyword arguments of nncf.quantize* for TensorRT-like INT8, its advanced quantization
    parameters, and a description of both for the JSON record."""
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
        QuantizationParameters,
    )

    # Activations: per tensor (NNCF's CPU placement would quantize depthwise inputs per channel,
    # which TensorRT cannot). Signedness cannot be forced (NNCF's hardware configs leave it open
    # and refuse a constraint): see signed_activations().
    advanced = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.DISABLE,
        activations_quantization_params=QuantizationParameters(per_channel=False),
        weights_quantization_params=QuantizationParameters(per_channel=True),
    )
    kwargs = {"preset": nncf.QuantizationPreset.PERFORMANCE, "target_device": nncf.TargetDevice.ANY,
              "subset_size": items, "fast_bias_correction": True}
    described = {"preset": "PERFORMANCE (symmetric weights and activations)", "target_device": "ANY",
                 "subset_size": items, "calibration_batch": batch, "fast_bias_correction": True,
                 "overflow_fix": "DISABLE", "activations": "per_channel=False",
                 "weights": "per_channel=True (symmetric, narrow range: NNCF's default)",
                 "model_type": None, "backend": "ONNX"}
    return kwargs, advanced, described


def nncf_calibration(x: np.ndarray, name: str, batch: int):
    import nncf

    items = Batches(x, batch)
    return nncf.Dataset(items, lambda item: {name: item}), len(items)


def run_nncf(model_path: str, x: np.ndarray, name: str, out: str, batch: int, activations: str) -> dict:
    import nncf
    import onnx

    model = onnx.load(model_path)
    dataset, items = nncf_calibration(x, name, batch)
    kwargs, advanced, described = nncf_settings(batch, items)
    start = time.perf_counter()
    quantized = nncf.quantize(model, dataset, advanced_parameters=advanced, **kwargs)
    seconds = time.perf_counter() - start
    described["activations_written"] = activations
    converted = signed_activations(quantized) if activations == "int8" else 0
    onnx.save(quantized, out)
    return {"seconds_tool": seconds, "settings": described, "uint8_quantizers_made_int8": converted}


class Validation:
    """NNCF's ``validation_fn``: the metric of a model (an onnx.ModelProto) on data items, which are
    sample indices into the evaluation arrays; returns (metric as a fraction, per-item 0/1 values).
    Counts its calls, samples and seconds, and keeps the session of the last model it saw (NNCF
    validates one model on several item subsets in a row)."""

    def __init__(self, x: np.ndarray, targets: np.ndarray, name: str, batch: int, arithmetic: str, threads: int,
                 activations: str):
        self.x, self.targets, self.name, self.batch = x, targets, name, batch
        self.arithmetic, self.threads, self.activations = arithmetic, threads, activations
        self.calls = self.samples = 0
        self.seconds = self.session_seconds = 0.0
        self.log: list[dict] = []
        self._model = self._session = None

    def __call__(self, model, items) -> tuple[float, list[float]]:
        start = time.perf_counter()
        index = np.fromiter((int(i) for i in items), dtype=np.int64)
        if model is not self._model:
            quantized = any(node.op_type == "QuantizeLinear" for node in model.graph.node)
            runs = model
            if quantized and self.activations == "int8":  # what TensorRT would run (a copy: NNCF keeps its own)
                import onnx

                runs = onnx.ModelProto()
                runs.CopyFrom(model)
                signed_activations(runs)
            self._session, self._model = make_session(runs, quantized, self.arithmetic, self.threads), model
            self.session_seconds += time.perf_counter() - start
        predicted = predict(self._session, self.name, self.x[index], self.batch)
        hits = (predicted == self.targets[index]).astype(np.float64)
        metric = float(hits.mean()) if len(hits) else 0.0
        self.calls += 1
        self.samples += len(index)
        self.seconds += time.perf_counter() - start
        self.log.append({"items": len(index), "metric": metric})
        return metric, hits.tolist()


def run_nncf_ac(model_path: str, x: np.ndarray, name: str, out: str, batch: int, activations: str, eval_path: str,
                metric: str, max_drop: float, eval_batch: int, arithmetic: str, threads: int,
                max_iterations: Optional[int], ranking_subset: Optional[int], ranking_workers: Optional[int]) -> dict:
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters
    from nncf.quantization.algorithms.accuracy_control import algorithm as ac_algorithm
    from nncf.quantization.algorithms.accuracy_control.evaluator import Evaluator

    ex, ey = load_npz(eval_path)
    reference_seconds = 0.0
    if metric == "top1":
        if ey is None:
            raise SystemExit(f"--metric top1 needs labels: {eval_path} has no array 'y' (use --metric agreement)")
        targets = ey
    else:
        start = time.perf_counter()
        targets = predict(make_session(model_path, False, arithmetic, threads), name, ex, eval_batch)
        reference_seconds = time.perf_counter() - start

    # What NNCF measured and decided, read off its own objects (no change to what it does).
    seen: dict[str, Any] = {"named": {}, "validated": [], "report": None}
    collect = Evaluator.collect_metric_results
    validate = Evaluator.validate
    print_report = ac_algorithm.QuantizationAccuracyRestorer._print_report

    def collect_wrapped(self, model, dataset, model_name=""):
        result = collect(self, model, dataset, model_name)
        seen["named"][model_name] = {"model": model, "metric": result.metric_value}
        PARTIAL[f"{'fp32' if model_name == 'initial' else 'initial_int8'}_metric"] = 100 * result.metric_value
        return result

    def validate_wrapped(self, model, dataset, indices=None):
        result = validate(self, model, dataset, indices)
        if indices is None:
            seen["validated"].append({"model": model, "metric": result[0]})
            PARTIAL["search_path"] = [100 * e["metric"] for e in seen["validated"]]
            PARTIAL["validation_fn"] = {"calls": validation_fn.calls, "samples": validation_fn.samples,
                                        "seconds": validation_fn.seconds}
            PARTIAL["seconds_in_tool"] = time.perf_counter() - start
        return result

    def report_wrapped(report, max_num_iterations):
        seen["report"] = report
        return print_report(report, max_num_iterations)

    Evaluator.collect_metric_results = collect_wrapped
    Evaluator.validate = validate_wrapped
    ac_algorithm.QuantizationAccuracyRestorer._print_report = staticmethod(report_wrapped)

    model = onnx.load(model_path)
    calibration, items = nncf_calibration(x, name, batch)
    kwargs, advanced, described = nncf_settings(batch, items)
    validation_fn = Validation(ex, targets, name, eval_batch, arithmetic, threads, activations)
    validation = nncf.Dataset(list(range(len(ex))), lambda i: {name: ex[i:i + 1]})
    restorer = {}
    if max_iterations is not None:
        restorer["max_num_iterations"] = max_iterations
    if ranking_subset is not None:
        restorer["ranking_subset_size"] = ranking_subset
    if ranking_workers is not None:
        restorer["num_ranking_workers"] = ranking_workers
    start = time.perf_counter()
    final = nncf.quantize_with_accuracy_control(
        model, calibration, validation, validation_fn, max_drop=max_drop / 100, drop_type=nncf.DropType.ABSOLUTE,
        advanced_quantization_parameters=advanced,
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(**restorer), **kwargs)
    seconds = time.perf_counter() - start
    converted = signed_activations(final) if activations == "int8" else 0
    onnx.save(final, out)

    fp32 = seen["named"].get("initial", {}).get("metric")
    initial = seen["named"].get("quantized", {})
    final_metric = None
    if final is initial.get("model"):
        final_metric = initial.get("metric")
    for entry in seen["validated"]:
        if entry["model"] is final:
            final_metric = entry["metric"]
    report = seen["report"]
    nncf_report = {"reverted_count": 0, "reverted_operations": [],
                   "note": "NNCF's first INT8 model met the budget: no search, nothing reverted"}
    if report is not None:
        nncf_report = {"num_quantized_operations": report.num_quantized_operations,
                       "reverted_count": len(report.reverted_operations),
                       "reverted_operations": [n.node_name for n in report.reverted_operations],
                       "removed_quantizers": len(report.removed_quantizers),
                       "iterations": report.num_iterations + 1 if report.num_iterations is not None else None,
                       "reached_required_drop": report.reached_required_drop, "removed_all": report.removed_all}

    def points(value):
        return None if value is None else 100 * value

    described.update(activations_written=activations, max_drop=max_drop / 100, drop_type="ABSOLUTE",
                     restorer=restorer or "NNCF defaults",
                     validation_items="one per sample", eval_batch=eval_batch, arithmetic=arithmetic)
    return {
        "seconds_tool": seconds, "seconds_reference": reference_seconds, "settings": described,
        "uint8_quantizers_made_int8": converted,
        "metric": metric, "max_drop_points": max_drop,
        "eval": {"path": eval_path, "samples": len(ex)},
        "fp32_metric": points(fp32), "initial_int8_metric": points(initial.get("metric")),
        "final_metric": points(final_metric),
        "final_drop_points": None if fp32 is None or final_metric is None else 100 * (fp32 - final_metric),
        "met": None if fp32 is None or final_metric is None else 100 * (fp32 - final_metric) <= max_drop + 1e-9,
        "search_path": [points(e["metric"]) for e in seen["validated"]],
        "nncf_report": nncf_report,
        "validation_fn": {"calls": validation_fn.calls, "samples": validation_fn.samples,
                          "all_samples_calls": sum(e["items"] == len(ex) for e in validation_fn.log),
                          "seconds": validation_fn.seconds, "session_seconds": validation_fn.session_seconds},
    }


# ---------------------------------------------------------------- CLI and the parent's side


def run_tool(args: argparse.Namespace) -> dict:
    if args.memory_gib:
        cap = int(args.memory_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    out = Path(args.output).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"tool": args.tool, "method": getattr(args, "method", None), "model": args.model,
                              "output": str(out), "ok": False}
    start = time.perf_counter()
    x, _ = load_npz(args.calib)
    load_seconds = time.perf_counter() - start
    record["calibration"] = {"path": args.calib, "samples": len(x), "shape": list(x.shape[1:])}
    name = input_name(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        # ModelOpt writes shape information back into the ONNX file it is given: each tool works
        # on a copy, never on the caller's model.
        model = str(Path(tmp) / "fp32.onnx")
        shutil.copyfile(args.model, model)
        if args.tool == "modelopt":
            done = run_modelopt(model, x, name, str(out), args.method, args.batch, args.high_precision)
        elif args.tool == "ort":
            done = run_ort(model, x, name, str(out), args.method, args.batch, args.num_bins, args.percentile)
        elif args.tool == "nncf":
            done = run_nncf(model, x, name, str(out), args.batch, args.activations)
        else:
            done = run_nncf_ac(model, x, name, str(out), args.batch, args.activations, args.eval, args.metric,
                               args.max_drop, args.eval_batch, args.arithmetic, args.threads, args.max_iterations,
                               args.ranking_subset, args.ranking_workers)
    import onnx

    result = onnx.load(str(out))
    onnx.checker.check_model(result, full_check=True)
    make_session(str(out), True, "tensorrt")  # loads in ONNX Runtime with graph optimizations off
    seconds = {"tool": done.pop("seconds_tool"), "load_data": load_seconds}
    if "seconds_reference" in done:
        seconds["reference"] = done.pop("seconds_reference")
    record.update(done)
    record.update(layer_precision(result))
    record.update(ok=True, versions=versions(), seconds=seconds, peak_rss_mib=peak_rss_mib())
    record["seconds"]["total"] = time.perf_counter() - START
    return record


def peer_runs(name: str, tools, files: dict, work: Path, timeout: float, suffix: str = ".json"):
    """Each peer tool of ``tools`` ((label, argv) pairs) on the model and calibration data of ``files``, in
    the side environment: yields (label, the model path it was asked to write, its record)."""
    for label, argv in tools:
        print(f"[{name}] {label}", file=sys.stderr)
        out = work / f"{label.replace(' ', '-')}.onnx"
        yield label, out, run_peer([*argv, files["model"], files["calib"], "-o", out], work / f"{label}{suffix}",
                                   timeout=timeout)


def run_peer(argv: list[str], json_path: Path, timeout: float = 3600.0, python: Path = PEERS_PYTHON,
             log: Optional[Path] = None) -> dict:
    """From the main environment: run one tool of this file in the side environment and return its
    JSON record (``{"ok": false, "error": ...}`` when it failed, ran out of time or wrote nothing).
    At ``timeout`` the tool gets SIGTERM and writes what it had measured (``partial``); 30 s later,
    SIGKILL. ``log``: where its stderr (the tools' logs) goes."""
    import subprocess

    command = [str(python), str(Path(__file__).resolve()), *map(str, argv), "--json", str(json_path)]
    json_path.unlink(missing_ok=True)
    stderr = open(log, "w") if log else tempfile.TemporaryFile("w+")
    try:
        try:
            child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        except OSError as exc:
            return {"ok": False, "error": f"cannot start {python}: {exc}", "argv": list(map(str, argv))}
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        stderr.flush()
        if log:
            tail = Path(log).read_text(errors="replace")[-2000:]
        else:
            stderr.seek(0)
            tail = stderr.read()[-2000:]
    finally:
        stderr.close()
    if json_path.exists():
        record = json.loads(json_path.read_text())
        if not record.get("ok"):
            record.setdefault("stderr_tail", tail)
        return record
    return {"ok": False, "error": child_failure(tail, child.returncode, 0), "argv": list(map(str, argv))}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="tool", required=True)
    make = sub.add_parser("make-npz", help="calib.npz and eval.npz for a named workload")
    make.add_argument("workload", choices=["fashion", "mobilenetv2"])
    make.add_argument("out_dir", type=Path)
    make.add_argument("--calib", type=int, help="calibration samples (fashion: all 512; mobilenetv2: 256)")
    make.add_argument("--eval", type=int, help="evaluation samples (fashion: all 1000; mobilenetv2: 64)")

    def common(q: argparse.ArgumentParser, batch: int) -> None:
        q.add_argument("model")
        q.add_argument("calib", help=".npz with x (float32 model input) [and y]")
        q.add_argument("-o", "--output", required=True, help="the Q/DQ ONNX model to write")
        q.add_argument("--json", help="where to write the JSON record (default: OUT with .json)")
        q.add_argument("--batch", type=int, default=batch, help=f"calibration batch (default {batch})")
        q.add_argument("--memory-gib", type=float, default=16.0, help="address-space cap (0: none)")

    q = sub.add_parser("modelopt", help="ModelOpt ONNX INT8 (CPU)")
    q.add_argument("--method", choices=["entropy", "max"], required=True)
    q.add_argument("--high-precision", choices=["fp32", "fp16"], default="fp32")
    common(q, BATCH)
    q = sub.add_parser("ort", help="ONNX Runtime quantize_static, QDQ, symmetric int8")
    q.add_argument("--method", choices=["MinMax", "Entropy", "Percentile"], required=True)
    q.add_argument("--num-bins", type=int, help="CalibNumBins (ONNX Runtime's default: 128 Entropy, 2048 Percentile)")
    q.add_argument("--percentile", type=float, help="CalibPercentile (default 99.999)")
    common(q, BATCH)
    def activations(q: argparse.ArgumentParser) -> None:
        q.add_argument("--activations", choices=["int8", "nncf"], default="int8",
                       help="int8: NNCF's uint8 activation quantizers rewritten as TensorRT's int8 ones, same range "
                            "(in validation_fn too); nncf: as NNCF writes them")

    q = sub.add_parser("nncf", help="nncf.quantize, ONNX backend")
    activations(q)
    common(q, 1)
    q = sub.add_parser("nncf-ac", help="nncf.quantize_with_accuracy_control, ONNX backend")
    common(q, 1)
    q.add_argument("eval", help=".npz with x [and y] for validation_fn")
    q.add_argument("--max-drop", type=float, required=True, help="percentage points of the metric")
    q.add_argument("--metric", choices=["top1", "agreement"], required=True)
    q.add_argument("--eval-batch", type=int, default=64, help="batch inside validation_fn")
    q.add_argument("--arithmetic", choices=["tensorrt", "onnxruntime"], default="tensorrt")
    q.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads in validation_fn")
    q.add_argument("--max-iterations", type=int, help="NNCF max_num_iterations (default: no limit)")
    q.add_argument("--ranking-subset", type=int, help="NNCF ranking_subset_size (default: subset_size)")
    q.add_argument("--ranking-workers", type=int, help="NNCF num_ranking_workers (default: NNCF decides)")
    activations(q)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.tool == "make-npz":
        print(json.dumps(make_npz(args.workload, args.out_dir, args.calib, args.eval)))
        return 0
    json_path = Path(args.json) if args.json else Path(args.output).with_suffix(".json")

    def stopped(signum, frame):
        raise SystemExit(f"stopped by signal {signum} (a time limit?) after {time.perf_counter() - START:.0f} s")

    signal.signal(signal.SIGTERM, stopped)
    # stdout carries only the JSON record: the tools' logs (NNCF logs to stdout) and progress go to stderr.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            record = run_tool(args)
    except BaseException as exc:  # the parent reads the JSON: say what failed, there
        if isinstance(exc, KeyboardInterrupt):
            raise
        import traceback

        message = str(exc) if isinstance(exc, SystemExit) and not isinstance(exc.code, int) else \
            f"{type(exc).__name__}: {exc}"
        if isinstance(exc, MemoryError) or "Unable to allocate" in message or "bad_alloc" in message:
            message = f"out of memory under the {args.memory_gib:g} GiB cap ({message[:200]})"
        traceback.print_exc()
        record = {"tool": args.tool, "method": getattr(args, "method", None), "model": args.model, "ok": False,
                  "error": message, "seconds": {"total": time.perf_counter() - START}}
        if PARTIAL:
            record["partial"] = dict(PARTIAL)
    finally:
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
