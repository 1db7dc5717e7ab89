"""A graph run one node at a time on two paths, FP32 and INT8, so a range can be judged where it acts.

Each node is its own ONNX Runtime session (made on first use, typed by the arrays it is fed), so
any tensor's value can be replaced before the nodes after it run. The INT8 path is the arithmetic
of the Q/DQ model quantlab exports: the activation inputs of Conv/ConvTranspose/Gemm/MatMul
fake-quantized with their range, those layers with their INT8 (dequantized) weights, every other
op in float on what it is given. Values are freed after their last reader unless kept.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper
from tqdm import tqdm

from ..collector import make_session
from ..graph import ModelGraph
from ..qdq import QUANTIZED_OPS
from .arithmetic import fake_quantize, fake_quantize_weight, relative_error


def has_subgraphs(graph: ModelGraph) -> bool:
    """Whether a node carries a subgraph (If/Loop/Scan): those cannot run as one-node sessions."""
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for node in graph.model.graph.node for a in node.attribute)


class NodeSessions:
    """One ONNX Runtime session per node (and per input dtypes), made on first use; a quantized
    layer gets a second one with its INT8 weight."""

    def __init__(self, graph: ModelGraph, providers: Optional[Sequence[str]] = None):
        self.graph = graph
        self.providers = providers
        self.nodes = list(graph.model.graph.node)
        self.initializers = {init.name: init for init in graph.model.graph.initializer}
        self.weights = {spec.node: spec for spec in graph.weights}
        self._sessions: dict[tuple, object] = {}
        self._runtime = [[n for n in dict.fromkeys(node.input) if n and n not in self.initializers]
                         for node in self.nodes]

    def runtime_inputs(self, position: int) -> list[str]:
        return self._runtime[position]

    def run(self, position: int, feeds: dict[str, np.ndarray], int8_weight: bool = False) -> list[np.ndarray]:
        names = self._runtime[position]
        key = (position, int8_weight, tuple(feeds[n].dtype.str for n in names))
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = self._session(self.nodes[position], names, feeds, int8_weight)
        return session.run(None, {n: feeds[n] for n in names})

    def _session(self, node: onnx.NodeProto, names: list[str], feeds: dict, int8_weight: bool):
        spec = self.weights.get(node.name or node.output[0]) if int8_weight else None
        constants = []
        for name in dict.fromkeys(node.input):
            if name not in self.initializers:
                continue
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
        return make_session(model.SerializeToString(), self.providers, spinning=False, arena=False)


@dataclass
class TwoPathRun:
    """One pass over the graph, FP32 and INT8 side by side, deciding ranges as it goes.

    ``decide(tensor, candidates, judge)`` is called at the first quantized layer that reads an
    undecided tensor, with a ``judge(amax) -> error`` that scores a candidate at the outputs of the
    tensor's quantized readers whose inputs are all computed by then (INT8 path with the ranges
    chosen so far, against FP32; on the first ``judge_samples`` samples: a layer's output error is
    an average over every position of every sample, steady long before the graph outputs' is); it
    returns the amax to go on with. With every range given (``chosen``), nothing is decided; with
    ``reference`` (the FP32 graph outputs of an earlier run) the FP32 path is not run at all.

    ``layers``: the positions of the layers the INT8 path quantizes (None: every Conv/ConvTranspose/
    Gemm/MatMul; a placement leaves some in float). ``correct(position, int8, fp32)``: called with a
    quantized layer's output on both paths, returns the INT8 output to go on with (bias correction).
    """

    sessions: NodeSessions
    readers: dict[str, list[int]]  # tensor -> positions of the quantized layers reading it
    chosen: dict[str, float] = field(default_factory=dict)
    reference: Optional[dict[str, np.ndarray]] = None
    judge_samples: Optional[int] = None  # judge candidates on the first of the samples only (None: all)
    layers: Optional[frozenset] = None
    correct: Optional[Callable[[int, np.ndarray, np.ndarray], np.ndarray]] = None
    label: str = "auto: scoring ranges"  # the progress bar's

    def run(self, inputs: dict[str, np.ndarray], decide: Optional[Callable] = None,
            progress: bool = False) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The relative error of the graph outputs (summed), the FP32 outputs, and the INT8 values left
        (the graph outputs and values no node reads)."""
        sessions, nodes = self.sessions, self.sessions.nodes
        int8_only = self.reference is not None
        fp: dict[str, np.ndarray] = dict(inputs)
        q: dict[str, np.ndarray] = dict(inputs)
        last_use = {name: position for position, node in enumerate(nodes) for name in node.input}
        outputs = set(self.sessions.graph.output_names)
        final: dict[str, np.ndarray] = {}
        error = 0.0

        def fp_output(position: int) -> np.ndarray:
            node = nodes[position]
            if node.output[0] not in fp:
                for name, value in zip(node.output, sessions.run(position, fp)):
                    if name:
                        fp[name] = value
            return fp[node.output[0]]

        def judge_for(name: str) -> Callable[[float], float]:
            ready = [p for p in self.readers[name] if all(n in q for n in sessions.runtime_inputs(p))]
            part = slice(None, self.judge_samples)
            refs = {p: fp_output(p)[part] for p in ready}
            feeds = {p: {n: q[n][part] for n in sessions.runtime_inputs(p)} for p in ready}

            def judge(amax: float) -> float:
                trial = {**self.chosen, name: amax}
                return math.fsum(relative_error(sessions.run(p, int8_feeds(sessions, p, feeds[p], trial), True)[0],
                                                refs[p]) for p in ready)
            return judge

        bar = tqdm(total=len(nodes), unit="node", desc=self.label, disable=not progress, file=sys.stderr)
        for position, node in enumerate(nodes):
            quantized = node.op_type in QUANTIZED_OPS and (self.layers is None or position in self.layers)
            if quantized and decide is not None:
                for name in dict.fromkeys(node.input[:2]):
                    if name in self.readers and name not in self.chosen:
                        self.chosen[name] = decide(name, judge_for(name))
            if not int8_only:
                fp_output(position)
            runtime = sessions.runtime_inputs(position)
            if not int8_only and not quantized and all(q[n] is fp[n] for n in runtime):
                q.update({n: fp[n] for n in node.output if n})  # nothing quantized upstream: the same values
            else:
                results = sessions.run(position, int8_feeds(sessions, position, q, self.chosen if quantized else {}),
                                       quantized)
                q.update({n: v for n, v in zip(node.output, results) if n})
            if quantized and self.correct is not None:
                q[node.output[0]] = self.correct(position, q[node.output[0]], fp_output(position))
            for name in node.output:
                if name in outputs:
                    final[name] = self.reference[name] if int8_only else fp[name]
                    error += relative_error(q[name], final[name])
            for name in node.input:
                if last_use.get(name) == position and name not in outputs:
                    fp.pop(name, None)
                    q.pop(name, None)
            bar.update(1)
        bar.close()
        return error, final, q


def int8_feeds(sessions: NodeSessions, position: int, values: dict[str, np.ndarray],
               chosen: dict[str, float]) -> dict[str, np.ndarray]:
    """The inputs of a node on the INT8 path: a quantized layer's activation inputs fake-quantized
    (every other op reads its inputs as they are, as in the exported Q/DQ model)."""
    node = sessions.nodes[position]
    quantized = node.op_type in QUANTIZED_OPS
    return {name: fake_quantize(values[name], chosen[name]) if quantized and name in chosen and name in node.input[:2]
            else values[name] for name in sessions.runtime_inputs(position)}


def downstream(nodes: Sequence[onnx.NodeProto], tensor: str) -> list[int]:
    """Positions of the nodes whose result depends on ``tensor``, in graph order."""
    tainted = {tensor}
    out = []
    for position, node in enumerate(nodes):
        if any(name in tainted for name in node.input):
            out.append(position)
            tainted.update(name for name in node.output if name)
    return out


def refine(sessions: NodeSessions, inputs: dict[str, np.ndarray], readers: dict[str, list[int]],
           candidates: dict[str, list[float]], start: dict[str, float], reference: dict[str, np.ndarray],
           budget_passes: float, progress: bool = False) -> tuple[dict[str, float], float, int]:
    """Coordinate descent at the graph outputs: tensor by tensor in graph order, move its range one
    candidate wider (or else tighter) while that lowers the error of the graph outputs, everything
    else INT8 at the current ranges. Stops after ``budget_passes`` graph passes' worth of the nodes
    downstream of each moved tensor. Returns the ranges, their output error and how many moves were
    judged.

    Memory: only the INT8 values alive at the current tensor's first reader are kept (a checkpoint,
    advanced as the tensors go by), and a move runs the graph from there to the outputs, freeing each
    value after its last reader; nodes that do not depend on the tensor compute what they computed
    before, so the choices are those of keeping every value."""
    nodes = sessions.nodes
    outputs = sessions.graph.output_names
    kept = frozenset(outputs)
    last_use = {name: position for position, node in enumerate(nodes) for name in node.input}
    chosen = dict(start)
    error, _, _ = TwoPathRun(sessions, readers, dict(chosen), reference).run(inputs)
    spent, moves = 0.0, 0
    state, at = dict(inputs), 0  # the INT8 values alive before node `at`, at the current ranges
    order = sorted(readers, key=lambda name: min(readers[name]))
    for name in tqdm(order, unit="tensor", desc="auto: refining at the outputs", disable=not progress,
                     file=sys.stderr):
        if spent >= budget_passes:
            break
        first = min(readers[name])
        state = forward(sessions, state, at, first, chosen, last_use, kept)
        at = first
        below = downstream(nodes, name)
        ranked = sorted(set(candidates[name]))
        for direction in (1, -1):
            position = ranked.index(chosen[name])
            moved = False
            while 0 <= position + direction < len(ranked) and spent < budget_passes:
                trial_chosen = {**chosen, name: ranked[position + direction]}
                trial = forward(sessions, dict(state), at, len(nodes), trial_chosen, last_use, kept)
                spent += len(below) / max(len(nodes), 1)
                moves += 1
                trial_error = math.fsum(relative_error(trial[n], reference[n]) for n in outputs)
                if trial_error >= error:
                    break
                error, chosen = trial_error, trial_chosen
                position += direction
                moved = True
            if moved:
                break  # it moved one way: the other way was worse to begin with
    return chosen, error, moves


def forward(sessions: NodeSessions, values: dict[str, np.ndarray], start: int, stop: int, chosen: dict[str, float],
            last_use: dict[str, int], keep: frozenset) -> dict[str, np.ndarray]:
    """Run nodes ``start .. stop - 1`` on the INT8 path from ``values`` (changed in place and returned),
    freeing each value after its last reader unless it is in ``keep``."""
    nodes = sessions.nodes
    for position in range(start, stop):
        node = nodes[position]
        results = sessions.run(position, int8_feeds(sessions, position, values, chosen), node.op_type in QUANTIZED_OPS)
        values.update({n: v for n, v in zip(node.output, results) if n})
        for name in node.input:
            if last_use.get(name) == position and name not in keep:
                values.pop(name, None)
    return values


def peak_bytes(graph: ModelGraph, sizes: dict[str, int]) -> int:
    """Most bytes per sample alive at once while the graph runs node by node, on one path."""
    nodes = list(graph.model.graph.node)
    last_use = {name: position for position, node in enumerate(nodes) for name in node.input}
    alive = {spec.name for spec in graph.inputs}
    peak = sum(sizes.get(n, 0) for n in alive)
    for position, node in enumerate(nodes):
        alive |= {n for n in node.output if n}
        peak = max(peak, sum(sizes.get(n, 0) for n in alive))
        alive = {n for n in alive if last_use.get(n, -1) > position or n in graph.output_names}
    return peak
