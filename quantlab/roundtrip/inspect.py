"""``engine inspect``: what ran in INT8, fp16 and fp32 in a real engine, mapped back to ONNX nodes
and held against the precision plan of the Q/DQ model it was built from.

The engine's layer names are matched to the model by name: a layer name lists the ONNX nodes it
fused (``/conv1/Conv + /conv1/Relu``, ``PWN(...)``, Metadata ``[ONNX Layer: ...]``), sometimes a
tensor instead (``/x/Transpose_output_0``: its producer), and for Myelin regions
``{ForeignNode[first...last]}``: every node between the two in graph order. Names that are weights
or nothing of the model are ignored; how many names match says whether the file belongs to the
model at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import onnx

from ..qdq.plan import QUANTIZED_OPS, node_key, precision_plan
from .layers import EngineLayer, EngineLayers
from .trtexec import EngineProfile

# Below this share of layers matched, the file most likely belongs to another model.
MATCH_WARNING = 0.5


@dataclass
class NodeVerdict:
    """A Conv/ConvTranspose/Gemm/MatMul of the model: the engine layer that ran it, the precision
    it ran in there (int8 where an input of that layer is INT8), and what the plan expected."""

    node: str
    op_type: str
    layer: Optional[str]
    engine: Optional[str]
    planned: Optional[str]

    @property
    def differs(self) -> bool:
        return self.engine is not None and self.planned is not None and self.engine != self.planned

    def to_dict(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "layer": self.layer, "engine": self.engine,
                "planned": self.planned, "differs": self.differs}


@dataclass
class Inspection:
    """An engine's layers, their times where a profile was given, and - with a model - the mapping
    to its nodes and where the engine departs from the plan."""

    engine: EngineLayers
    profile: Optional[EngineProfile] = None
    layer_nodes: dict[str, list[str]] = field(default_factory=dict)  # layer name -> matched ONNX nodes
    matched_layers: int = 0
    nodes: list[NodeVerdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def time_shares(self) -> dict[str, float]:
        """Precision -> its share of the profiled time (empty without a profile or types)."""
        if self.profile is None or not self.engine.has_types:
            return {}
        times = self.profile.by_name()
        sums: dict[str, float] = {}
        for layer in self.engine.layers:
            t = times.get(layer.name)
            if t is not None and layer.precision:
                sums[layer.precision] = sums.get(layer.precision, 0.0) + t.average_ms
        total = sum(sums.values())
        return {p: v / total for p, v in sorted(sums.items(), key=lambda kv: -kv[1])} if total else {}

    def headline(self) -> str:
        e = self.engine
        parts = [f"{len(e.layers)} engine layers ({e.form} layer info)"]
        if e.has_types:
            parts.append(", ".join(f"{p} {n}" for p, n in e.counts().items()))
            parts.append(f"{sum(1 for x in e.layers if x.touches_int8)} touch INT8")
        parts.append(f"{len(e.reformats)} reformat layers")
        shares = self.time_shares()
        if shares:
            parts.append("time: " + ", ".join(f"{p} {100 * s:.1f} %" for p, s in shares.items()))
        return "; ".join(parts)

    def to_dict(self) -> dict:
        times = self.profile.by_name() if self.profile else {}
        return {"source": self.engine.source, **self.engine.summary(), "headline": self.headline(),
                "time_shares": self.time_shares(), "profile_runs": self.profile.runs if self.profile else None,
                "layers": [{**layer.to_dict(), "matched_nodes": self.layer_nodes.get(layer.name),
                            "average_ms": times[layer.name].average_ms if layer.name in times else None}
                           for layer in self.engine.layers],
                "matched_layers": self.matched_layers if self.layer_nodes else None,
                "nodes": [n.to_dict() for n in self.nodes],
                "differs_from_plan": [n.to_dict() for n in self.nodes if n.differs],
                "notes": list(self.notes)}


def _expand(names: Sequence[str], order: dict[str, int], nodes: Sequence[onnx.NodeProto],
            producer: dict[str, str], foreign: bool) -> list[str]:
    matched = []
    for name in names:
        if name in order:
            matched.append(name)
        elif name in producer:
            matched.append(producer[name])
    if foreign and len(matched) == 2 and matched[0] in order and matched[1] in order:
        first, last = order[matched[0]], order[matched[1]]
        matched = [node_key(n) for n in nodes[min(first, last):max(first, last) + 1]]
    return list(dict.fromkeys(matched))


def _engine_precision(layer: EngineLayer) -> Optional[str]:
    if not layer.inputs:
        return None
    if layer.computes_int8:
        return "int8"
    return next((t.precision for t in layer.inputs if t.precision), None)


def inspect(engine: EngineLayers, model: Optional[onnx.ModelProto] = None,
            profile: Optional[EngineProfile] = None) -> Inspection:
    """Read ``engine`` (and its ``profile``); with the ``model`` it was built from, map every layer to
    the model's nodes and each Conv/ConvTranspose/Gemm/MatMul to the precision it ran in, against
    the model's precision plan (:func:`quantlab.qdq.precision_plan`) where the model has Q/DQ."""
    result = Inspection(engine, profile)
    if not engine.has_types:
        result.notes.append("names-only layer info: no types, so no precisions; export it with "
                            "--profilingVerbosity=detailed for them")
    if profile is not None:
        names = {layer.name for layer in engine.layers}
        missing = [t.name for t in profile.layers if t.name not in names]
        if missing:
            result.notes.append(f"{len(missing)} of {len(profile.layers)} profiled layers are not in the layer "
                                f"info (first: {missing[0]!r}): are they of the same engine?")
    if model is None:
        return result
    nodes = list(model.graph.node)
    order = {node_key(n): i for i, n in enumerate(nodes)}
    producer = {out: node_key(n) for n in nodes for out in n.output if out}
    owner: dict[str, EngineLayer] = {}
    named = 0
    for layer in engine.layers:
        if layer.is_reformat:
            continue
        named += 1
        matched = _expand(layer.onnx_nodes, order, nodes, producer, "{ForeignNode[" in layer.name)
        result.layer_nodes[layer.name] = matched
        if matched:
            result.matched_layers += 1
        for name in matched:
            owner.setdefault(name, layer)
    if named and result.matched_layers < MATCH_WARNING * named:
        result.notes.append(f"only {result.matched_layers} of {named} engine layers name a node of this model: the "
                            "layer info is most likely of another model (or of one renamed since)")
    quantized = any(n.op_type == "QuantizeLinear" for n in nodes)
    plan = {n.node: n.precision for n in precision_plan(model).nodes} if quantized else {}
    if not quantized:
        result.notes.append("the model has no Q/DQ nodes: no precision plan to hold the engine against")
    for node in nodes:
        if node.op_type not in QUANTIZED_OPS:
            continue
        key = node_key(node)
        layer = owner.get(key)
        result.nodes.append(NodeVerdict(key, node.op_type, layer.name if layer else None,
                                        _engine_precision(layer) if layer else None, plan.get(key)))
    unmatched = [n.node for n in result.nodes if n.layer is None]
    if unmatched and result.matched_layers:
        result.notes.append(f"{len(unmatched)} Conv/Gemm/MatMul node(s) named by no engine layer (first: "
                            f"{unmatched[0]!r}); TensorRT may have renamed or folded them")
    return result


def report_lines(result: Inspection, limit: int = 40) -> list[str]:
    """The text ``quantlab engine inspect`` prints: the headline, the layers, the departures."""
    lines = [result.headline()]
    layers = result.engine.layers
    shown = layers if not limit else layers[:limit]
    times = result.profile.by_name() if result.profile else {}
    for k, layer in enumerate(shown):
        precision = layer.precision or "-"
        if layer.inputs and layer.computes_int8 and layer.precision != "int8":
            precision = f"int8->{layer.precision}"
        nodes = result.layer_nodes.get(layer.name, layer.onnx_nodes)
        shown_nodes = ", ".join(nodes[:4]) + (f" (+{len(nodes) - 4})" if len(nodes) > 4 else "")
        time = f"  {times[layer.name].average_ms:.4f} ms" if layer.name in times else ""
        kind = "reformat" if layer.is_reformat else (layer.layer_type or "layer")
        lines.append(f"  {k:3d} {precision:<12} {kind:<24} {_clip(layer.name, 70)}{time}"
                     + (f"\n      ONNX: {shown_nodes}" if nodes and not layer.is_reformat else ""))
    if limit and len(layers) > limit:
        lines.append(f"  ... {len(layers) - limit} more layers (--limit 0 lists all)")
    if result.nodes:
        ran = sum(1 for n in result.nodes if n.engine == "int8")
        planned = sum(1 for n in result.nodes if n.planned == "int8")
        lines.append(f"Conv/Gemm/MatMul: {ran} of {len(result.nodes)} ran in INT8"
                     + (f" (the plan expected {planned})" if any(n.planned for n in result.nodes) else ""))
        for n in result.nodes:
            if n.differs:
                lines.append(f"  differs from plan: {n.node} ({n.op_type}) planned {n.planned}, ran {n.engine} "
                             f"in {_clip(n.layer or '', 60)}")
    lines += [f"note: {note}" for note in result.notes]
    return lines


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."
