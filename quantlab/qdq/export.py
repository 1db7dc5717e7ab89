"""Q/DQ ONNX export: the ranges of any cache or table as a TensorRT 11 precision plan.

TensorRT 11 builds INT8 only from QuantizeLinear/DequantizeLinear pairs, and runs every other op
in the type the ONNX gives it. This module writes both halves of that plan from an amax per
activation tensor (a quantlab table, a TensorRT cache of any vintage, an ONNX Runtime table):

* **where the pairs stand** (:mod:`quantlab.qdq.placement`): per-tensor int8 Q -> DQ pairs (zero
  point 0, scale = float32(amax / 127)) placed as TensorRT fuses them (``tensorrt``, the default),
  or on the compute inputs only (``compute``), or those and residual skips (``residual``);
  weights become int8 initializers with a per-output-channel DequantizeLinear, bias left in float;
* **what type the rest has** (:mod:`quantlab.qdq.remainder`): every op outside INT8 in fp16
  (default), bf16 or fp32, decided per node from measured ranges, with Casts at region edges and
  graph I/O types unchanged. fp16 and bf16 scales need ONNX opset 19 (the model is converted).

Names the ranges hold that match no tensor of the model, and quantizable tensors with no range,
are reported, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import QuantlabError
from ..graph import ModelGraph, upgrade_opset
from ..weights import WeightRange, per_channel_amax, quantize_weight
from .placement import PLACEMENTS, QUANTIZED_OPS, Placement, active_rules, place
from .remainder import (
    ELEMENT_TYPES,
    HIGH_PRECISIONS,
    MeasuredRange,
    NodePrecision,
    decide,
    qdq_types,
    retype,
    rounded,
    thresholds_as_ranges,
)

__all__ = ["PLACEMENTS", "QUANTIZED_OPS", "QdqOptions", "QdqReport", "apply_biases", "export_qdq", "quantized_layers"]


@dataclass
class QdqReport:
    """What the export did: which ranges it used, what it could not match, what each placement rule
    did, and the type of every node outside INT8 (with the reason for each fp32 one)."""

    quantized_activations: list[str] = field(default_factory=list)
    quantized_weights: list[str] = field(default_factory=list)
    unmatched_ranges: list[str] = field(default_factory=list)  # in the ranges, not in the model
    missing_ranges: list[str] = field(default_factory=list)  # quantizable, but no range given
    skipped_nodes: list[str] = field(default_factory=list)  # left in float by request
    skipped_weights: dict[str, str] = field(default_factory=dict)  # node -> why its weight stays float
    notes: list[str] = field(default_factory=list)  # conversions of the graph (opset, constants)
    placement: str = "tensorrt"
    rules: tuple[str, ...] = ()
    applied: dict[str, int] = field(default_factory=dict)  # rule -> how many places it acted on
    float_layers: dict[str, str] = field(default_factory=dict)  # left in float by a rule -> why
    shared_scales: dict[str, dict] = field(default_factory=dict)  # Concat input -> {amax, group}
    high_precision: str = "fp16"
    precisions: dict[str, NodePrecision] = field(default_factory=dict)  # node -> its type and why
    unmeasured: int = 0  # remainder tensors without a measured range (typed as the default)
    corrected_biases: list[str] = field(default_factory=list)  # layers given a corrected float bias

    def precision_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for decision in self.precisions.values():
            counts[decision.precision] = counts.get(decision.precision, 0) + 1
        return counts

    def fp32_reasons(self) -> dict[str, str]:
        """Nodes kept in fp32 while the rest is fp16/bf16, with the reason (a measured range, a scale, a type)."""
        return {node: d.reason for node, d in self.precisions.items() if d.precision == "fp32" and d.reason}

    def summary(self) -> str:
        """``312 ops fp16, 4 fp32: /head/Exp (max |x| 9.1e4) ...``"""
        counts = self.precision_counts()
        text = ", ".join(f"{n} ops {p}" for p, n in sorted(counts.items(), key=lambda i: -i[1]))
        reasons = self.fp32_reasons()
        if reasons and self.high_precision != "fp32":
            shown = "; ".join(reason for reason in list(reasons.values())[:3])
            text += f" - fp32: {shown}" + (" ..." if len(reasons) > 3 else "")
        return text

    def to_dict(self) -> dict:
        return {"placement": self.placement, "rules": list(self.rules), "applied": self.applied,
                "float_layers": self.float_layers, "shared_scales": self.shared_scales,
                "high_precision": self.high_precision, "precision_counts": self.precision_counts(),
                "fp32": self.fp32_reasons(), "unmeasured": self.unmeasured,
                "quantized_activations": len(self.quantized_activations),
                "quantized_weights": len(self.quantized_weights),
                **({"corrected_biases": len(self.corrected_biases)} if self.corrected_biases else {})}


def _check_exclusions(model: onnx.ModelProto, nodes: set, ops: set, rules: tuple[str, ...]) -> None:
    """Refuse exclusions that name nothing: a typo would silently quantize the layer the user
    meant to keep in float."""
    import difflib

    eligible = set(QUANTIZED_OPS) | ({"Add"} if "residual-skip" in rules else set())
    by_name = {node.name: node.op_type for node in model.graph.node if node.name}
    for name in sorted(nodes):
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise QuantlabError(f"no node named {name!r} in the model (`exclude_nodes`){hint}",
                                params=("exclude_nodes",))
        if by_name[name] not in eligible:
            raise QuantlabError(f"node {name!r} is a {by_name[name]}, which carries no Q/DQ; only "
                                f"{'/'.join(sorted(eligible))} nodes can be kept in float (`exclude_nodes`)",
                                params=("exclude_nodes",))
    present = {node.op_type for node in model.graph.node} & eligible
    for op in sorted(ops):
        if op not in present:
            raise QuantlabError(f"no quantized {op!r} node in the model (`exclude_ops`); the model's quantized op "
                                f"types are {', '.join(sorted(present)) or 'none'}", params=("exclude_ops",))


@dataclass(frozen=True)
class QdqOptions:
    """Where Q/DQ go and what type the rest has.

    ``placement``: ``tensorrt`` (default: every rule of :data:`~quantlab.qdq.placement.RULES`),
    ``compute`` (the activation inputs of Conv/ConvTranspose/Gemm/MatMul) or ``residual`` (those and
    residual skips); ``disabled_rules``: rules switched off; ``exclude_nodes``/``exclude_ops``: layers
    (by name, by op type) kept out of INT8; ``high_precision``: the type of everything outside
    INT8 (``fp16`` default, ``bf16``, ``fp32``), fp32 kept per node where measured ranges say so.
    """

    exclude_nodes: tuple[str, ...] = ()
    exclude_ops: tuple[str, ...] = ()
    placement: str = "tensorrt"
    disabled_rules: tuple[str, ...] = ()
    high_precision: str = "fp16"

    def __post_init__(self) -> None:  # lists from a caller become tuples: the options stay immutable
        for name in ("exclude_nodes", "exclude_ops", "disabled_rules"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        active_rules(self.placement, self.disabled_rules)
        if self.high_precision not in HIGH_PRECISIONS:
            raise QuantlabError(f"`high_precision` must be one of {', '.join(HIGH_PRECISIONS)}, got "
                                f"{self.high_precision!r}", params=("high_precision",))

    @property
    def rules(self) -> tuple[str, ...]:
        return active_rules(self.placement, self.disabled_rules)


def export_qdq(graph: ModelGraph, amax: dict[str, float], weights: Optional[dict[str, WeightRange]] = None,
               options: QdqOptions = QdqOptions(), *, require_all: bool = True,
               measured: Optional[dict[str, MeasuredRange]] = None,
               emulate: bool = False,
               biases: Optional[dict[str, np.ndarray]] = None) -> tuple[onnx.ModelProto, QdqReport]:
    """A copy of the model with Q/DQ nodes from ``amax`` (and per-channel weight ranges), placed and
    typed as ``options`` say.

    ``weights`` defaults to max |w| per output channel computed from the model itself (a
    TensorRT cache carries no weight ranges). With ``require_all`` a quantizable tensor without
    a range is an error naming it; otherwise it stays in float and is reported. ``measured``:
    max |x| (and small-value share) per tensor, from calibration statistics; without it the
    remainder is typed from ``amax`` (a lower bound on max |x|). ``emulate``: return, instead of
    the typed model, the float32 model that computes what the typed one stores - every fp16/bf16
    tensor rounded to its type (:func:`quantlab.qdq.remainder.rounded`) - which is how the
    evaluation engine scores it. ``biases``: corrected float biases by layer name (bias correction,
    :mod:`quantlab.corrections`), written in place of the model's.
    """
    high = options.high_precision
    rules = options.rules
    upgraded, old_opset = upgrade_opset(graph.model, 13 if high == "fp32" else 19)
    model = onnx.ModelProto()
    model.CopyFrom(upgraded)
    report = QdqReport(placement=options.placement, rules=rules, high_precision=high)
    if old_opset is not None:
        why = "per-channel Q/DQ needs 13" if high == "fp32" else f"{high} Q/DQ scales need 19"
        report.notes.append(f"converted from ONNX opset {old_opset} to {13 if high == 'fp32' else 19} ({why})")
    report.notes += graph.normalisation
    activation_set = set(graph.activations)
    report.unmatched_ranges = [name for name in amax if name not in activation_set]
    excluded_nodes, excluded_ops = set(options.exclude_nodes), set(options.exclude_ops)
    _check_exclusions(model, excluded_nodes, excluded_ops, rules)
    excluded = {i for i, node in enumerate(model.graph.node)
                if node.name in excluded_nodes or node.op_type in excluded_ops}
    report.skipped_nodes = [node.name or node.output[0] for i, node in enumerate(model.graph.node)
                            if i in excluded and node.op_type in QUANTIZED_OPS]
    initializers = {init.name: init for init in model.graph.initializer}
    plan = place(model, activation_set, amax, rules, excluded)
    report.applied, report.float_layers = plan.applied, plan.float_layers

    missing = list(dict.fromkeys(name for pair in plan.pairs for name in pair.ranges_of if name not in amax))
    if missing and require_all:
        raise QuantlabError(
            f"{len(missing)} quantizable tensor(s) have no range in the cache, e.g. {missing[:3]}; "
            f"{len(report.unmatched_ranges)} cache entries match no tensor of this model. Is the "
            "cache for this model? (quantlab cache lint CACHE --model MODEL shows the mismatch)"
        )
    report.missing_ranges = missing
    new_nodes = _insert_pairs(model, plan, amax, report)
    _quantize_weights(model, graph, plan, weights, initializers, report)
    if biases:
        quantized = {_key(model.graph.node[i]) for i in plan.quantized_layers}
        report.corrected_biases = apply_biases(model, biases, quantized)
        floated = [key for key in biases if key not in quantized]
        if floated:
            report.notes.append(f"{len(floated)} corrected bias(es) not written, e.g. {floated[0]!r}: this placement "
                                "leaves the layer in float, and a correction measured for INT8 would shift it")
    _insert_after_producers(model, new_nodes)
    used = {name for node in model.graph.node for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)  # the float weights now live as int8 copies
    model.graph.ClearField("value_info")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise QuantlabError(f"the Q/DQ model fails onnx.checker: {str(exc).splitlines()[0]}") from exc

    ranges = dict(thresholds_as_ranges(amax))
    ranges.update(measured or {})
    decisions = decide(model, ranges, high, activation_set)
    report.precisions = {d.node: d for d in decisions.values()}
    typed = {i for i, d in decisions.items() if d.precision == high and high != "fp32"}
    report.unmeasured = sum(1 for i in typed for name in model.graph.node[i].output
                            if name in activation_set and name not in ranges)
    if high == "fp32":
        return model, report
    precisions = {i: ELEMENT_TYPES[high] for i in typed}
    precisions.update({i: ELEMENT_TYPES[kind] for i, kind in qdq_types(model, decisions, ranges, high).items()
                       if kind != "fp32"})
    if emulate:
        return rounded(model, precisions), report
    return retype(model, precisions), report


def quantized_layers(graph: ModelGraph, amax: dict[str, float], options: QdqOptions = QdqOptions()) -> set[str]:
    """The layers (node names) whose inputs the export with ``options`` quantizes: what a pass that
    emulates the exported model must quantize, and nothing else (a small layer left in float by the
    placement must stay float there too)."""
    model = graph.model
    nodes, excluded_nodes, excluded_ops = list(model.graph.node), set(options.exclude_nodes), set(options.exclude_ops)
    excluded = {i for i, node in enumerate(nodes) if node.name in excluded_nodes or node.op_type in excluded_ops}
    plan = place(model, set(graph.activations), amax, options.rules, excluded)
    indices = set(plan.quantized_layers) | {i for pair in plan.pairs for i, _ in pair.consumers}
    return {nodes[i].name or nodes[i].output[0] for i in indices if nodes[i].op_type in QUANTIZED_OPS}


def _insert_pairs(model: onnx.ModelProto, plan: Placement, amax: dict[str, float],
                  report: QdqReport) -> dict[str, list[onnx.NodeProto]]:
    """Scale initializers and Q/DQ nodes of every pair that has its ranges; consumers rewired."""
    new_nodes: dict[str, list[onnx.NodeProto]] = {}  # inserted after the producer of the key
    bases: set[str] = set()
    nodes = list(model.graph.node)
    for pair in plan.pairs:
        if any(name not in amax for name in pair.ranges_of):
            continue
        value = max(float(amax[name]) for name in pair.ranges_of)
        for name in pair.ranges_of:
            if not (np.isfinite(amax[name]) and amax[name] > 0):
                raise QuantlabError(f"range of {name!r} is {amax[name]}: a Q/DQ scale must be finite and positive")
        if len(pair.ranges_of) > 1:
            report.shared_scales[pair.tensor] = {"amax": value, "own_amax": float(amax[pair.tensor]),
                                                 "group": list(pair.ranges_of)}
        scale = np.float32(value / 127.0)
        base = _safe(pair.tensor)
        if base in bases:
            base = f"{base}_{pair.rule.replace('-', '_')}"
        bases.add(base)
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{base}_scale"),
            numpy_helper.from_array(np.array(0, dtype=np.int8), f"{base}_zero_point"),
        ])
        quantized, dequantized = f"{base}_quantized", f"{base}_dequantized"
        new_nodes.setdefault(pair.tensor, []).extend([
            helper.make_node("QuantizeLinear", [pair.tensor, f"{base}_scale", f"{base}_zero_point"], [quantized],
                             name=f"{base}_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [quantized, f"{base}_scale", f"{base}_zero_point"],
                             [dequantized], name=f"{base}_DequantizeLinear"),
        ])
        for node_index, input_index in pair.consumers:
            nodes[node_index].input[input_index] = dequantized
        if pair.tensor not in report.quantized_activations:
            report.quantized_activations.append(pair.tensor)
    return new_nodes


def _quantize_weights(model: onnx.ModelProto, graph: ModelGraph, plan: Placement,
                      weights: Optional[dict[str, WeightRange]], initializers: dict, report: QdqReport) -> None:
    """Per-channel int8 weights with their DequantizeLinear for every layer the placement quantizes."""
    done: dict[str, str] = {}
    specs_by_node = {spec.node: spec for spec in graph.weights}
    nodes = list(model.graph.node)
    for index in plan.quantized_layers:
        node = nodes[index]
        if len(node.input) < 2:
            continue
        key = node.name or node.output[0]
        if key in graph.unquantizable_weights:
            report.skipped_weights[key] = graph.unquantizable_weights[key]
            continue
        spec = specs_by_node.get(key)
        if spec is None or node.input[spec.index] != spec.name or spec.name not in initializers:
            continue
        weight = spec.name
        if weight not in done:
            w = numpy_helper.to_array(initializers[weight]).astype(np.float32)
            channel_amax = (weights[weight].amax if weights and weight in weights
                            else per_channel_amax(w, spec.axis))
            done[weight] = _quantize_weight(model, weight, w, np.asarray(channel_amax, np.float64), spec.axis)
            report.quantized_weights.append(weight)
        node.input[spec.index] = done[weight]


def _quantize_weight(model: onnx.ModelProto, name: str, w: np.ndarray, channel_amax: np.ndarray, axis: int) -> str:
    """Add an int8 copy of weight ``name`` and its per-channel DequantizeLinear; return its output."""
    axis = axis % w.ndim
    if channel_amax.shape != (w.shape[axis],):
        raise QuantlabError(f"weight {name!r}: {channel_amax.shape[0]} channel ranges for {w.shape[axis]} channels")
    q, scales = quantize_weight(w, channel_amax, axis)
    base = _safe(name)
    model.graph.initializer.extend([
        numpy_helper.from_array(q, f"{base}_int8"),
        numpy_helper.from_array(scales, f"{base}_weight_scale"),
        numpy_helper.from_array(np.zeros(len(scales), dtype=np.int8), f"{base}_weight_zero_point"),
    ])
    output = f"{base}_weight_dequantized"
    model.graph.node.append(helper.make_node(
        "DequantizeLinear", [f"{base}_int8", f"{base}_weight_scale", f"{base}_weight_zero_point"], [output],
        name=f"{base}_weight_DequantizeLinear", axis=axis))
    return output


def _insert_after_producers(model: onnx.ModelProto, new_nodes: dict[str, list[onnx.NodeProto]]) -> None:
    """Rebuild the node list in a valid topological order with the new nodes in place."""
    graph_inputs = {i.name for i in model.graph.input}
    nodes = list(model.graph.node)
    ordered: list[onnx.NodeProto] = []
    for name in new_nodes:
        if name in graph_inputs:
            ordered += new_nodes[name]
    weight_dq = [n for n in nodes if n.op_type == "DequantizeLinear" and n.name.endswith("_weight_DequantizeLinear")]
    ordered += weight_dq
    for node in nodes:
        if node in weight_dq:
            continue
        ordered.append(node)
        for output in node.output:
            ordered += new_nodes.get(output, [])
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def _key(node: onnx.NodeProto) -> str:
    """A node's name, or its first output for an unnamed node (how layers are keyed everywhere)."""
    return node.name or node.output[0]


def _safe(name: str) -> str:
    return name.strip("/").replace("/", "_").replace(":", "_").replace(" ", "_") or "tensor"


def apply_biases(model: onnx.ModelProto, biases: dict[str, np.ndarray], quantized: Optional[set[str]] = None
                 ) -> list[str]:
    """Give the layers of ``model`` (an ONNX ModelProto, changed in place) named in ``biases`` their
    corrected bias as a new initializer, only those in ``quantized`` when given (a correction
    measured for an INT8 layer is wrong for a float one); returns the layers changed. A name the
    model lacks is an error: a table's corrections belong to the model it was calibrated on."""
    by_key = {_key(node): node for node in model.graph.node}
    missing = [key for key in biases if key not in by_key]
    if missing:
        raise QuantlabError(f"{len(missing)} corrected bias(es) name no layer of this model, e.g. {missing[0]!r}: "
                            "is the table for this model?")
    changed = []
    for key, bias in biases.items():
        if quantized is not None and key not in quantized:
            continue
        node = by_key[key]
        name = f"{_safe(key)}_corrected_bias"
        value = np.asarray(bias, np.float32)
        if node.op_type == "Gemm":
            old = next((init for init in model.graph.initializer if len(node.input) > 2 and init.name == node.input[2]),
                       None)
            if old is not None and len(old.dims) == 2:
                value = value.reshape(list(old.dims))
        model.graph.initializer.append(numpy_helper.from_array(value, name))
        if len(node.input) > 2:
            node.input[2] = name
        else:
            node.input.append(name)
        changed.append(key)
    return changed
