"""Q/DQ ONNX export: the ranges of any cache or table as explicit quantization for TensorRT 10/11.

TensorRT 11 builds INT8 only from QuantizeLinear/DequantizeLinear pairs in the graph. This
module writes them from an amax per activation tensor (from a quantlab table, a TensorRT cache
of any vintage or an ONNX Runtime table):

* activations: a per-tensor int8 Q -> DQ pair (zero point 0, scale = float32(amax / 127)) on
  each input of the compute-heavy ops (Conv, ConvTranspose, Gemm, MatMul), inserted once per
  tensor and shared by all its quantized consumers;
* weights: int8 initializers with a per-output-channel DequantizeLinear (axis per op, see
  :mod:`quantlab.graph`), max |w| per channel, bias left in float.

By default this is the placement ModelOpt uses for TensorRT (the inputs of compute-heavy ops);
``placement="residual"`` also quantizes the skip input of residual Adds (Conv output + skip),
the pattern TensorRT fuses into an INT8 convolution with an INT8 residual. Names the ranges
hold that match no tensor of the model, and quantizable tensors with no range, are reported,
never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import QuantlabError
from .graph import ModelGraph, upgrade_opset
from .weights import WeightRange, per_channel_amax, quantize_weight

PLACEMENTS = ("compute", "residual")


@dataclass
class QdqReport:
    """What the export did: which ranges it used and what it could not match."""

    quantized_activations: list[str] = field(default_factory=list)
    quantized_weights: list[str] = field(default_factory=list)
    unmatched_ranges: list[str] = field(default_factory=list)  # in the ranges, not in the model
    missing_ranges: list[str] = field(default_factory=list)  # quantizable, but no range given
    skipped_nodes: list[str] = field(default_factory=list)  # left in float by request
    skipped_weights: dict[str, str] = field(default_factory=dict)  # node -> why its weight stays float
    notes: list[str] = field(default_factory=list)  # conversions of the graph (opset, constants)


QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _check_exclusions(model: onnx.ModelProto, nodes: set, ops: set, placement: str) -> None:
    """Refuse exclusions that name nothing: a typo would silently quantize the layer the user
    meant to keep in float."""
    import difflib

    eligible = set(QUANTIZED_OPS) | ({"Add"} if placement == "residual" else set())
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
    """Where Q/DQ go: ``placement`` (``compute``: the activation inputs of Conv/ConvTranspose/Gemm/
    MatMul; ``residual``: also the skip input of each Add whose other input comes straight from a
    Conv, so TensorRT can fuse the Add into the INT8 convolution), and the nodes (by name) and op
    types kept in float."""

    exclude_nodes: tuple[str, ...] = ()
    exclude_ops: tuple[str, ...] = ()
    placement: str = "compute"

    def __post_init__(self) -> None:  # lists from a caller become tuples: the options stay immutable
        object.__setattr__(self, "exclude_nodes", tuple(self.exclude_nodes))
        object.__setattr__(self, "exclude_ops", tuple(self.exclude_ops))


def export_qdq(graph: ModelGraph, amax: dict[str, float], weights: Optional[dict[str, WeightRange]] = None,
               options: QdqOptions = QdqOptions(), *, require_all: bool = True) -> tuple[onnx.ModelProto, QdqReport]:
    """A copy of the model with Q/DQ nodes from ``amax`` (and per-channel weight ranges), placed as
    ``options`` says.

    ``weights`` defaults to max |w| per output channel computed from the model itself (a
    TensorRT cache carries no weight ranges). With ``require_all`` a quantizable tensor without
    a range is an error naming it; otherwise it stays in float and is reported.
    """
    upgraded, old_opset = upgrade_opset(graph.model, 13)
    model = onnx.ModelProto()
    model.CopyFrom(upgraded)
    report = QdqReport()
    if old_opset is not None:
        report.notes.append(f"converted from ONNX opset {old_opset} to 13 (per-channel Q/DQ needs it)")
    report.notes += graph.normalisation
    activation_set = set(graph.activations)
    report.unmatched_ranges = [name for name in amax if name not in activation_set]
    excluded_nodes, excluded_ops, placement = set(options.exclude_nodes), set(options.exclude_ops), options.placement
    _check_exclusions(model, excluded_nodes, excluded_ops, placement)
    initializers = {init.name: init for init in model.graph.initializer}

    targets: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        if node.name in excluded_nodes or node.op_type in excluded_ops:
            report.skipped_nodes.append(node.name or node.output[0])
            continue
        for index, name in enumerate(node.input[:2]):
            if name in activation_set:
                targets.setdefault(name, []).append((node, index))
    if placement not in PLACEMENTS:
        raise QuantlabError(f"unknown Q/DQ placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")
    if placement == "residual":
        position = {out: k for k, node in enumerate(model.graph.node) for out in node.output}
        producer = {out: node.op_type for node in model.graph.node for out in node.output}
        for node in model.graph.node:
            if node.op_type != "Add" or node.name in excluded_nodes or "Add" in excluded_ops:
                continue
            inputs = [name for name in node.input[:2] if name in activation_set]
            from_conv = [name for name in inputs if producer.get(name) == "Conv"]
            if len(inputs) != 2 or not from_conv:
                continue
            # The Conv that TensorRT fuses the Add into is the later of the two producers;
            # the other input is the skip connection, which gets the Q/DQ.
            fused = max(from_conv, key=lambda name: position[name])
            skip = inputs[0] if inputs[1] == fused else inputs[1]
            targets.setdefault(skip, []).append((node, list(node.input).index(skip)))

    missing = [name for name in targets if name not in amax]
    if missing and require_all:
        raise QuantlabError(
            f"{len(missing)} quantizable tensor(s) have no range in the cache, e.g. {missing[:3]}; "
            f"{len(report.unmatched_ranges)} cache entries match no tensor of this model. Is the "
            "cache for this model? (quantlab cache lint CACHE --model MODEL shows the mismatch)"
        )
    report.missing_ranges = missing

    new_nodes: dict[str, list[onnx.NodeProto]] = {}  # inserted after the producer of the key
    for name, consumers in targets.items():
        if name not in amax:
            continue
        value = float(amax[name])
        if not (np.isfinite(value) and value > 0):
            raise QuantlabError(f"range of {name!r} is {value}: a Q/DQ scale must be finite and positive")
        scale = np.float32(value / 127.0)
        base = _safe(name)
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{base}_scale"),
            numpy_helper.from_array(np.array(0, dtype=np.int8), f"{base}_zero_point"),
        ])
        quantized, dequantized = f"{base}_quantized", f"{base}_dequantized"
        new_nodes.setdefault(name, []).extend([
            helper.make_node("QuantizeLinear", [name, f"{base}_scale", f"{base}_zero_point"], [quantized],
                             name=f"{base}_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [quantized, f"{base}_scale", f"{base}_zero_point"],
                             [dequantized], name=f"{base}_DequantizeLinear"),
        ])
        for node, index in consumers:
            node.input[index] = dequantized
        report.quantized_activations.append(name)

    done: dict[str, str] = {}
    specs_by_node = {spec.node: spec for spec in graph.weights}
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS or len(node.input) < 2:
            continue
        if node.name in excluded_nodes or node.op_type in excluded_ops:
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
    return model, report


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


def _safe(name: str) -> str:
    return name.strip("/").replace("/", "_").replace(":", "_").replace(" ", "_") or "tensor"
