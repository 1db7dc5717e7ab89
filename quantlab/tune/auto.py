"""``--method auto``: per tensor, the candidate range that hurts the layers reading it least.

No single calibrator is best for every tensor (design.md §9): on a real MobileNetV2 the methods'
ranges for one tensor differ by 0.5x to 6x, and a range that fits a tensor's own histogram best
(``mse``) or keeps its distribution best (``entropy``) is not necessarily the one that hurts the
network least. So ``auto`` takes every built-in calibrator's range (and a small percentile grid)
as candidates and judges them by their effect where INT8 is computed.

The criterion, per activation tensor ``t``:

* if ``t`` feeds quantized layers (Conv, ConvTranspose, Gemm, MatMul: where TensorRT runs INT8),
  each candidate amax ``a`` is scored by the error it causes at those layers' outputs:
  ``sum over consumers L of ||L(q_a(t), q(W)) - L(t, W)||^2 / ||L(t, W)||^2`` on the first
  ``samples`` calibration samples, where ``q_a`` is exactly QuantizeLinear -> DequantizeLinear with
  scale ``float32(a / 127)`` and ``q(W)`` the layer's per-channel INT8 weights - the arithmetic of
  the Q/DQ model quantlab exports, so rounding *and* clipping are judged together, through the
  weights that multiply them. Each layer runs as a one-node ONNX Runtime session.
* otherwise (a tensor only an implicit TensorRT build reads: a Conv output feeding a ReLU, an
  Add input), the candidate with the least relative squared quantization error of ``t`` itself,
  from its histogram.

Every other input of a consumer keeps its FP32 value, so each tensor's choice is independent of
the others: the tensors can be scored in any order or in parallel and the result is the same
(an executor can fan them out), and the choice is never worse than any single candidate method on
this criterion (per tensor it is the minimum). Ties go to the earlier candidate in
:data:`AUTO_CANDIDATES`. What this does *not* do is re-run the network with the upstream choices
in place; the network-level effect is what ``compare``/``sweep``/``tune`` measure on held-out data.

Cost: the calibrators on the one collection, plus one FP32 pass over ``samples`` samples that
keeps the consumers' inputs and outputs, plus ``len(candidates)`` one-layer runs per quantized
layer on those samples: about ``len(candidates) * samples`` samples' worth of the network's
compute.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper
from tqdm import tqdm

from .. import defaults
from ..calibrate import DataSpec, calibrate_statistics, open_dataset
from ..collector import ACTIVATION_BUDGET, make_session
from ..errors import DataError, QuantlabError
from ..evaluation.compare import method_label
from ..evaluation.engine import OrtRunner, activation_bytes, samples_per_run, slices
from ..graph import ModelGraph
from ..preprocess import iterate_batches, select_indices
from ..qdq import QUANTIZED_OPS
from ..statistics import Statistics
from ..table import CalibrationTable
from ..weights import per_channel_amax

AUTO = "auto"
# Every built-in method, and percentiles from loose to tight: the grid auto chooses from.
AUTO_CANDIDATES: tuple[tuple[str, dict], ...] = (
    ("entropy", {}),
    ("mse", {}),
    ("percentile", {"p": 99.9}),
    ("percentile", {"p": 99.99}),
    ("percentile", {"p": 99.999}),
    ("percentile", {"p": 99.9999}),
    ("max", {}),
)
DEFAULT_SAMPLES = 64
CRITERION = ("relative squared error at the outputs of the quantized layers reading the tensor "
             "(Q/DQ arithmetic, INT8 weights), else of the tensor itself from its histogram")


@dataclass
class AutoChoice:
    """What ``auto`` chose per tensor, and the criterion of every candidate (for the report)."""

    methods: dict[str, str]  # tensor -> chosen candidate's label
    errors: dict[str, dict[str, float]]  # tensor -> candidate label -> criterion
    judged_by: dict[str, str]  # tensor -> "consumers" or "histogram"
    samples: int
    seconds: float
    candidates: list[str] = field(default_factory=list)
    network: dict[str, float] = field(default_factory=dict)  # candidate or "auto" -> error at the graph outputs
    winner: str = AUTO  # "auto" (per-tensor choices), or the one method whose ranges did better everywhere

    def totals(self) -> dict[str, float]:
        """The criterion summed over tensors: for auto's choices and for each single candidate."""
        out = {label: math.fsum(errs[label] for errs in self.errors.values()) for label in self.candidates}
        out[AUTO] = math.fsum(errs[self.methods[name]] for name, errs in self.errors.items())
        return out


def fake_quantize(x: np.ndarray, amax: float) -> np.ndarray:
    """QuantizeLinear -> DequantizeLinear of ``x`` with scale float32(amax / 127), zero point 0,
    computed in float32 as ONNX Runtime and TensorRT do (round half to even, saturate to int8)."""
    scale = np.float32(amax / 127.0)
    return (np.clip(np.rint(np.asarray(x, np.float32) / scale), -128, 127) * scale).astype(np.float32)


def fake_quantize_weight(w: np.ndarray, axis: int) -> np.ndarray:
    """The dequantized INT8 weight quantlab's Q/DQ export computes (per-channel max |w|)."""
    w = np.asarray(w, np.float32)
    axis = axis % w.ndim
    amax = per_channel_amax(w, axis)
    scales = (np.where(amax > 0, amax, 1.0) / 127.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    return (np.clip(np.rint(w / scales.reshape(shape)), -127, 127) * scales.reshape(shape)).astype(np.float32)


def histogram_error(counts: np.ndarray, edges: np.ndarray, amax: float) -> float:
    """Relative squared error of fake-quantizing a tensor with ``amax``, from its |x| histogram
    (each bin's values at its centre): the criterion for tensors no quantized layer reads."""
    counts = np.asarray(counts, np.float64)
    centers = (np.asarray(edges[1:], np.float64) + np.asarray(edges[:-1], np.float64)) / 2
    signal = float(np.dot(counts, centers ** 2))
    if signal == 0:
        return 0.0
    scale = amax / 127.0
    quantized = np.clip(np.rint(centers / scale), -128, 127) * scale
    return float(np.dot(counts, (quantized - centers) ** 2)) / signal


def consumers_of(graph: ModelGraph, tensors: Iterable[str]) -> dict[str, list[onnx.NodeProto]]:
    """The quantized layers (Conv/ConvTranspose/Gemm/MatMul) that read each tensor as an activation."""
    wanted = set(tensors)
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.model.graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        for name in dict.fromkeys(node.input[:2]):
            if name in wanted:
                out.setdefault(name, []).append(node)
    return out


class LayerModel:
    """One quantized layer as its own ONNX Runtime session, with its INT8 (dequantized) weight.

    Its inputs are the layer's runtime inputs, so the layer can be fed an activation fake-quantized
    with any candidate range while its other inputs keep their FP32 values.
    """

    def __init__(self, graph: ModelGraph, node: onnx.NodeProto, providers: Optional[Sequence[str]] = None):
        initializers = {init.name: init for init in graph.model.graph.initializer}
        spec = next((s for s in graph.weights if s.node == (node.name or node.output[0])), None)
        self.inputs = [name for name in dict.fromkeys(node.input) if name and name not in initializers]
        constants = []
        for name in dict.fromkeys(node.input):
            if name in initializers:
                value = numpy_helper.to_array(initializers[name])
                if spec is not None and name == spec.name:
                    value = fake_quantize_weight(value, spec.axis)
                constants.append(numpy_helper.from_array(value, name))
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.output[:] = [node.output[0]] + ["" for _ in node.output[1:]]
        opsets = list(graph.model.opset_import)
        model = helper.make_model(
            helper.make_graph([copy], "layer", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                                                for n in self.inputs],
                              [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)],
                              constants),
            opset_imports=opsets, ir_version=graph.model.ir_version)
        self.output = node.output[0]
        self.session = make_session(model.SerializeToString(), providers, spinning=False)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output], {n: feeds[n] for n in self.inputs})[0]


def candidate_tables(graph: ModelGraph, stats: Statistics, candidates: Sequence[tuple[str, dict]], *,
                     allow_nonfinite: bool = False, zero_amax: Optional[float] = None) -> dict[str, CalibrationTable]:
    """Each candidate method's table on the one collection, keyed by its label."""
    return {method_label(method, params): calibrate_statistics(graph, stats, method, params,
                                                               allow_nonfinite=allow_nonfinite, zero_amax=zero_amax)
            for method, params in candidates}


def _sample_batches(graph: ModelGraph, data: DataSpec, samples: int) -> list:
    """The first ``samples`` of the calibration selection, preprocessed, held in memory (inputs only)."""
    source = data.source if data.source is not None else defaults.CALIBRATION_DATA
    dataset = open_dataset(source, data.data_format, graph)
    indices = select_indices(len(dataset), data.num_samples, data.seed)[:samples]
    fixed = graph.inputs[0].fixed_batch if graph.inputs else None
    batch_size = fixed or data.batch_size
    if fixed:
        indices = indices[:len(indices) - len(indices) % fixed]
        if not len(indices):
            raise DataError(f"the model's batch size is fixed at {fixed}; auto needs at least {fixed} samples "
                            "(`auto_samples`)", params=("auto_samples",))
    return list(iterate_batches(dataset, indices, graph.inputs, data.preprocess, batch_size))


def _node_groups(graph: ModelGraph, nodes: list[onnx.NodeProto], sizes: dict[str, int], samples: int,
                 budget: int) -> list[list[onnx.NodeProto]]:
    """Layers in passes whose kept tensors (inputs and outputs of every layer, ``samples`` each)
    fit ``budget`` bytes; at least one layer a pass."""
    inputs = {spec.name for spec in graph.inputs}
    groups: list[list[onnx.NodeProto]] = [[]]
    held: set[str] = set()
    for node in nodes:
        names = {n for n in list(node.input) + [node.output[0]] if n in sizes and n not in inputs}
        new = names - held
        cost = sum(sizes[n] for n in held | new) * samples
        if groups[-1] and cost > budget:
            groups.append([])
            held = set()
            new = names
        groups[-1].append(node)
        held |= new
    return [g for g in groups if g]


class NodeSessions:
    """Runs a graph one node at a time, each node its own ONNX Runtime session (made on first use,
    typed by the arrays it is fed), so that any tensor's value can be replaced before the nodes
    after it run. Quantized layers get a second session with their INT8 (dequantized) weight."""

    def __init__(self, graph: ModelGraph, providers: Optional[Sequence[str]] = None):
        self.graph = graph
        self.providers = providers
        self.initializers = {init.name: init for init in graph.model.graph.initializer}
        self.weights = {spec.node: spec for spec in graph.weights}
        self._sessions: dict[tuple, object] = {}

    def runtime_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [name for name in dict.fromkeys(node.input) if name and name not in self.initializers]

    def run(self, node: onnx.NodeProto, feeds: dict[str, np.ndarray], int8_weight: bool = False) -> list[np.ndarray]:
        names = self.runtime_inputs(node)
        key = (node.output[0], int8_weight, tuple((n, feeds[n].dtype.str) for n in names))
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = self._session(node, names, feeds, int8_weight)
        return session.run(None, {n: feeds[n] for n in names})

    def _session(self, node: onnx.NodeProto, names: list[str], feeds: dict, int8_weight: bool):
        spec = self.weights.get(node.name or node.output[0]) if int8_weight else None
        constants = []
        for name in dict.fromkeys(node.input):
            if name in self.initializers:
                if spec is not None and name == spec.name:
                    value = fake_quantize_weight(numpy_helper.to_array(self.initializers[name]), spec.axis)
                    constants.append(numpy_helper.from_array(value, name))
                else:
                    constants.append(self.initializers[name])
        inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(feeds[n].dtype), None)
                  for n in names]
        outputs = []
        for name in node.output:
            info = onnx.ValueInfoProto()
            info.name = name
            outputs.append(info)
        model = helper.make_model(helper.make_graph([node], "node", inputs, outputs, constants),
                                  opset_imports=list(self.graph.model.opset_import),
                                  ir_version=self.graph.model.ir_version)
        return make_session(model.SerializeToString(), self.providers, spinning=False)


def _has_subgraphs(graph: ModelGraph) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for node in graph.model.graph.node for a in node.attribute)


def _score_sequential(graph: ModelGraph, batches: list, readers: dict[str, list[onnx.NodeProto]],
                      tables: dict[str, CalibrationTable], labels: list[str],
                      providers: Optional[Sequence[str]], progress: bool,
                      fixed: Optional[dict[str, float]] = None,
                      sessions: Optional[NodeSessions] = None) -> tuple[dict[str, dict[str, float]], float]:
    """The criterion with the upstream choices in place: the graph runs node by node on two paths,
    FP32 and INT8 (Q/DQ on the inputs of quantized layers, INT8 weights, the ranges chosen so far);
    at a quantized layer each undecided input tensor is decided by the error the candidates cause
    at the outputs of its quantized readers (INT8 path, against FP32), and the INT8 path goes on
    with the choice. Values are freed after their last reader.

    With ``fixed`` (tensor -> amax) nothing is decided: the INT8 path runs with those ranges.
    Returns the errors of each decided tensor's candidates and the relative squared error of the
    graph outputs (summed over outputs) of the INT8 path.
    """
    nodes = list(graph.model.graph.node)
    sessions = sessions or NodeSessions(graph, providers)
    inputs = {k: np.concatenate([b.inputs[k] for b in batches]) for k in batches[0].inputs}
    fp: dict[str, np.ndarray] = dict(inputs)
    q: dict[str, np.ndarray] = dict(inputs)
    last_use: dict[str, int] = {}
    for position, node in enumerate(nodes):
        for name in node.input:
            last_use[name] = position
    outputs = set(graph.output_names)
    chosen: dict[str, float] = dict(fixed or {})
    errors: dict[str, dict[str, float]] = {}
    output_error = 0.0

    def fp_output(node: onnx.NodeProto) -> np.ndarray:
        if node.output[0] not in fp:
            for name, value in zip(node.output, sessions.run(node, fp)):
                if name:
                    fp[name] = value
        return fp[node.output[0]]

    def q_feeds(node: onnx.NodeProto, replace: Optional[tuple[str, float]] = None) -> dict[str, np.ndarray]:
        feeds = {}
        for name in sessions.runtime_inputs(node):
            if replace is not None and name == replace[0]:
                feeds[name] = fake_quantize(q[name], replace[1])
            elif name in chosen and name in node.input[:2]:
                feeds[name] = fake_quantize(q[name], chosen[name])
            else:
                feeds[name] = q[name]
        return feeds

    def decide(name: str) -> None:
        ready = [r for r in readers[name] if all(n in q for n in sessions.runtime_inputs(r))]
        refs = {r.output[0]: fp_output(r).astype(np.float64) for r in ready}
        signal = {k: float(np.vdot(v, v)) or 1.0 for k, v in refs.items()}
        seen: dict[float, float] = {}
        errs = {}
        for label in labels:
            amax = tables[label].activations[name]
            if amax not in seen:
                total = 0.0
                for reader in ready:
                    got = sessions.run(reader, q_feeds(reader, (name, amax)), int8_weight=True)[0]
                    diff = got.astype(np.float64) - refs[reader.output[0]]
                    total += float(np.vdot(diff, diff)) / signal[reader.output[0]]
                seen[amax] = total
            errs[label] = seen[amax]
        errors[name] = errs
        best = min(labels, key=lambda label: (errs[label], labels.index(label)))
        chosen[name] = tables[best].activations[name]

    bar = tqdm(total=len(nodes), unit="node", desc="auto: scoring ranges", disable=not progress, file=sys.stderr)
    for position, node in enumerate(nodes):
        quantized = node.op_type in QUANTIZED_OPS
        if quantized:
            for name in dict.fromkeys(node.input[:2]):
                if name in readers and name not in chosen:
                    decide(name)
        fp_output(node)
        runtime = sessions.runtime_inputs(node)
        if not quantized and all(q[n] is fp[n] for n in runtime):
            for name in node.output:
                if name:
                    q[name] = fp[name]  # nothing quantized upstream: the INT8 path is the FP32 path
        else:
            for name, value in zip(node.output, sessions.run(node, q_feeds(node), int8_weight=quantized)):
                if name:
                    q[name] = value
        for name in node.output:
            if name in outputs:
                ref = fp[name].astype(np.float64)
                diff = q[name].astype(np.float64) - ref
                output_error += float(np.vdot(diff, diff)) / (float(np.vdot(ref, ref)) or 1.0)
        for name in node.input:
            if last_use.get(name) == position and name not in outputs:
                fp.pop(name, None)
                q.pop(name, None)
        bar.update(1)
    bar.close()
    return errors, output_error


def _peak_bytes(graph: ModelGraph, sizes: dict[str, int]) -> int:
    """Most bytes per sample alive at once while the graph runs node by node, on one path."""
    nodes = list(graph.model.graph.node)
    last_use: dict[str, int] = {}
    for position, node in enumerate(nodes):
        for name in node.input:
            last_use[name] = position
    alive = {spec.name for spec in graph.inputs}
    peak = sum(sizes.get(n, 0) for n in alive)
    for position, node in enumerate(nodes):
        alive |= {n for n in node.output if n}
        peak = max(peak, sum(sizes.get(n, 0) for n in alive))
        alive = {n for n in alive if last_use.get(n, -1) > position or n in graph.output_names}
    return peak


def choose_ranges(graph: ModelGraph, stats: Statistics, data: DataSpec, *,
                  candidates: Sequence[tuple[str, dict]] = AUTO_CANDIDATES, samples: int = DEFAULT_SAMPLES,
                  providers: Optional[Sequence[str]] = None, allow_nonfinite: bool = False,
                  zero_amax: Optional[float] = None, budget: int = 4 * ACTIVATION_BUDGET,
                  progress: bool = True) -> tuple[CalibrationTable, AutoChoice]:
    """``auto``'s table: per tensor of ``stats``, the candidate range with the least error by the
    criterion of this module, judged on the first ``samples`` samples of ``data`` (the calibration
    data the statistics came from)."""
    started = time.perf_counter()
    if not candidates:
        raise QuantlabError("auto needs at least one candidate method", params=("candidates",))
    if not (isinstance(samples, int) and samples > 0):
        raise QuantlabError(f"`auto_samples` must be a positive integer, got {samples!r}", params=("auto_samples",))
    tables = candidate_tables(graph, stats, candidates, allow_nonfinite=allow_nonfinite, zero_amax=zero_amax)
    labels = list(tables)
    names = list(stats.tensors)
    errors: dict[str, dict[str, float]] = {}
    judged: dict[str, str] = {}
    network: dict[str, float] = {}
    readers = consumers_of(graph, [n for n in names if n not in graph.data_independent])

    for name in names:
        if name in readers:
            continue
        hist = stats.tensors[name]
        errors[name] = {label: histogram_error(hist.counts, hist.edges, tables[label].activations[name])
                        for label in labels}
        judged[name] = "histogram"

    used = 0
    if readers and not _has_subgraphs(graph):
        batches = _sample_batches(graph, data, samples)
        probe = {k: v[:1] for k, v in batches[0].inputs.items()}
        float_names = [n for n in graph.activations if n not in {s.name for s in graph.inputs}]
        sizes = activation_bytes(graph.model, float_names + [s.name for s in graph.inputs], probe, providers)
        # Two paths (FP32 and INT8) of live values plus the candidates' outputs at one layer.
        affordable = max(1, int(budget // max(3 * _peak_bytes(graph, sizes), 1)))
        if affordable < sum(len(b.indices) for b in batches):
            batches = _sample_batches(graph, data, affordable)
        used = sum(len(b.indices) for b in batches)
        sessions = NodeSessions(graph, providers)
        scored, auto_error = _score_sequential(graph, batches, readers, tables, labels, providers, progress,
                                               sessions=sessions)
        errors.update(scored)
        judged.update(dict.fromkeys(readers, "consumers"))
        # The guard: the whole INT8 path with each single method's ranges, judged at the graph outputs.
        network[AUTO] = auto_error
        for label in tqdm(labels, desc="auto: checking against each method", disable=not progress, file=sys.stderr):
            fixed = {name: tables[label].activations[name] for name in readers}
            network[label] = _score_sequential(graph, batches, readers, tables, labels, providers, False,
                                               fixed=fixed, sessions=sessions)[1]
    elif readers:
        batches = _sample_batches(graph, data, samples)
        used = sum(len(b.indices) for b in batches)
        by_output = {n.output[0]: n for ns in readers.values() for n in ns}
        layers = [node for node in graph.model.graph.node if node.output and node.output[0] in by_output]
        kept = list(dict.fromkeys(n for node in layers for n in list(node.input) + [node.output[0]]
                                  if n and n not in {i.name for i in graph.model.graph.initializer}))
        sizes = activation_bytes(graph.model, kept, {k: v[:1] for k, v in batches[0].inputs.items()}, providers)
        per_run = samples_per_run(sizes)
        noise: dict[str, dict[str, float]] = {name: dict.fromkeys(labels, 0.0) for name in readers}
        bar = tqdm(total=len(layers), unit="layer", desc="auto: scoring ranges", disable=not progress,
                   file=sys.stderr)
        for group in _node_groups(graph, layers, sizes, used, budget):
            wanted = list(dict.fromkeys(n for node in group for n in list(node.input) + [node.output[0]]
                                        if n in sizes))
            values = _fp32_values(graph, wanted, batches, per_run, providers)
            for node in group:
                _score_layer(graph, node, values, readers, tables, labels, noise, providers, per_run)
                bar.update(1)
            del values
        bar.close()
        for name in readers:
            errors[name] = noise[name]
            judged[name] = "consumers"

    methods = {}
    for name in names:
        errs = errors[name]
        methods[name] = min(labels, key=lambda label: (errs[label], labels.index(label)))
    winner = min(network, key=lambda label: (network[label], label != AUTO, labels.index(label) if label in labels
                                             else -1))
    if winner != AUTO:  # one method's ranges everywhere did better at the outputs: take them
        methods.update(dict.fromkeys(readers, winner))
    first = tables[labels[0]]
    activations = {name: tables[methods[name]].activations[name] for name in names}
    notes = {name: tables[methods[name]].notes[name] for name in names if name in tables[methods[name]].notes}
    choice = AutoChoice(methods, errors, judged, used, time.perf_counter() - started, labels, network,
                        winner if network else AUTO)
    counts: dict[str, int] = {}
    for label in methods.values():
        counts[label] = counts.get(label, 0) + 1
    params = {"candidates": labels, "samples": used}
    provenance = dict(first.provenance)
    provenance["auto"] = {"criterion": CRITERION, "samples": used, "chosen_counts": counts,
                          "network_error": network, "winner": choice.winner}
    table = CalibrationTable(AUTO, params, activations, first.weights, provenance, notes, methods=methods)
    return table, choice


def _fp32_values(graph: ModelGraph, names: list[str], batches: list, per_run: int,
                 providers: Optional[Sequence[str]]) -> dict[str, np.ndarray]:
    """FP32 values of ``names`` on the held batches, concatenated over samples."""
    inputs = {spec.name for spec in graph.inputs}
    runner = OrtRunner(graph.model, [n for n in names if n not in inputs], providers)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for batch in slices(batches, per_run):
        out = {**runner.run(batch.inputs), **batch.inputs}
        for n in names:
            parts[n].append(np.asarray(out[n]))
    return {n: np.concatenate(p) if p[0].ndim else p[0] for n, p in parts.items()}


def _score_layer(graph: ModelGraph, node: onnx.NodeProto, values: dict[str, np.ndarray],
                 readers: dict[str, list], tables: dict[str, CalibrationTable], labels: list[str],
                 noise: dict[str, dict[str, float]], providers: Optional[Sequence[str]], per_run: int) -> None:
    """Add this layer's relative output error under each candidate range of each tensor it reads."""
    layer = LayerModel(graph, node, providers)
    reference = values[layer.output]
    rows = len(reference)
    step = max(1, min(rows, per_run))
    chunks = [slice(start, start + step) for start in range(0, rows, step)]
    signal = math.fsum(float(np.vdot(reference[c].astype(np.float64), reference[c].astype(np.float64)))
                       for c in chunks) or 1.0
    for name in dict.fromkeys(node.input[:2]):
        if name not in readers or not any(r.output[0] == node.output[0] for r in readers[name]):
            continue
        seen: dict[float, float] = {}
        for label in labels:
            amax = tables[label].activations[name]
            if amax not in seen:
                total = []
                for chunk in chunks:
                    feeds = {n: values[n][chunk] for n in layer.inputs}
                    feeds[name] = fake_quantize(values[name][chunk], amax)
                    error = layer.run(feeds).astype(np.float64) - reference[chunk]
                    total.append(float(np.vdot(error, error)))
                seen[amax] = math.fsum(total) / signal
            noise[name][label] += seen[amax]
