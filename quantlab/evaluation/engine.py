"""The one evaluation engine: FP32 and INT8 runners and the streaming pass over held-out data.

Split as in Polygraphy: a *runner* turns input batches into named outputs (an ONNX Runtime
session, FP32 or Q/DQ), *metrics* fold pairs of outputs into sums batch by batch, so nothing
grows with the number of samples. compare, sweep (and tune) all evaluate through here, so the
same ranges give the same numbers, bit for bit, whichever command asks.

INT8 arithmetic (design.md §6). TensorRT computes an INT8 layer as int8 x int8 products summed
exactly in int32, then rescales. A Q/DQ graph executed as written - QuantizeLinear's exact
rounding and clipping, DequantizeLinear, float Conv/MatMul - equals that to float rounding (the
dequantized values are exact multiples of the scales, so a float32 sum of their products differs
from the exact int32 sum only by float32 rounding; tests/test_int8_arithmetic.py checks real
layers against an integer reference). ONNX Runtime, left alone,
fuses some Q/DQ patterns into its CPU integer kernels (QLinearConv ...), whose u8s8 path on CPUs
without VNNI saturates 16-bit intermediates: numbers TensorRT will never produce. So the default
``tensorrt`` arithmetic turns ONNX Runtime's Q/DQ fusions off (``session.disable_quant_qdq``);
``onnxruntime`` keeps them, for users who deploy on ONNX Runtime CPU.

Memory is bounded the way collection bounds it: a batch whose activations would pass
``ACTIVATION_BUDGET`` runs in slices (the headline numbers do not depend on how samples are
grouped), and per-tensor errors are measured a bounded number of tensors at a time, in a pass of
their own, so they never change the arithmetic of the headline numbers.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx

from ..collector import ACTIVATION_BUDGET, available_cpus, make_session
from ..errors import QuantlabError
from ..graph import add_outputs
from ..histogram import TensorHistogram

ARITHMETICS = ("tensorrt", "onnxruntime")
INTEGER_OP_PREFIXES = ("QLinear", "QGemm", "DynamicQuantize")
INTEGER_OP_SUFFIXES = ("Integer",)
QUANTIZED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def check_arithmetic(arithmetic: str) -> str:
    if arithmetic not in ARITHMETICS:
        raise QuantlabError(f"`int8_arithmetic` must be one of {', '.join(ARITHMETICS)}, got {arithmetic!r}",
                            params=("int8_arithmetic",))
    return arithmetic


def session_options(arithmetic: str = "tensorrt") -> dict[str, str]:
    """ONNX Runtime session config entries for an INT8 arithmetic (none for ``onnxruntime``)."""
    check_arithmetic(arithmetic)
    return {"session.disable_quant_qdq": "1"} if arithmetic == "tensorrt" else {}


class OrtRunner:
    """An ONNX Runtime session returning the model outputs plus any extra tensors asked for.

    ``arithmetic`` decides how a Q/DQ model computes (module docstring); it changes nothing for
    a float model. Batches larger than ``max_samples`` run in slices of equal size.
    """

    def __init__(self, model: onnx.ModelProto, extra_outputs: Sequence[str] = (),
                 providers: Optional[Sequence[str]] = None, arithmetic: str = "tensorrt",
                 max_samples: Optional[int] = None):
        self.arithmetic = check_arithmetic(arithmetic)
        self.model = add_outputs(model, list(extra_outputs)) if extra_outputs else model
        self.session = make_session(self.model.SerializeToString(), providers,
                                    config=session_options(arithmetic))
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.max_samples = max_samples

    def run(self, inputs: dict) -> dict[str, np.ndarray]:
        count = len(next(iter(inputs.values()))) if inputs else 0
        if not self.max_samples or count <= self.max_samples:
            return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))
        size = max(d for d in range(1, self.max_samples + 1) if count % d == 0)
        parts = [self.session.run(self.output_names, {k: v[s:s + size] for k, v in inputs.items()})
                 for s in range(0, count, size)]
        return {name: np.concatenate([part[k] for part in parts]) for k, name in enumerate(self.output_names)}

    def latency(self, inputs: dict, repeats: int = 30, warmup: int = 3) -> dict:
        """Median and spread (10th-90th percentile) of repeated runs of exactly this graph, in ms."""
        names = self.output_names[:1]
        for _ in range(warmup):
            self.session.run(names, inputs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.session.run(names, inputs)
            times.append((time.perf_counter() - start) * 1e3)
        times.sort()
        return {"median_ms": statistics.median(times), "p10_ms": times[len(times) // 10],
                "p90_ms": times[(len(times) * 9) // 10], "runs": repeats, "warmup_runs": warmup,
                "intra_op_threads": available_cpus()}


def samples_per_run(model: onnx.ModelProto, names: Sequence[str], sample: dict,
                    providers: Optional[Sequence[str]] = None, budget: int = ACTIVATION_BUDGET) -> int:
    """How many samples one run may take so that the activations ``names`` of one sample, times
    that count, stay within ``budget`` bytes: measured on ``sample`` (a batch of one)."""
    probe = OrtRunner(model, [n for n in names if n not in {i.name for i in model.graph.input}], providers)
    outputs = probe.run(sample)
    per_sample = sum(np.asarray(v).nbytes for v in (*outputs.values(), *sample.values()))
    return max(1, int(budget // max(per_sample, 1)))


@dataclass
class OutputComparator:
    """Streaming FP32-vs-INT8 numbers of one model output (fidelity, and top-k where it classifies)."""

    name: str
    samples: int = 0
    signal: float = 0.0
    noise: float = 0.0
    max_abs_error: float = 0.0
    cosine_sum: float = 0.0
    agree: int = 0
    classified: bool = True
    correct: dict = field(default_factory=lambda: {"fp32_top1": 0, "int8_top1": 0, "fp32_top5": 0, "int8_top5": 0})
    labelled: int = 0

    def update(self, reference: np.ndarray, candidate: np.ndarray, labels: Optional[np.ndarray]) -> None:
        ref = np.asarray(reference, dtype=np.float64)
        got = np.asarray(candidate, dtype=np.float64)
        n = ref.shape[0] if ref.ndim else 1
        flat_ref, flat_got = ref.reshape(n, -1), got.reshape(n, -1)
        error = flat_got - flat_ref
        self.signal += float((flat_ref ** 2).sum())
        self.noise += float((error ** 2).sum())
        self.max_abs_error = max(self.max_abs_error, float(np.abs(error).max()) if error.size else 0.0)
        norms = np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_got, axis=1)
        cosine = np.where(norms > 0, (flat_ref * flat_got).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)
        self.cosine_sum += float(cosine.sum())
        self.samples += n
        self.classified = self.classified and ref.ndim == 2 and ref.shape[1] >= 2
        if not self.classified:
            return
        ref_top, got_top = ref.argmax(1), got.argmax(1)
        self.agree += int((ref_top == got_top).sum())
        if labels is not None and len(labels) == n:
            self.labelled += n
            k = min(5, ref.shape[1])
            for tag, scores in (("fp32", ref), ("int8", got)):
                top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
                self.correct[f"{tag}_top1"] += int((top[:, 0] == labels).sum())
                self.correct[f"{tag}_top5"] += int((top == labels[:, None]).any(axis=1).sum())

    def result(self) -> dict:
        out = {
            "output": self.name,
            "samples": self.samples,
            "cosine_similarity": self.cosine_sum / max(self.samples, 1),
            "sqnr_db": sqnr_db(self.signal, self.noise),
            "max_abs_error": self.max_abs_error,
        }
        if self.classified:
            out["top1_agreement"] = self.agree / max(self.samples, 1)
        if self.classified and self.labelled:
            out.update({key: value / self.labelled for key, value in self.correct.items()})
            out["labelled_samples"] = self.labelled
        return out


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise); +inf for an exact match, -inf for a zero signal with error."""
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


@dataclass
class Evaluation:
    """What one candidate scored: numbers per model output, and the samples they cover."""

    outputs: list[dict]
    samples: int


def evaluate(reference: OrtRunner, candidates: dict[str, OrtRunner], batches: Iterable,
             outputs: Sequence[str], progress=None) -> dict[str, Evaluation]:
    """Every candidate against one reference, in a single pass over ``batches``.

    The reference runs once per batch however many candidates there are; the runners return
    the model outputs only, so the numbers are those of exactly the graphs a user would build.
    """
    comparators = {label: {name: OutputComparator(name) for name in outputs} for label in candidates}
    samples = 0
    for batch in batches:
        ref = reference.run(batch.inputs)
        for label, runner in candidates.items():
            got = runner.run(batch.inputs)
            for name, comparator in comparators[label].items():
                comparator.update(ref[name], got[name], batch.labels)
        samples += len(batch.indices)
        if progress is not None:
            progress.update(len(batch.indices))
    return {label: Evaluation([c.result() for c in comparators[label].values()], samples) for label in candidates}


@dataclass
class TensorErrors:
    """Per-tensor SQNR of the INT8 model against FP32, and FP32 histograms of those tensors."""

    tensors: list[dict]
    histograms: dict
    samples: int


def tensor_errors(fp32_model: onnx.ModelProto, int8_model: onnx.ModelProto, names: Sequence[str],
                  batches: Callable[[], Iterator], *, group: int = 32, providers: Optional[Sequence[str]] = None,
                  arithmetic: str = "tensorrt", max_samples: Optional[int] = None) -> TensorErrors:
    """SQNR of every tensor in ``names``, ``group`` tensors per pass over ``batches()``.

    Asking a session for internal tensors stops ONNX Runtime from fusing the ops around them, so
    this is a pass of its own, apart from the headline numbers; and asking for at most ``group``
    at a time keeps the extra outputs of a run bounded (a 640x640 detector has gigabytes of
    activations per batch).
    """
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    histograms: dict[str, TensorHistogram] = {}
    samples = 0
    names = list(names)
    for start in range(0, len(names), group):
        chosen = names[start:start + group]
        fp32 = OrtRunner(fp32_model, chosen, providers, max_samples=max_samples)
        int8 = OrtRunner(int8_model, chosen, providers, arithmetic, max_samples=max_samples)
        samples = 0
        for batch in batches():
            ref, got = fp32.run(batch.inputs), int8.run(batch.inputs)
            for name in chosen:
                r = ref[name].astype(np.float64, copy=False)
                e = got[name].astype(np.float64, copy=False) - r
                signal[name] = signal.get(name, 0.0) + float(np.vdot(r, r))
                noise[name] = noise.get(name, 0.0) + float(np.vdot(e, e))
                histograms.setdefault(name, TensorHistogram()).update(ref[name])
            samples += len(batch.indices)
    rows = [{"tensor": n, "sqnr_db": sqnr_db(signal.get(n, 0.0), noise.get(n, 0.0))} for n in names]
    return TensorErrors(rows, histograms, samples)


def optimized_op_counts(model_bytes: bytes, arithmetic: str = "tensorrt") -> dict[str, int]:
    """Op types of ONNX Runtime's optimised graph of a model, under ``arithmetic``."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.optimized_model_filepath = f"{folder}/optimized.onnx"
        options.log_severity_level = 3
        for key, value in session_options(arithmetic).items():
            options.add_session_config_entry(key, value)
        ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(f"{folder}/optimized.onnx")
    counts: dict[str, int] = {}
    for node in optimized.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def execution_verdict(qdq_model: onnx.ModelProto, arithmetic: str) -> dict:
    """How the INT8 numbers were computed: which arithmetic, and how many quantized ops ONNX
    Runtime fused into its own integer kernels ("N of M quantized ops fused")."""
    counts = optimized_op_counts(qdq_model.SerializeToString(), arithmetic)
    integer = {op: n for op, n in counts.items()
               if op.startswith(INTEGER_OP_PREFIXES) or op.endswith(INTEGER_OP_SUFFIXES)}
    quantized = sum(1 for node in qdq_model.graph.node if node.op_type in QUANTIZED_OP_TYPES
                    and any(i.endswith(("_dequantized", "_weight_dequantized")) for i in node.input))
    fused = sum(integer.values())
    verdict = {
        "int8_arithmetic": arithmetic,
        "integer_ops": integer,
        "quantized_ops": quantized,
        "fused_ops": fused,
        "executes_integer_kernels": bool(integer),
    }
    if arithmetic == "tensorrt":
        verdict["verdict"] = ("TensorRT-faithful: the Q/DQ graph executed as written (ONNX Runtime's Q/DQ fusions "
                              "off): exact int8 rounding and clipping, float accumulation")
    else:
        verdict["verdict"] = (f"ONNX Runtime's own INT8 kernels: {fused} of {quantized} quantized ops fused into "
                              "integer kernels" + (" (their u8s8 path saturates 16-bit intermediates on CPUs without "
                                                   "VNNI; TensorRT does not)" if fused else ""))
    return verdict
