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
``tensorrt`` arithmetic runs a Q/DQ model with ONNX Runtime's graph optimizations off (and its
Q/DQ fusions off): every op as written. ``onnxruntime`` leaves ONNX Runtime alone, for users who
deploy on ONNX Runtime CPU. A float model always runs optimized: only rounding changes there.

Memory is bounded the way collection bounds it: a batch whose activations would pass
``ACTIVATION_BUDGET`` runs in slices (the headline numbers do not depend on how samples are
grouped), and per-tensor errors are measured a bounded number of tensors at a time, in a pass of
their own, so they never change the arithmetic of the headline numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np
import onnx
from tqdm import tqdm

from ..collector import ACTIVATION_BUDGET, available_cpus, make_session
from ..device import device_of
from ..errors import QuantlabError
from ..executors import Executor, plan_shards, report_progress
from ..executors.shipping import ModelRef, portable_source, worker_cached
from ..graph import add_outputs
from ..histogram import TensorHistogram
from ..preprocess import DataFingerprint, check_batch_size, iterate_batches
from ..qdq import QdqOptions, export_qdq
from ..workload import DataSpec, DataTask, data_source, select_outputs
from .metrics import detect_metric, make_metric, sqnr_db
from .options import EvalOptions

ARITHMETICS = ("tensorrt", "onnxruntime")
INTEGER_OP_PREFIXES = ("QLinear", "QGemm", "DynamicQuantize")
INTEGER_OP_SUFFIXES = ("Integer",)
QUANTIZED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def check_arithmetic(arithmetic: str) -> str:
    if arithmetic not in ARITHMETICS:
        raise QuantlabError(f"`int8_arithmetic` must be one of {', '.join(ARITHMETICS)}, got {arithmetic!r}",
                            params=("int8_arithmetic",))
    return arithmetic


def session_settings(arithmetic: str, quantized: bool) -> dict:
    """:func:`~quantlab.collector.make_session` settings of a model under an INT8 arithmetic.

    Under ``tensorrt`` a Q/DQ model runs with ONNX Runtime's Q/DQ fusions and graph optimizations
    off: every op as written, no fusion into integer kernels and no float rewrite such as folding a
    BatchNormalization into the Conv before it (that moves float rounding past the Q/DQ points:
    0.12 dB on PP-OCRv5's classifier). A float model always runs optimized: only rounding changes.
    """
    faithful = check_arithmetic(arithmetic) == "tensorrt"
    return {"config": {"session.disable_quant_qdq": "1"} if faithful else {},
            "optimize": not (faithful and quantized)}


def _is_quantized(model: onnx.ModelProto) -> bool:
    return any(node.op_type == "QuantizeLinear" for node in model.graph.node)


class OrtRunner:
    """An ONNX Runtime session returning the model outputs plus any extra tensors asked for.

    ``arithmetic`` decides how a Q/DQ model computes (:func:`session_settings`); it changes
    nothing for a float model. Cut batches into runs with :func:`slices` first.
    """

    def __init__(self, model: onnx.ModelProto, extra_outputs: Sequence[str] = (),
                 providers: Optional[Sequence[str]] = None, arithmetic: str = "tensorrt", threads: int = 0,
                 spinning: bool = False):
        self.arithmetic = check_arithmetic(arithmetic)
        if arithmetic == "onnxruntime" and device_of(providers) and _is_quantized(model):
            raise QuantlabError("`int8_arithmetic` onnxruntime means ONNX Runtime's own integer kernels, which do "
                                "not run on `device`; use the tensorrt arithmetic there, or leave `device` out",
                                params=("int8_arithmetic", "device"))
        self.model = add_outputs(model, list(extra_outputs)) if extra_outputs else model
        # threads: ONNX Runtime intra-op threads (0: its default); workers sharing a machine split its cores.
        # spinning=False (the default): idle threads sleep, for sessions that take turns on the same cores
        # (a candidate per session, batch by batch): 8 spinning sessions of the embedded model ran 5x slower.
        # A latency measurement wants them spinning (compare asks for it).
        self.session = make_session(self.model.SerializeToString(), providers, threads=threads, spinning=spinning,
                                    **session_settings(arithmetic, _is_quantized(self.model)))
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict) -> dict[str, np.ndarray]:
        """The outputs of one run of ``inputs`` (slice batches first with :func:`slices`)."""
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))

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


def slices(batches: Iterable, size: Optional[int]) -> Iterator:
    """Each batch cut into runs of at most ``size`` samples, equal-sized, labels and indices along.

    Every metric and error here is a sum over samples, so how samples are grouped into runs
    changes no number; only the memory of a run (its activations) depends on it.
    """
    from ..preprocess import Batch

    for batch in batches:
        count = len(batch.indices)
        if not size or count <= size:
            yield batch
            continue
        step = max(d for d in range(1, size + 1) if count % d == 0)
        for start in range(0, count, step):
            part = slice(start, start + step)
            yield Batch({name: value[part] for name, value in batch.inputs.items()},
                        None if batch.labels is None else batch.labels[part], batch.indices[part])


def activation_bytes(model: onnx.ModelProto, names: Sequence[str], sample: dict,
                     providers: Optional[Sequence[str]] = None) -> dict[str, int]:
    """Bytes per sample of each tensor in ``names`` (model inputs included), measured by running
    ``sample`` (a batch of one) once with all of them as outputs."""
    inputs = {i.name for i in model.graph.input}
    probe = OrtRunner(model, [n for n in names if n not in inputs], providers)
    outputs = {**probe.run(sample), **{n: v for n, v in sample.items() if n in names}}
    return {name: int(np.asarray(outputs[name]).nbytes) for name in names if name in outputs}


def samples_per_run(sizes: dict[str, int], budget: int = ACTIVATION_BUDGET) -> int:
    """How many samples one run may take so that its activations (``sizes``: bytes per sample,
    from :func:`activation_bytes`) stay within ``budget`` bytes."""
    return max(1, int(budget // max(sum(sizes.values()), 1)))


def tensor_groups(names: Sequence[str], sizes: Optional[dict[str, int]], per_run: int,
                  budget: int = ACTIVATION_BUDGET, group: int = 32) -> list[list[str]]:
    """``names`` in passes: without ``sizes``, ``group`` at a time; with them, as many as fit
    ``budget`` bytes per run for both models (half each), at least one per pass."""
    if not sizes:
        return [list(names[i:i + group]) for i in range(0, len(names), group)]
    limit = budget // 2
    groups: list[list[str]] = [[]]
    used = 0
    for name in names:
        cost = sizes.get(name, 0) * per_run
        if groups[-1] and used + cost > limit:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += cost
    return [g for g in groups if g]


@dataclass
class Evaluation:
    """What one candidate scored: the metric's result (per output, and its one ``score``)."""

    outputs: list[dict]
    samples: int
    metric: dict = field(default_factory=dict)


def evaluate(reference: OrtRunner, candidates: dict[str, OrtRunner], batches: Iterable,
             outputs: Sequence[str], progress=None, *, metric: str = "auto",
             metric_params: Optional[dict] = None, per_run: Optional[int] = None) -> dict[str, Evaluation]:
    """Every candidate against one reference, in a single pass over ``batches``.

    The reference runs once per batch however many candidates there are; the runners return
    the model outputs only, so the numbers are those of exactly the graphs a user would build.
    ``metric``: a metric plugin's name or ``module:Class`` (:mod:`quantlab.evaluation.metrics`);
    ``auto`` picks one from the outputs' shapes at the first batch. ``per_run``: the most
    samples one ONNX Runtime run takes (:func:`samples_per_run`).
    """
    return evaluation_results(metric_states(reference, candidates, batches, outputs, progress, metric=metric,
                                            metric_params=metric_params, per_run=per_run), metric)


@dataclass
class MetricStates:
    """Each candidate's metric sums over some samples, before their results: what shards merge.

    Every metric is an exact, mergeable sum (:mod:`quantlab.evaluation.metrics.base`), so the
    states of shards merged in shard order give the numbers of one pass over all of them.
    """

    states: dict[str, Any]
    chosen: str  # the metric that ran (``auto`` resolved)
    samples: int

    def merge(self, other: MetricStates) -> None:
        if list(other.states) != list(self.states) or other.chosen != self.chosen:
            raise QuantlabError(f"cannot merge evaluations of different candidates or metrics ({other.chosen} "
                                f"into {self.chosen})")
        for label, state in other.states.items():
            self.states[label].merge(state)
        self.samples += other.samples


def metric_states(reference: OrtRunner, candidates: dict[str, OrtRunner], batches: Iterable,
                  outputs: Sequence[str], progress=None, *, metric: str = "auto",
                  metric_params: Optional[dict] = None, per_run: Optional[int] = None) -> MetricStates:
    """The pass of :func:`evaluate`, stopping short of the results (``progress``: has ``update(n)``)."""
    metrics: dict[str, Any] = {}
    chosen = metric
    samples = 0
    for batch in slices(batches, per_run):
        ref = reference.run(batch.inputs)
        if not metrics:
            if metric == "auto":
                chosen = detect_metric({name: ref[name].shape[1:] for name in outputs})
            metrics = {label: make_metric(chosen, outputs, **(metric_params or {})) for label in candidates}
        for label, runner in candidates.items():
            got = {n: v for n, v in runner.run(batch.inputs).items() if n in outputs}
            _update(metrics[label], chosen, {n: ref[n] for n in outputs}, got, batch)
        samples += len(batch.indices)
        if progress is not None:
            progress.update(len(batch.indices))
    return MetricStates(metrics, chosen, samples)


def _update(metric, name: str, reference: dict, candidate: dict, batch) -> None:
    """``metric.update`` of one batch; a plugin's own failure is named as the plugin's, with the samples."""
    try:
        metric.update(reference, candidate, batch.labels)
    except QuantlabError:
        raise
    except Exception as exc:
        first, last = int(batch.indices[0]), int(batch.indices[-1])
        raise QuantlabError(f"metric {name!r} failed in update() on samples {first}..{last}: {type(exc).__name__}: "
                            f"{exc} (in {type(metric).__module__}.{type(metric).__qualname__})",
                            params=("metric",)) from exc


def evaluation_results(states: MetricStates, metric: str = "auto") -> dict[str, Evaluation]:
    """Each candidate's :class:`Evaluation` from its (merged) metric sums; ``metric`` as asked for."""
    if not states.states:
        raise QuantlabError("no held-out samples to evaluate on")
    found = {}
    for label, state in states.states.items():
        try:
            result = state.result()
        except QuantlabError:
            raise
        except Exception as exc:
            raise QuantlabError(f"metric {states.chosen!r} failed in result(): {type(exc).__name__}: {exc} (in "
                                f"{type(state).__module__}.{type(state).__qualname__})", params=("metric",)) from exc
        summary = {key: value for key, value in result.items() if key != "outputs"}
        summary.setdefault("metric", states.chosen)
        summary["chosen"] = "auto" if metric == "auto" else "given"
        found[label] = Evaluation(list(result.get("outputs", [])), states.samples, summary)
    return found


# --------------------------------------------------------------------------- sharded evaluation


@dataclass
class QdqCandidate:
    """A Q/DQ model as its ranges: small to ship; :func:`~quantlab.qdq.export_qdq` rebuilds it where
    it runs. ``qdq``: placement, layers kept out of INT8 (``tune``'s fallback layers) and the type of
    the remainder; ``measured``: the ranges that type it (:class:`~quantlab.qdq.MeasuredRange`).
    :meth:`build` gives the model that is scored - the float32 model that computes what the typed
    model stores (its fp16 tensors rounded to fp16), so what is scored is what is written;
    :meth:`export` gives the typed model to write. ``model``: the scored model the driver built
    already (used in place under ``local``; dropped in transit, a worker rebuilds it)."""

    activations: dict[str, float]
    weights: Optional[dict] = None
    qdq: QdqOptions = QdqOptions()
    measured: Optional[dict] = None
    model: Optional[onnx.ModelProto] = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "model": None}

    def build(self, graph) -> onnx.ModelProto:
        if self.model is None:
            self.model, _ = export_qdq(graph, self.activations, self.weights, self.qdq, measured=self.measured,
                                       emulate=True)
        return self.model

    def export(self, graph) -> onnx.ModelProto:
        """The typed Q/DQ model these ranges and options write."""
        return export_qdq(graph, self.activations, self.weights, self.qdq, measured=self.measured)[0]


@dataclass
class EvaluationShard:
    """The work unit of evaluation: held-out samples ``[start, stop)`` of the seeded selection, every
    candidate against the FP32 model -> :class:`MetricStates` (and the samples' fingerprint)."""

    model: ModelRef
    data: DataSpec  # its source portable (quantlab.executors.shipping.portable_source)
    start: int
    stop: int
    candidates: dict[str, QdqCandidate]
    outputs: list[str]
    metric: str = "auto"
    metric_params: Optional[dict] = None
    per_run: Optional[int] = None
    providers: Optional[tuple] = None
    arithmetic: str = "tensorrt"
    threads: Optional[int] = None  # ONNX Runtime threads of each session (None: its default)


@dataclass
class ShardEvaluation:
    states: MetricStates
    fingerprint: DataFingerprint  # of the shard's samples


@dataclass
class HeldOutPlan:
    count: int  # held-out samples selected
    per_run: int  # samples one ONNX Runtime run may take (:func:`samples_per_run`)


class _Reporter:
    """``progress.update(n)`` for :func:`metric_states` inside a task: the executor's progress."""

    @staticmethod
    def update(units: int) -> None:
        report_progress(units)


def plan_heldout(task: DataTask) -> HeldOutPlan:
    """On a worker: how many held-out samples ``task`` selects, and how many of them one run may take
    (measured on the first sample)."""
    graph = task.model.load()
    dataset = task.open()
    indices = task.selection(dataset)
    first = next(iterate_batches(dataset, indices[:1], graph.inputs, task.data.preprocess, 1))
    sizes = activation_bytes(graph.model, graph.activations, first.inputs, None)
    return HeldOutPlan(len(indices), samples_per_run(sizes))


def evaluate_shard(task: EvaluationShard) -> ShardEvaluation:
    """On a worker: one shard of held-out samples through the FP32 model and every candidate."""
    graph = task.model.load()
    data_task = DataTask(task.model, task.data)
    dataset = data_task.open()
    indices = data_task.selection(dataset)[task.start:task.stop]
    threads = task.threads or 0
    digest = hashlib.sha256(pickle.dumps((task.candidates, task.providers, task.arithmetic, threads))).hexdigest()

    def runners():
        # The sessions take turns on the worker's cores, so idle threads sleep (OrtRunner's default).
        return (OrtRunner(graph.model, (), task.providers, threads=threads),
                {label: OrtRunner(candidate.build(graph), (), task.providers, task.arithmetic, threads=threads)
                 for label, candidate in task.candidates.items()})

    reference, candidates = worker_cached("runners", (graph.sha256, digest), runners)
    fingerprint = DataFingerprint()

    def batches():
        for batch in iterate_batches(dataset, indices, graph.inputs, task.data.preprocess, task.data.batch_size):
            fingerprint.add(batch.inputs)
            yield batch

    states = metric_states(reference, candidates, batches(), task.outputs, _Reporter(), metric=task.metric,
                           metric_params=task.metric_params, per_run=task.per_run)
    return ShardEvaluation(states, fingerprint)


def _portable(graph, data: DataSpec) -> tuple[DataSpec, ModelRef]:
    """The held-out data and the model as tasks carry them, checked first."""
    source = data_source(graph, data, "held-out")
    check_batch_size(data.batch_size)
    data.preprocess.check_against(graph.inputs)
    spec = replace(data, source=portable_source(source))
    return spec, ModelRef.of(graph)


def heldout_plan(graph, data: DataSpec, executor: Executor) -> HeldOutPlan:
    """How many held-out samples ``data`` selects and how many one run may take, measured on a worker."""
    spec, ref = _portable(graph, data)
    return executor.map(plan_heldout, [DataTask(ref, spec)])[0]


def evaluate_sharded(graph, data: DataSpec, candidates: dict[str, QdqCandidate], evaluation: EvalOptions,
                     executor: Executor, *, progress: bool = True, desc: str = "evaluating",
                     limit: Optional[int] = None, plan: Optional[HeldOutPlan] = None
                     ) -> tuple[dict[str, Evaluation], DataFingerprint]:
    """Every candidate against the FP32 ``graph`` on the held-out ``data`` (a DataSpec), judged as
    ``evaluation`` says, in shards of whole batches run by ``executor`` and merged in shard order: the
    numbers of one pass, bit for bit. ``limit``: only the first ``limit`` samples of the selection
    (tune's ranking subset). ``plan``: :func:`heldout_plan` of an earlier call on the same data (a
    caller scoring many groups measures it once). Returns each candidate's :class:`Evaluation` and the
    fingerprint of the held-out samples."""
    arithmetic = check_arithmetic(evaluation.int8_arithmetic)
    outputs = select_outputs(graph, evaluation.outputs)
    metric, metric_params = evaluation.metric, dict(evaluation.metric_params)
    providers = evaluation.providers
    spec, ref = _portable(graph, data)
    plan = plan or executor.map(plan_heldout, [DataTask(ref, spec)])[0]
    count = min(plan.count, limit) if limit else plan.count
    shards = plan_shards(count, data.batch_size, executor.shards(-(-count // data.batch_size)))
    tasks = [EvaluationShard(ref, spec, start, stop, candidates, list(outputs), metric, metric_params, plan.per_run,
                             providers, arithmetic, executor.task_threads)
             for start, stop in shards]
    merged: Optional[ShardEvaluation] = None
    bar = tqdm(total=count, unit="sample", desc=desc, disable=not progress, file=sys.stderr)
    with bar, contextlib.closing(executor.imap(evaluate_shard, tasks, bar.update)) as parts:
        for part in parts:
            if merged is None:
                merged = part
            else:
                merged.states.merge(part.states)
                merged.fingerprint.merge(part.fingerprint)
    return evaluation_results(merged.states, metric), merged.fingerprint


@dataclass
class TensorErrors:
    """Per-tensor SQNR of the INT8 model against FP32, and FP32 histograms of those tensors."""

    tensors: list[dict]
    histograms: dict
    samples: int


def tensor_errors(fp32_model: onnx.ModelProto, int8_model: onnx.ModelProto, names: Sequence[str],
                  batches: Callable[[], Iterator], *, group: int = 32, providers: Optional[Sequence[str]] = None,
                  arithmetic: str = "tensorrt", per_run: Optional[int] = None,
                  sizes: Optional[dict[str, int]] = None, aliases: Optional[dict[str, str]] = None) -> TensorErrors:
    """SQNR of every tensor in ``names``, a group of tensors per pass over ``batches()``
    (:func:`tensor_groups`: ``group`` at a time, or by their ``sizes`` within the budget).
    ``aliases``: the name a tensor has in ``int8_model`` where it differs (a typed file renames its
    fp16 tensors).

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
    aliases = aliases or {}
    for chosen in tensor_groups(names, sizes, per_run or 1, group=group):
        fp32 = OrtRunner(fp32_model, chosen, providers)
        int8 = OrtRunner(int8_model, [aliases.get(n, n) for n in chosen], providers, arithmetic)
        samples = 0
        for batch in slices(batches(), per_run):
            ref, got = fp32.run(batch.inputs), int8.run(batch.inputs)
            for name in chosen:
                r = ref[name].astype(np.float64, copy=False)
                e = got[aliases.get(name, name)].astype(np.float64, copy=False) - r
                signal[name] = signal.get(name, 0.0) + float(np.vdot(r, r))
                noise[name] = noise.get(name, 0.0) + float(np.vdot(e, e))
                histograms.setdefault(name, TensorHistogram()).update(ref[name])
            samples += len(batch.indices)
    rows = [{"tensor": n, "sqnr_db": sqnr_db(signal.get(n, 0.0), noise.get(n, 0.0))} for n in names]
    return TensorErrors(rows, histograms, samples)


def optimized_op_counts(model: onnx.ModelProto, arithmetic: str = "tensorrt") -> dict[str, int]:
    """Op types of the graph ONNX Runtime actually runs for ``model`` under ``arithmetic``."""
    with tempfile.TemporaryDirectory() as folder:
        make_session(model.SerializeToString(), optimized_model_path=f"{folder}/optimized.onnx",
                     **session_settings(arithmetic, _is_quantized(model)))
        optimized = onnx.load(f"{folder}/optimized.onnx")
    counts: dict[str, int] = {}
    for node in optimized.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def execution_verdict(qdq_model: onnx.ModelProto, arithmetic: str, providers: Optional[Sequence[str]] = None) -> dict:
    """How the INT8 numbers were computed: which arithmetic, and how many quantized ops ONNX
    Runtime fused into its own integer kernels ("N of M quantized ops fused"); on a torch device,
    that the graph ran there as written."""
    device = device_of(providers)
    if device is not None:
        return {"int8_arithmetic": arithmetic, "integer_ops": {}, "fused_ops": 0, "executes_integer_kernels": False,
                "device": device,
                "verdict": f"TensorRT-faithful: the Q/DQ graph executed as written in torch on {device} "
                           "(quantlab.device): exact int8 rounding and clipping as ONNX Runtime computes them, float "
                           "accumulation"}
    counts = optimized_op_counts(qdq_model, arithmetic)
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
        verdict["verdict"] = ("TensorRT-faithful: the Q/DQ graph executed as written (ONNX Runtime's graph "
                              "optimizations off): exact int8 rounding and clipping, float accumulation")
    else:
        verdict["verdict"] = (f"ONNX Runtime's own INT8 kernels: {fused} of {quantized} quantized ops fused into "
                              "integer kernels" + (" (their u8s8 path saturates 16-bit intermediates on CPUs without "
                                                   "VNNI; TensorRT does not)" if fused else ""))
    return verdict
