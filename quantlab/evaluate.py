"""FP32 vs INT8 on held-out data: runners and streaming comparators.

Split as in Polygraphy: a *runner* turns input batches into named outputs (here an ONNX
Runtime session, FP32 or Q/DQ), a *comparator* folds pairs of outputs into metrics batch by
batch, so nothing grows with the number of samples.

Metrics per model output: top-1/top-5 accuracy of both models when labels exist, top-1
agreement of INT8 with FP32, mean per-sample cosine similarity, SQNR in dB
(10 log10 of signal power over error power) and the largest absolute error. Per internal
tensor: SQNR of the INT8 model's tensor against the FP32 one (which layers hurt).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .collector import make_session
from .graph import add_outputs
from .histogram import TensorHistogram

INTEGER_OP_PREFIXES = ("QLinear", "QGemm", "DynamicQuantize")
INTEGER_OP_SUFFIXES = ("Integer",)


class OrtRunner:
    """An ONNX Runtime session that returns the model outputs plus any extra tensors asked for."""

    def __init__(self, model, extra_outputs: Sequence[str] = (), providers: Optional[Sequence[str]] = None):
        self.model = add_outputs(model, list(extra_outputs)) if extra_outputs else model
        self.session = make_session(self.model.SerializeToString(), providers)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))

    def latency_ms(self, inputs: dict, repeats: int = 50) -> float:
        """Mean wall time of one run of ``inputs`` (after two warm-up runs), in milliseconds."""
        names = [o.name for o in self.session.get_outputs()][:1]
        for _ in range(2):
            self.session.run(names, inputs)
        start = time.perf_counter()
        for _ in range(repeats):
            self.session.run(names, inputs)
        return (time.perf_counter() - start) / repeats * 1e3


@dataclass
class OutputComparator:
    """Streaming FP32-vs-INT8 metrics of one model output."""

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
class TensorComparator:
    """Streaming SQNR of internal tensors (INT8 model vs FP32) and FP32 histograms of them."""

    names: list
    signal: dict = field(default_factory=dict)
    noise: dict = field(default_factory=dict)
    histograms: dict = field(default_factory=dict)

    def update(self, reference: dict, candidate: dict) -> None:
        for name in self.names:
            ref = reference[name].astype(np.float64, copy=False)
            err = candidate[name].astype(np.float64, copy=False) - ref
            self.signal[name] = self.signal.get(name, 0.0) + float(np.vdot(ref, ref))
            self.noise[name] = self.noise.get(name, 0.0) + float(np.vdot(err, err))
            self.histograms.setdefault(name, TensorHistogram()).update(reference[name])

    def result(self) -> list[dict]:
        return [{"tensor": n, "sqnr_db": sqnr_db(self.signal.get(n, 0.0), self.noise.get(n, 0.0))}
                for n in self.names]


@dataclass
class Comparison:
    outputs: list[dict]
    tensors: list[dict]
    histograms: dict
    samples: int


def compare_models(fp32: OrtRunner, int8: OrtRunner, batches: Iterable, outputs: Sequence[str],
                   tensors: Sequence[str] = (), progress=None) -> Comparison:
    """Run both models over ``batches`` and fold their outputs into metrics."""
    return compare_candidates(fp32, {"int8": int8}, batches, outputs, tensors, progress)["int8"]


def compare_candidates(fp32: OrtRunner, candidates: dict[str, OrtRunner], batches: Iterable,
                       outputs: Sequence[str], tensors: Sequence[str] = (), progress=None) -> dict[str, Comparison]:
    """Several INT8 candidates against one FP32 reference, in a single pass over ``batches``.

    The reference runs once per batch however many candidates there are, and nothing is kept
    between batches, so memory does not grow with the held-out set.
    """
    comparators = {label: {name: OutputComparator(name) for name in outputs} for label in candidates}
    internal = {label: TensorComparator(list(tensors)) for label in candidates}
    samples = 0
    for batch in batches:
        ref = fp32.run(batch.inputs)
        for label, runner in candidates.items():
            got = runner.run(batch.inputs)
            for name, comparator in comparators[label].items():
                comparator.update(ref[name], got[name], batch.labels)
            if tensors:
                internal[label].update(ref, got)
        samples += len(batch.indices)
        if progress is not None:
            progress.update(len(batch.indices))
    return {label: Comparison([c.result() for c in comparators[label].values()], internal[label].result(),
                              internal[label].histograms, samples) for label in candidates}


def integer_kernels(op_counts: dict[str, int]) -> dict:
    """Did ONNX Runtime's optimised graph run integer kernels, or only simulate quantization?"""
    integer = {op: n for op, n in op_counts.items()
               if op.startswith(INTEGER_OP_PREFIXES) or op.endswith(INTEGER_OP_SUFFIXES)}
    simulated = op_counts.get("DequantizeLinear", 0)
    return {
        "integer_ops": integer,
        "executes_integer_kernels": bool(integer),
        "dequantize_nodes_left": simulated,
        "verdict": ("integer kernels (QLinear*/Integer ops in the optimised graph)" if integer else
                    "simulated quantization: ONNX Runtime kept DequantizeLinear -> float op; the INT8 "
                    "rounding and clipping are real, the arithmetic is FP32"),
    }
