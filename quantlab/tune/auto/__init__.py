"""``--method auto``: per tensor, the candidate range that hurts the network least.

No single calibrator is best for every tensor (design.md §9): on a real MobileNetV2 the methods'
ranges for one tensor differ by 0.5x to 6x, and the range that fits a tensor's own histogram best
(``mse``) or keeps its distribution best (``entropy``) is not necessarily the one that hurts the
network least. ``auto`` takes every built-in calibrator's range, and a percentile grid, as the
candidates of each tensor (:data:`AUTO_CANDIDATES`; one collection, no extra statistics) and
judges them by their effect in the arithmetic of the Q/DQ model quantlab exports
(:mod:`quantlab.interpreter.arithmetic`), through a node-by-node run of the graph on an FP32 and an
INT8 path side by side (:mod:`quantlab.interpreter`).

**Held out.** Judged on the samples that set them, candidate ranges are rewarded for fitting those
samples (a percentile that clips exactly the outliers of 64 crops looks best on those crops and
worst on others). So ``auto`` judges on up to ``samples`` calibration samples (at most half of
them) and takes the candidates from the statistics of the *other* calibration samples: the
collection minus the judged samples' own histograms, exact on the power-of-two grid
(:func:`judging_split`). What it chooses per tensor is a method; the final range is that method's
range on all the samples. With fewer than 16 calibration samples it judges in-sample, and says so.

1. **Layer by layer, upstream choices in place.** In graph order, at the first quantized layer
   (Conv/ConvTranspose/Gemm/MatMul) reading a tensor, each candidate is scored by the relative
   squared error it causes at the outputs of the tensor's quantized readers - INT8 path (with the
   ranges chosen so far upstream, INT8 weights) against FP32 - and the best one is kept before the
   INT8 path goes on. Rounding and clipping are judged together, through the weights that multiply
   them.
2. **At the graph outputs.** The layer criterion leans to tight ranges: a clipping error is
   coherent and adds up downstream, rounding noise partly averages out. So step 1's choices and
   each single method's ranges everywhere are judged by the relative squared error of the graph
   outputs, and the best of them is refined by coordinate descent at the outputs: tensor by tensor
   in graph order, one candidate wider (else tighter) while the output error drops, only the nodes
   downstream of that tensor run again, within ``refine_passes`` graph passes in all.
3. The least output error wins. So ``auto`` is never worse at the outputs, on these samples, than
   any single method (ties go to the earlier in step 2's order: layer choices, then the methods in
   :data:`AUTO_CANDIDATES` order, then the refinement).

Tensors no quantized layer reads (a Conv output that feeds a ReLU, an Add input: only an implicit
TensorRT build reads their ranges) get the candidate with the least quantization error of the
tensor itself, from its histogram. Graphs with control flow (If/Loop/Scan) and models with a fixed
batch size cannot run node by node on a stack of samples: there ``auto`` judges only the single
methods, as whole Q/DQ models, at the outputs.

Cost, besides the one collection: the calibrators, one two-path pass that scores up to
``len(candidates)`` one-layer runs per quantized layer, one INT8 pass per single method, and the
refinement (at most about one graph pass per quantized tensor), each on ``samples`` samples.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from tqdm import tqdm

from ...calibrate import Method, RangeJob, RangePolicy, calibrate_statistics, method_label
from ...collector import ACTIVATION_BUDGET, make_collector
from ...errors import CalibratorError, DataError, QuantlabError
from ...evaluation.engine import OrtRunner, activation_bytes
from ...graph import ModelGraph
from ...heap import return_freed_memory
from ...interpreter import NodeSessions, TwoPathRun, has_subgraphs, peak_bytes, refine
from ...interpreter.arithmetic import fake_quantize, histogram_error, relative_error
from ...preprocess import Batch
from ...qdq import QUANTIZED_OPS, QdqOptions, export_qdq
from ...statistics import Statistics
from ...table import CalibrationTable
from ...workload import DataSpec, is_default_model, sample_inputs

__all__ = ["AUTO", "AUTO_CANDIDATES", "DEFAULT_SAMPLES", "AutoChoice", "AutoChooser", "AutoOptions", "choose_ranges",
           "fake_quantize", "histogram_error"]

AUTO = "auto"
# Every built-in method, and percentiles from tight to loose: the grid auto chooses from.
AUTO_CANDIDATES: tuple[tuple[str, dict], ...] = (
    ("entropy", {}),
    ("mse", {}),
    ("percentile", {"p": 99.9}),
    ("percentile", {"p": 99.99}),
    ("percentile", {"p": 99.999}),
    ("percentile", {"p": 99.9999}),
    ("max", {}),
)
DEFAULT_SAMPLES = 32
LAYER_SAMPLES = 16  # the layer criterion's samples (an average over every position of each)
REFINE_PASSES = 2.0
# A held-out judgement needs samples on both sides: fewer than these and auto judges in-sample, with a note.
MIN_JUDGED = 8
MIN_FITTED = 8
REFINED = "auto, refined at the outputs"
CRITERION = ("relative squared error of the graph outputs (Q/DQ arithmetic, INT8 weights) on calibration "
             "samples: layer-by-layer choices (error at the quantized readers' outputs, upstream choices in "
             "place) and each single method, the best refined tensor by tensor; tensors no quantized layer "
             "reads: their own quantization error, from the histogram")

# The arithmetic auto judges ranges in, on every path: the INT8 path of its node-by-node
# interpreter (quantize the inputs of the compute layers, every other op in float32) and, for
# graphs it cannot run node by node, the whole Q/DQ model. Ranges are what auto chooses;
# placement and the typed remainder are applied when the chosen ranges are exported.
JUDGED = QdqOptions(placement="compute", high_precision="fp32")


@dataclass
class AutoChoice:
    """What ``auto`` chose per tensor, and how each alternative scored (for the table and report)."""

    methods: dict[str, str]  # tensor -> chosen candidate's label
    errors: dict[str, dict[str, float]]  # tensor -> candidate label -> its layer (or histogram) criterion
    judged_by: dict[str, str]  # tensor -> "consumers" (the layer criterion), "histogram" or "outputs" (whole models)
    samples: int
    seconds: float
    candidates: list[str] = field(default_factory=list)
    network: dict[str, float] = field(default_factory=dict)  # alternative -> relative error at the graph outputs
    winner: str = AUTO  # the alternative taken: "auto" (layer choices), a method, or the refinement
    held_out: bool = False  # judged on samples that did not set the candidate ranges
    note: str = ""  # how the samples were split, or why they were not


def consumers_of(graph: ModelGraph, tensors: Sequence[str]) -> dict[str, list[int]]:
    """Positions of the quantized layers (Conv/ConvTranspose/Gemm/MatMul) that read each tensor."""
    wanted = set(tensors)
    out: dict[str, list[int]] = {}
    for position, node in enumerate(graph.model.graph.node):
        if node.op_type in QUANTIZED_OPS:
            for name in dict.fromkeys(node.input[:2]):
                if name in wanted:
                    out.setdefault(name, []).append(position)
    return out


def candidate_tables(graph: ModelGraph, stats: Statistics, candidates: Sequence[tuple[str, dict]],
                     policy: RangePolicy = RangePolicy()) -> dict[str, CalibrationTable]:
    """Each candidate method's table on the one collection, keyed by its label."""
    return {method_label(method, params): calibrate_statistics(graph, stats, Method(method, params), policy=policy)
            for method, params in candidates}


@dataclass(frozen=True)
class AutoOptions:
    """How ``auto`` judges: the ``candidates`` (methods), the calibration ``samples`` it judges on
    (at most half of the calibration samples when ``held_out``: the candidates then come from the
    other ones), ONNX Runtime ``providers``, the activation bytes its node-by-node runs may hold
    (``budget``; fewer samples when needed), the graph passes the refinement may take in all, and the
    samples of those the layer criterion scores candidates on (``layer_samples``)."""

    candidates: tuple = AUTO_CANDIDATES
    samples: int = DEFAULT_SAMPLES
    providers: Optional[tuple] = None
    budget: int = 4 * ACTIVATION_BUDGET
    refine_passes: float = REFINE_PASSES
    held_out: bool = True
    layer_samples: Optional[int] = LAYER_SAMPLES


@dataclass
class JudgingSplit:
    """The samples ``auto`` judges on, and the statistics its candidate ranges come from.

    Held out (the default): the judged samples are the first of the calibration selection, the
    candidates are each method's range on the statistics of the *other* samples (the collection
    minus the judged samples' own statistics: exact on the power-of-two grid), so a range is
    rewarded for how it generalises, not for fitting the samples that judge it. The final ranges
    are the chosen methods' ranges on all the statistics."""

    inputs: dict[str, np.ndarray]
    fitted: Statistics  # where the candidates come from
    judged: Statistics  # the judged samples' statistics (for the histogram criterion)
    held_out: bool
    note: str = ""

    @property
    def count(self) -> int:
        return len(next(iter(self.inputs.values()))) if self.inputs else 0


def judging_split(graph: ModelGraph, stats: Statistics, data: DataSpec, samples: int,
                  options: AutoOptions) -> JudgingSplit:
    """At most ``samples`` judged samples, held out from the candidates' statistics when
    ``options.held_out`` and there are enough calibration samples (:data:`MIN_JUDGED` judged,
    :data:`MIN_FITTED` fitted); otherwise judged in-sample, and the note says why."""
    total = stats.num_samples
    count = min(samples, total // 2, total - MIN_FITTED)
    if not options.held_out or count < MIN_JUDGED:
        why = ("held_out off" if not options.held_out else
               f"a held-out judgement needs at least {MIN_JUDGED + MIN_FITTED} calibration samples ({MIN_JUDGED} "
               f"judged, {MIN_FITTED} to set the candidate ranges); there are {total}")
        inputs = sample_inputs(graph, data, min(samples, total) if total else samples)
        return JudgingSplit(inputs, stats, stats, False, f"judged on the samples that set the ranges ({why})")
    inputs = sample_inputs(graph, data, count)
    count = len(next(iter(inputs.values())))
    collector = make_collector(graph, list(stats.tensors), bins=stats.bins, providers=options.providers)
    fixed = next((spec.fixed_batch for spec in graph.inputs if spec.fixed_batch), None)
    # a fixed-batch model takes no other size (the count is a multiple of it)
    batches = list(_runs(Batch(inputs, None, np.arange(count)), fixed or count))
    judged = collector.collect(batches, total=count, progress=False)
    fitted = stats.without(judged)
    if fitted is None:
        return JudgingSplit(inputs, stats, judged, True,
                            "the judged samples are not among the samples of the statistics: candidates from all "
                            "of them")
    for name, hist in fitted.tensors.items():
        if hist.max_abs == 0 and stats.tensors[name].max_abs > 0:  # only the judged samples reached it
            fitted.tensors[name] = stats.tensors[name]
    return JudgingSplit(inputs, fitted, judged, True,
                        f"candidates set on {fitted.num_samples} calibration samples, judged on {count} others")


def choose_ranges(graph: ModelGraph, stats: Statistics, data: DataSpec, options: AutoOptions = AutoOptions(), *,
                  policy: RangePolicy = RangePolicy(), progress: bool = True) -> tuple[CalibrationTable, AutoChoice]:
    """``auto``'s table: per tensor of ``stats``, the method chosen as the module docstring says, on
    judged samples of ``data`` (the calibration data the statistics came from); each tensor then
    gets its method's range on all of ``stats``."""
    candidates, samples, providers = options.candidates, options.samples, options.providers
    started = time.perf_counter()
    if not candidates:
        raise QuantlabError("auto needs at least one candidate method", params=("candidates",))
    if not (isinstance(samples, int) and samples > 0):
        raise QuantlabError(f"`auto_samples` must be a positive integer, got {samples!r}", params=("auto_samples",))
    labelled = {method_label(method, params): (method, params) for method, params in candidates}
    labels = list(labelled)
    names = list(stats.tensors)
    readers = consumers_of(graph, [n for n in names if n not in graph.data_independent])
    fixed = next((spec.fixed_batch for spec in graph.inputs if spec.fixed_batch), None)
    whole_models = has_subgraphs(graph) or bool(fixed)
    sizes: dict[str, int] = {}
    if readers and not whole_models:
        sizes = activation_bytes(graph.model, list(dict.fromkeys(graph.activations)), sample_inputs(graph, data, 1),
                                 providers)
        samples = min(samples, max(1, int(options.budget // max(3 * peak_bytes(graph, sizes), 1))))
    split = judging_split(graph, stats, data, samples, options)
    tables = candidate_tables(graph, split.fitted, candidates, policy)
    errors: dict[str, dict[str, float]] = {}
    judged: dict[str, str] = {}
    for name in names:
        if name not in readers:
            hist = split.judged.tensors[name]
            errors[name] = {label: histogram_error(hist.counts, hist.edges, tables[label].activations[name])
                            for label in labels}
            judged[name] = "histogram"
    methods = {name: min(labels, key=lambda label: (errs[label], labels.index(label))) for name, errs in errors.items()}
    network: dict[str, float] = {}
    alternatives: dict[str, dict[str, str]] = {}  # alternative -> tensor -> label
    if readers:
        if whole_models:
            network, alternatives = _judge_whole_models(graph, tables, labels, readers, split.inputs, providers,
                                                        fixed or 32)
        else:
            network, alternatives = _judge_node_by_node(graph, split.inputs, sizes, tables, labels, readers, options,
                                                        progress, errors, judged)
    for name in readers:
        judged.setdefault(name, "outputs")
    order = list(alternatives)
    winner = min(network, key=lambda label: (network[label], order.index(label))) if network else AUTO
    if readers:
        methods.update(alternatives[winner])
    choice = AutoChoice(methods, errors, judged, split.count, time.perf_counter() - started, labels, network, winner,
                        split.held_out, split.note)
    table = chosen_table(graph, stats, methods, labelled, policy)
    counts: dict[str, int] = {}
    for label in methods.values():
        counts[label] = counts.get(label, 0) + 1
    table.provenance["auto"] = {"criterion": CRITERION, "samples": split.count, "held_out": split.held_out,
                                "judging": split.note, "chosen_counts": counts, "network_error": network,
                                "winner": winner}
    return table, choice


def chosen_table(graph: ModelGraph, stats: Statistics, methods: dict[str, str], labelled: dict[str, tuple],
                 policy: RangePolicy) -> CalibrationTable:
    """The table of per-tensor choices: each tensor's chosen method run on its histogram of all the
    calibration samples (each method sees only the tensors that chose it)."""
    activations: dict[str, float] = {}
    notes: dict[str, str] = {}
    weights, provenance = None, None
    for label in dict.fromkeys(methods[name] for name in stats.tensors):
        method, params = labelled[label]
        part = Statistics(stats.model_sha256, {n: h for n, h in stats.tensors.items() if methods[n] == label},
                          stats.num_samples, stats.fingerprint, stats.bins, stats.scaling, stats.input_shapes)
        table = calibrate_statistics(graph, part, Method(method, params), policy=policy)
        activations.update(table.activations)
        notes.update(table.notes)
        weights, provenance = table.weights, table.provenance
    activations = {name: activations[name] for name in stats.tensors}
    return CalibrationTable(AUTO, {"candidates": list(labelled)}, activations, weights, dict(provenance or {}), notes,
                            methods=dict(methods))


class AutoChooser:
    """``--method auto`` as a range chooser of the calibration pipeline (registered in the
    ``quantlab.calibrators`` entry-point group like every method): it takes one parameter,
    ``samples``, the calibration samples it judges ranges on."""

    name = AUTO
    trt_algorithm = "EntropyCalibration2"  # its ranges come from several methods; TensorRT reads any alike
    description = "per tensor, among the methods above, by the error at the graph outputs; --param samples=N"

    def __init__(self, samples: int = DEFAULT_SAMPLES):
        try:
            value = int(samples)
        except (TypeError, ValueError):
            raise CalibratorError(f"method 'auto': samples must be a positive integer, got {samples!r}") from None
        if value < 1:
            raise CalibratorError(f"method 'auto': samples must be a positive integer, got {samples!r}")
        self.samples = value

    def params(self) -> dict:
        return {"samples": self.samples}

    def choose(self, job: RangeJob) -> CalibrationTable:
        """The table of ``job``: it reads the calibration samples again, so it needs ``job.data``."""
        if job.data is None or (job.data.source is None and not is_default_model(job.graph)):
            raise DataError("method 'auto' judges ranges on calibration samples, so it needs the calibration data "
                            "the statistics came from: give `data` too", params=("data",))
        table, _ = choose_ranges(job.graph, job.stats, job.data, AutoOptions(samples=self.samples,
                                                                              providers=job.providers),
                                 policy=job.policy, progress=job.progress)
        return table


def _judge_node_by_node(graph: ModelGraph, inputs: dict[str, np.ndarray], sizes: dict[str, int], tables: dict,
                        labels: list[str], readers: dict[str, list[int]], options: AutoOptions, progress: bool,
                        errors: dict, judged: dict) -> tuple[dict, dict]:
    """Steps 1-3 of the module docstring on ``inputs``; fills ``errors``/``judged`` for the layer criterion.

    Memory: the two-path passes hold two paths of live values and the candidates' outputs at one
    layer (``inputs`` were sized for that), and the refinement (which keeps every INT8 value, twice
    while it tries a move) as many samples as fit ``options.budget`` with all of them."""
    budget = options.budget
    used = len(next(iter(inputs.values())))
    if used * 3 * peak_bytes(graph, sizes) > ACTIVATION_BUDGET:
        # The passes allocate and free arrays of this size thousands of times: with glibc's adaptive mmap
        # threshold its heap fragments and never shrinks (MobileNetV2 at 224x224: 4.4 GB peak instead of
        # 1.4 GB, for 30 % more time). Small working sets keep the faster default (the embedded model:
        # 0.4 GB either way, 60 % slower with the fixed threshold).
        return_freed_memory()
    sessions = NodeSessions(graph, options.providers)
    values_of = {name: {tables[label].activations[name]: label for label in reversed(labels)} for name in readers}

    def decide(name: str, judge) -> float:
        scored: dict[float, float] = {}
        errs = {}
        for label in labels:
            amax = tables[label].activations[name]
            if amax not in scored:
                scored[amax] = judge(amax)
            errs[label] = scored[amax]
        errors[name] = errs
        judged[name] = "consumers"
        return tables[min(labels, key=lambda label: (errs[label], labels.index(label)))].activations[name]

    first = TwoPathRun(sessions, readers, judge_samples=options.layer_samples)
    error, reference, _ = first.run(inputs, decide, progress)
    alternatives = {AUTO: {name: values_of[name][amax] for name, amax in first.chosen.items()}}
    network = {AUTO: error}
    seen = {tuple(first.chosen[name] for name in readers): error}
    for label in tqdm(labels, desc="auto: judging each method at the outputs", disable=not progress, file=sys.stderr):
        key = tuple(tables[label].activations[name] for name in readers)
        if key not in seen:  # the same ranges as an alternative before score the same
            # One method everywhere needs no node-by-node run: its Q/DQ model, whole, in one session
            # (the same arithmetic, 3x faster on MobileNetV2).
            seen[key] = whole_model_error(graph, tables[label], inputs, reference, options.providers)
        alternatives[label], network[label] = dict.fromkeys(readers, label), seen[key]
    if options.refine_passes <= 0:
        return network, alternatives
    start = min(network, key=lambda label: (network[label], list(alternatives).index(label)))
    kept = max(1, int(budget // max(2 * sum(sizes.values()), 1)))
    refine_inputs = {k: v[:kept] for k, v in inputs.items()}
    refine_reference = {k: v[:kept] for k, v in reference.items()}
    begin = {name: tables[alternatives[start][name]].activations[name] for name in readers}
    candidates = {name: list(values_of[name]) for name in readers}
    refined, refined_error, _ = refine(sessions, refine_inputs, readers, candidates, begin, refine_reference,
                                       options.refine_passes, progress)
    if kept < used:  # judged on fewer samples: compare it with the start on all of them
        refined_error = TwoPathRun(sessions, readers, refined, reference).run(inputs)[0]
    if refined_error < network[start]:
        alternatives[REFINED] = {name: values_of[name][amax] for name, amax in refined.items()}
        network[REFINED] = refined_error
    return network, alternatives


def _judge_whole_models(graph: ModelGraph, tables: dict, labels: list[str], readers: dict,
                        inputs: dict[str, np.ndarray], providers, step: int) -> tuple[dict, dict]:
    """For graphs with control flow (If/Loop/Scan) or a fixed batch size, which cannot run node by
    node on a stack of samples: each single method's Q/DQ model judged at the outputs, ``step``
    samples a run."""
    reference = _run_whole(OrtRunner(graph.model, (), providers), graph, inputs, step)
    network = {label: whole_model_error(graph, tables[label], inputs, reference, providers, step) for label in labels}
    return network, {label: dict.fromkeys(readers, label) for label in labels}


def whole_model_error(graph: ModelGraph, table: CalibrationTable, inputs: dict[str, np.ndarray],
                      reference: dict[str, np.ndarray], providers=None, step: Optional[int] = None) -> float:
    """Relative squared error of the graph outputs of ``table``'s Q/DQ model (the arithmetic auto
    judges in) against ``reference``, run whole in one ONNX Runtime session, ``step`` samples a run."""
    model, _ = export_qdq(graph, table.activations, table.weights, JUDGED)
    got = _run_whole(OrtRunner(model, (), providers), graph, inputs, step)
    return sum(relative_error(got[n], reference[n]) for n in graph.output_names)


def _run_whole(runner: OrtRunner, graph: ModelGraph, inputs: dict[str, np.ndarray],
               step: Optional[int]) -> dict[str, np.ndarray]:
    """The graph outputs of ``runner`` on ``inputs``, ``step`` samples a run (None: all at once)."""
    count = len(next(iter(inputs.values())))
    runs = [runner.run(b.inputs) for b in _runs(Batch(inputs, None, np.arange(count)), step or count)]
    return {n: np.concatenate([r[n] for r in runs]) for n in graph.output_names}


def _runs(batch: Batch, step: int):
    """``batch`` in runs of exactly ``step`` samples (a fixed-batch model takes no other size)."""
    count = len(batch.indices)
    for start in range(0, count - count % step if count >= step else count, step):
        part = slice(start, start + step)
        yield Batch({k: v[part] for k, v in batch.inputs.items()}, None, batch.indices[part])
