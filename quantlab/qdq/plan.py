"""The precision plan: the type TensorRT 11 is expected to give each node of a Q/DQ model, and FLOPs.

A strongly typed TensorRT 11 network runs INT8 only between QuantizeLinear/DequantizeLinear pairs
and every other op in the type its ONNX tensors have, so the precision of each layer can be read
off the ONNX file before any engine is built. :func:`precision_plan` does that, for any Q/DQ model
(quantlab's, ModelOpt's, a PyTorch QAT export), and weighs each node by its FLOPs, so the headline
("INT8 71.2 % of FLOPs, fp16 28.1 %, fp32 0.7 %") says where the time will go.

The rules are heuristics that follow TensorRT's documented Q/DQ fusions, not a build:

* a Conv/ConvTranspose/Gemm/MatMul whose data input and weight both come from DequantizeLinear
  nodes (directly or through ops that commute with quantization) is ``int8``;
* between a DQ and a Q, ops TensorRT runs in INT8 are ``int8``: commuting ops (MaxPool, Reshape,
  Transpose ...) after a DQ or before a Q, AveragePool/GlobalAveragePool with a DQ before and
  only Qs after, a Concat whose inputs all come from DQs of one scale;
* every other op has the type of its output tensor: ``fp16``, ``bf16`` or ``fp32`` (float64,
  which TensorRT lacks, counts as ``fp32``);
* Q/DQ nodes and float-to-float Casts are conversions, not compute: they are not listed. Nor are
  constant and shape arithmetic (no input depends on a graph input): TensorRT folds it;
* only int8/uint8 Q/DQ make ``int8``; int4/fp8 pairs are out of scope and their layers keep
  their float type (the plan's ``assumptions`` say so).

Expected fusions (also heuristics): Conv (+BatchNormalization) (+Add) (+activation) is one group
named after the Conv; Gemm/MatMul (+bias Add) (+activation) likewise; every other node is its
own group. FLOPs: 2 x MACs for Conv, ConvTranspose, Gemm and MatMul; one per output element for
elementwise and other ops (per input element for reductions and pooling, which read each input
once), from ONNX shape inference on the model with symbolic dimensions fixed (see
:func:`node_flops`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import QuantlabError
from ..graph import SHAPE_OPS, static_dims
from .placement import COMMUTING_OPS, POOLING_OPS, QUANTIZED_OPS, attribute
from .remainder import element_types

PRECISIONS = ("int8", "fp16", "bf16", "fp32")
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# Activations TensorRT fuses into the Conv/Gemm before them (a Q/DQ between the two breaks it).
ACTIVATIONS = frozenset({
    "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Softplus",
    "Softsign", "PRelu", "ThresholdedRelu", "Gelu", "Mish",
})
INT8_TYPES = frozenset({TensorProto.INT8, TensorProto.UINT8})
FLOAT_PRECISIONS = {TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16", TensorProto.FLOAT: "fp32",
                    TensorProto.DOUBLE: "fp32"}
# Ops whose output is smaller than the input they read once: FLOPs counted on the input.
REDUCING_OPS = frozenset({
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "AveragePool",
    "MaxPool", "LpPool", "ArgMax", "ArgMin",
})
BATCH_DIM, OTHER_DIM = 1, 224


# ------------------------------------------------------------------------------------------ graph


@dataclass(frozen=True)
class GraphIndex:
    """What every rule of the plan and of the lint asks of a graph, computed once: who produces and
    who reads each tensor, the element types, the constants and which tensors carry runtime data."""

    model: onnx.ModelProto
    nodes: tuple
    producer: Mapping[str, int]
    readers: Mapping[str, tuple[int, ...]]
    initializers: Mapping[str, onnx.TensorProto]
    constant_nodes: Mapping[str, onnx.NodeProto]
    types: Mapping[str, int]
    data: frozenset
    graph_inputs: frozenset
    graph_outputs: frozenset
    opset: int

    @classmethod
    def of(cls, model: onnx.ModelProto) -> GraphIndex:
        graph = model.graph
        nodes = tuple(graph.node)
        initializers = {init.name: init for init in graph.initializer}
        producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
        readers: dict[str, list[int]] = {}
        for i, node in enumerate(nodes):
            for name in dict.fromkeys(n for n in node.input if n):
                readers.setdefault(name, []).append(i)
        inputs = frozenset(vi.name for vi in graph.input if vi.name not in initializers)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        return cls(model, nodes, producer, {k: tuple(v) for k, v in readers.items()}, initializers,
                   {n.output[0]: n for n in nodes if n.op_type == "Constant" and n.output},
                   element_types(model), _data_tensors(nodes, inputs), inputs,
                   frozenset(o.name for o in graph.output), opset)

    def value(self, name: str) -> Optional[np.ndarray]:
        """The value of a constant tensor (initializer or Constant node), None for anything else."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.constant_nodes.get(name)
        if node is None:
            return None
        for found in node.attribute:
            if found.name == "value":
                return numpy_helper.to_array(found.t)
            if found.name in ("value_float", "value_floats"):
                return np.asarray(helper.get_attribute_value(found), np.float32)
            if found.name in ("value_int", "value_ints"):
                return np.asarray(helper.get_attribute_value(found), np.int64)
        return None

    def passes_through(self, node: onnx.NodeProto) -> bool:
        """Does ``node`` carry INT8 values unchanged (an op that commutes with quantization, or a
        float-to-float Cast), so that a Q/DQ can be read across it?"""
        if node.op_type == "Cast":
            return attribute(node, "to", 0) in FLOAT_PRECISIONS and \
                bool(node.input) and self.types.get(node.input[0]) in FLOAT_PRECISIONS
        return node.op_type in COMMUTING_OPS

    def dq_source(self, name: str) -> Optional[int]:
        """The DequantizeLinear ``name`` comes from, directly or through pass-through ops; None if none."""
        seen = set()
        while name not in seen:
            seen.add(name)
            p = self.producer.get(name)
            if p is None:
                return None
            node = self.nodes[p]
            if node.op_type == "DequantizeLinear":
                return p
            if not self.passes_through(node) or not node.input:
                return None
            name = node.input[0]
        return None

    def final_readers(self, name: str) -> list[int]:
        """The nodes that read ``name``, looking through pass-through ops (which the INT8 values
        cross unchanged) to the first node of another kind."""
        found: list[int] = []
        pending, seen = [name], set()
        while pending:
            current = pending.pop()
            if current in seen:
                continue
            seen.add(current)
            for i in self.readers.get(current, ()):
                node = self.nodes[i]
                if self.passes_through(node) and node.input and node.input[0] == current:
                    pending.extend(o for o in node.output if o)
                elif i not in found:
                    found.append(i)
        return found

    def quantized_type(self, node: onnx.NodeProto) -> int:
        """The integer (or fp8/int4) type of a Q/DQ node: its zero point's type, else the Q's
        ``output_dtype``, else what the ONNX defaults say (uint8 for Q, the input's type for DQ)."""
        if len(node.input) > 2 and node.input[2]:
            zero = node.input[2]
            if zero in self.initializers:
                return self.initializers[zero].data_type
            if zero in self.types:
                return self.types[zero]
        if node.op_type == "QuantizeLinear":
            return attribute(node, "output_dtype", 0) or TensorProto.UINT8
        return self.types.get(node.input[0], TensorProto.UNDEFINED)

    def is_int8(self, index: int) -> bool:
        return self.quantized_type(self.nodes[index]) in INT8_TYPES


def _data_tensors(nodes: Sequence[onnx.NodeProto], inputs: frozenset) -> frozenset:
    """The tensors that depend on the values of the graph inputs (shape-only chains excluded)."""
    data = set(inputs)
    for node in nodes:
        if node.op_type not in SHAPE_OPS and any(n in data for n in node.input if n):
            data.update(o for o in node.output if o)
    return frozenset(data)


def node_key(node: onnx.NodeProto) -> str:
    """How a node is named in plans and findings: its name, or its first output for unnamed ones."""
    return node.name or (node.output[0] if node.output else node.op_type)


def compute_nodes(index: GraphIndex) -> list[int]:
    """The nodes TensorRT runs as layers: not Q/DQ, not pass-through casts, not constant or shape
    arithmetic, and touching at least one float tensor."""
    kept = []
    for i, node in enumerate(index.nodes):
        if node.op_type in QDQ_OPS or node.op_type in SHAPE_OPS or node.op_type == "Constant":
            continue
        if node.op_type == "Cast" and index.passes_through(node):
            continue
        if not any(n in index.data for n in node.input if n):
            continue
        if _float_type(index, node) is None:
            continue
        kept.append(i)
    return kept


def _float_type(index: GraphIndex, node: onnx.NodeProto) -> Optional[int]:
    """The float type a node computes in: its first float output's, else its first float input's."""
    for name in list(node.output) + list(node.input):
        if name and index.types.get(name) in FLOAT_PRECISIONS:
            return index.types[name]
    return None


# ------------------------------------------------------------------------------------------ FLOPs


def node_flops(model: onnx.ModelProto, input_shapes: Optional[Mapping[str, Sequence[int]]] = None) -> dict[str, int]:
    """FLOPs of every node (by :func:`node_key`), from shapes ONNX infers once symbolic input
    dimensions are fixed: ``input_shapes`` (input name -> shape), else batch (first) dimensions 1
    and every other symbolic dimension 224. A node whose shapes stay unknown counts 0."""
    flops, _ = _flops(model, input_shapes)
    return {node_key(node): flops.get(i, 0) for i, node in enumerate(model.graph.node)}


def _flops(model: onnx.ModelProto,
           input_shapes: Optional[Mapping[str, Sequence[int]]]) -> tuple[dict[int, int], list[str]]:
    """FLOPs by node index, and the assumptions made to count them."""
    fixed, assumptions = _fixed_inputs(model, input_shapes)
    shapes = _inferred_shapes(fixed)
    flops = {i: _count(node, shapes) for i, node in enumerate(model.graph.node)}
    unknown = sum(1 for i, node in enumerate(model.graph.node)
                  if flops[i] is None and node.op_type not in QDQ_OPS | {"Constant"})
    if unknown:
        assumptions.append(f"{unknown} node(s) have no static output shape after shape inference: counted as 0 FLOPs")
    return {i: value or 0 for i, value in flops.items()}, assumptions


def _fixed_inputs(model: onnx.ModelProto,
                  input_shapes: Optional[Mapping[str, Sequence[int]]]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` whose graph inputs have static shapes, and what was assumed."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    fixed.graph.ClearField("value_info")
    initializers = {init.name for init in fixed.graph.initializer}
    inputs = [vi for vi in fixed.graph.input if vi.name not in initializers]
    given = dict(input_shapes or {})
    unknown = sorted(set(given) - {vi.name for vi in inputs})
    if unknown:
        raise QuantlabError(f"`input_shapes` names {', '.join(map(repr, unknown))}, not an input of the model; its "
                            f"inputs are {', '.join(vi.name for vi in inputs) or 'none'}", params=("input_shapes",))
    assumptions = []
    for vi in inputs:
        dims = vi.type.tensor_type.shape.dim
        if vi.name in given:
            shape = [int(d) for d in given[vi.name]]
            if (len(dims) and len(shape) != len(dims)) or any(d <= 0 for d in shape):
                raise QuantlabError(f"`input_shapes` gives input {vi.name!r} the shape {shape}; it needs "
                                    f"{len(dims)} positive dimensions", params=("input_shapes",))
            _set_shape(vi, shape)
            continue
        symbolic = [axis for axis, d in enumerate(dims) if not (d.HasField("dim_value") and d.dim_value > 0)]
        if symbolic:
            shape = [BATCH_DIM if axis == 0 else OTHER_DIM if axis in symbolic else d.dim_value
                     for axis, d in enumerate(dims)]
            what = ", ".join(f"{dims[a].dim_param or f'dimension {a}'!r} = {shape[a]}" for a in symbolic)
            assumptions.append(f"input {vi.name!r}: shape taken as {shape} ({what}: batch dimensions {BATCH_DIM}, "
                               f"other symbolic dimensions {OTHER_DIM}); give `input_shapes` to count FLOPs at your "
                               "shapes")
            _set_shape(vi, shape)
    return fixed, assumptions


def _set_shape(vi: onnx.ValueInfoProto, shape: Sequence[int]) -> None:
    tensor_shape = vi.type.tensor_type.shape
    tensor_shape.ClearField("dim")
    for d in shape:
        tensor_shape.dim.add().dim_value = int(d)


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Static shapes ONNX shape inference finds (initializers as stored); {} where inference fails."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # custom ops, > 2 GB models: FLOPs unknown rather than no plan
        return shapes
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor_type = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tensor_type.HasField("shape"):
            dims = static_dims(vi)
            if all(d is not None and d >= 0 for d in dims):
                shapes[vi.name] = dims
    return shapes


def _count(node: onnx.NodeProto, shapes: Mapping[str, tuple]) -> Optional[int]:
    """FLOPs of one node, None where a shape it needs is unknown."""
    out = shapes.get(node.output[0]) if node.output else None
    x = shapes.get(node.input[0]) if node.input else None
    w = shapes.get(node.input[1]) if len(node.input) > 1 else None
    op = node.op_type
    if op == "Conv":
        if out is None or w is None or len(w) < 2:
            return None
        return 2 * _size(out) * w[1] * _size(w[2:])
    if op == "ConvTranspose":
        if x is None or w is None or len(w) < 2:
            return None
        return 2 * _size(x) * w[1] * _size(w[2:])
    if op == "Gemm":
        if out is None or x is None or len(x) != 2:
            return None
        return 2 * _size(out) * (x[0] if attribute(node, "transA", 0) else x[1])
    if op == "MatMul":
        if out is None or not x:
            return None
        return 2 * _size(out) * x[-1]
    if op in REDUCING_OPS and x is not None:
        return _size(x)
    sizes = [shapes[o] for o in node.output if o and o in shapes]
    return sum(_size(s) for s in sizes) if sizes else None


def _size(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


# ------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class NodePlan:
    """One node: the precision TensorRT 11 is expected to run it in, its expected fusion group
    (named after the group's first node) and its FLOPs."""

    node: str
    op_type: str
    precision: str
    group: str
    flops: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PrecisionPlan:
    """The expected precision of every compute node, in graph order, and what was assumed."""

    nodes: list[NodePlan] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    @property
    def total_flops(self) -> int:
        return sum(n.flops for n in self.nodes)

    def shares(self) -> dict[str, float]:
        """Precision -> its share of the counted FLOPs (empty where no FLOPs could be counted)."""
        total = self.total_flops
        if not total:
            return {}
        sums = {p: sum(n.flops for n in self.nodes if n.precision == p) for p in PRECISIONS}
        return {p: value / total for p, value in sums.items() if value}

    def counts(self) -> dict[str, int]:
        """Precision -> how many nodes run in it."""
        counts = {p: sum(1 for n in self.nodes if n.precision == p) for p in PRECISIONS}
        return {p: n for p, n in counts.items() if n}

    def groups(self) -> dict[str, list[NodePlan]]:
        """Expected fusion group -> its nodes, in graph order."""
        groups: dict[str, list[NodePlan]] = {}
        for n in self.nodes:
            groups.setdefault(n.group, []).append(n)
        return groups

    def headline(self) -> str:
        """``INT8 71.2 % of FLOPs, fp16 28.1 %, fp32 0.7 %``"""
        shares = self.shares()
        if not shares:
            return f"{len(self.nodes)} compute nodes; no FLOPs counted (no static shapes)"
        parts = [f"{'INT8' if p == 'int8' else p} {100 * s:.1f} %" for p, s in shares.items()]
        parts[0] += " of FLOPs"
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"headline": self.headline(), "shares": self.shares(), "counts": self.counts(),
                "total_flops": self.total_flops, "assumptions": list(self.assumptions),
                "nodes": [n.to_dict() for n in self.nodes]}

    def table(self, limit: int = 40) -> str:
        """The headline and one row per fusion group (group, ops, precision, MFLOPs, share), in graph
        order; beyond ``limit`` groups, the ``limit`` largest by FLOPs and a line for the rest."""
        groups = self.groups()
        total = self.total_flops or 1
        shown = set(sorted(groups, key=lambda g: -sum(n.flops for n in groups[g]))[:limit])
        rows = [("group", "ops", "precision", "MFLOPs", "share")]
        for name, members in groups.items():
            if name in shown:
                flops = sum(n.flops for n in members)
                rows.append((_clip(name, 56), "+".join(n.op_type for n in members), _group_precision(members),
                             f"{flops / 1e6:.2f}", f"{100 * flops / total:.1f} %"))
        widths = [max(len(row[k]) for row in rows) for k in range(5)]
        lines = [self.headline(), ""]
        for row in rows:
            lines.append("  ".join(cell.rjust(w) if k >= 3 else cell.ljust(w)
                                   for k, (cell, w) in enumerate(zip(row, widths))).rstrip())
        hidden = [g for g in groups if g not in shown]
        if hidden:
            rest = sum(n.flops for g in hidden for n in groups[g])
            lines.append(f"... {len(hidden)} more groups ({100 * rest / total:.1f} % of FLOPs)")
        lines += [f"assumed: {a}" for a in self.assumptions]
        return "\n".join(lines)


def _group_precision(members: Sequence[NodePlan]) -> str:
    """The group's kernel precision (its first node's), with the others it writes in brackets."""
    lead = members[0].precision
    others = sorted({n.precision for n in members} - {lead}, key=PRECISIONS.index)
    return lead + (f" (+{', '.join(others)})" if others else "")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def precision_plan(model: onnx.ModelProto, *, input_shapes: Optional[Mapping[str, Sequence[int]]] = None
                   ) -> PrecisionPlan:
    """The precision TensorRT 11 is expected to give each compute node of ``model``, grouped into
    expected fusions, with FLOPs (``input_shapes``: see :func:`node_flops`)."""
    return plan_from_index(GraphIndex.of(model), input_shapes=input_shapes)


def plan_from_index(index: GraphIndex, *, input_shapes: Optional[Mapping[str, Sequence[int]]] = None
                    ) -> PrecisionPlan:
    """:func:`precision_plan` on a graph already indexed (the lint shares one index)."""
    flops, assumptions = _flops(index.model, input_shapes)
    computing = compute_nodes(index)
    groups = fusion_groups(index, computing)
    plan = PrecisionPlan(assumptions=assumptions)
    for i in computing:
        node = index.nodes[i]
        plan.nodes.append(NodePlan(node_key(node), node.op_type, node_precision(index, i), groups[i], flops.get(i, 0)))
    out_of_scope = sum(1 for i, node in enumerate(index.nodes) if node.op_type in QDQ_OPS and not index.is_int8(i))
    if out_of_scope:
        plan.assumptions.append(f"{out_of_scope} Q/DQ node(s) are not int8 (int4, fp8 ...): out of scope, the "
                                "layers they feed are listed in their float type")
    return plan


def quantized_ranges(model: onnx.ModelProto) -> dict[str, float]:
    """The range each per-tensor int8 QuantizeLinear of ``model`` quantizes its input with (scale x
    127, or x 255 - zero point for uint8), by input tensor: the ranges of any Q/DQ file."""
    index = GraphIndex.of(model)
    found = {}
    for i, node in enumerate(index.nodes):
        if node.op_type != "QuantizeLinear" or not index.is_int8(i):
            continue
        scale = index.value(node.input[1])
        if scale is None or scale.size != 1:
            continue
        zero = index.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        unsigned = index.quantized_type(node) == TensorProto.UINT8
        top = (255 - int(zero.reshape(-1)[0]) if zero is not None else 255) if unsigned else 127
        found[node.input[0]] = float(scale.reshape(-1)[0]) * top
    return found


def node_precision(index: GraphIndex, i: int) -> str:
    """``int8`` where TensorRT is expected to run node ``i`` in INT8, else its float type."""
    node = index.nodes[i]
    if _runs_int8(index, node):
        return "int8"
    return FLOAT_PRECISIONS.get(_float_type(index, node) or TensorProto.FLOAT, "fp32")


def _runs_int8(index: GraphIndex, node: onnx.NodeProto) -> bool:
    def int8_source(name: str) -> bool:
        p = index.dq_source(name)
        return p is not None and index.is_int8(p)

    op = node.op_type
    if op in QUANTIZED_OPS:
        return len(node.input) > 1 and int8_source(node.input[0]) and int8_source(node.input[1])
    if index.passes_through(node) and node.input:
        return int8_source(node.input[0]) or _only_quantized(index, node)
    if op in POOLING_OPS:
        return int8_source(node.input[0]) and _only_quantized(index, node)
    if op == "Concat":
        data = [n for n in node.input if n and n in index.data]
        sources = [index.dq_source(n) for n in data]
        if not data or any(p is None or not index.is_int8(p) for p in sources):
            return False
        return len({_scale_key(index, p) for p in sources}) == 1
    return False


def _only_quantized(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """Is every output of ``node`` read only by int8 QuantizeLinear nodes (through pass-through ops)?"""
    if any(o in index.graph_outputs for o in node.output):
        return False
    readers = [r for o in node.output if o for r in index.final_readers(o)]
    return bool(readers) and all(index.nodes[r].op_type == "QuantizeLinear" and index.is_int8(r) for r in readers)


def _scale_key(index: GraphIndex, dq: int) -> object:
    """A hashable stand-in for a DequantizeLinear's scale value (its name where not constant)."""
    name = index.nodes[dq].input[1]
    value = index.value(name)
    return name if value is None else tuple(np.asarray(value, np.float64).ravel().tolist())


# ------------------------------------------------------------------------------------------ fusion


def fusion_groups(index: GraphIndex, computing: Sequence[int]) -> dict[int, str]:
    """Node index -> the name of its expected fusion group: each Conv, ConvTranspose, Gemm and MatMul
    takes in the nodes TensorRT fuses after it; every other node is its own group."""
    groups = {i: node_key(index.nodes[i]) for i in computing}
    for i in computing:
        if index.nodes[i].op_type in QUANTIZED_OPS:
            for member in fused_after(index, i):
                if member in groups:
                    groups[member] = groups[i]
    return groups


def fused_after(index: GraphIndex, i: int) -> list[int]:
    """The nodes fused into layer ``i``: for a Conv an optional BatchNormalization, Add and activation,
    in that order; for a Gemm/MatMul an optional bias Add (a constant) and activation. Each must be
    the only reader of the tensor before it (a tensor read twice must be written out), and an INT8
    Conv takes in an Add only when the Add's other input is quantized too."""
    node = index.nodes[i]
    steps = (("BatchNormalization",), ("Add",), tuple(ACTIVATIONS)) if node.op_type in ("Conv", "ConvTranspose") \
        else (("Add",), tuple(ACTIVATIONS))
    members: list[int] = []
    current = node.output[0]
    for allowed in steps:
        nxt, read = _sole_reader(index, current)
        if nxt is None or index.nodes[nxt].op_type not in allowed:
            continue
        candidate = index.nodes[nxt]
        if candidate.op_type == "Add" and not _fusable_add(index, node, candidate, read):
            break
        members.append(nxt)
        current = candidate.output[0]
    return members


def _fusable_add(index: GraphIndex, layer: onnx.NodeProto, add: onnx.NodeProto, reaching: str) -> bool:
    """Does TensorRT fuse ``add`` (which reads ``reaching``, the layer's result) into ``layer``? A
    Gemm/MatMul takes in a bias (a constant); a Conv a residual, quantized where the Conv is INT8."""
    others = [n for n in add.input if n and n != reaching]
    if layer.op_type in ("Gemm", "MatMul"):
        return any(n not in index.data for n in others)
    if not _runs_int8(index, layer):
        return True
    return all(n not in index.data or index.dq_source(n) is not None for n in others)


def _sole_reader(index: GraphIndex, name: str) -> tuple[Optional[int], str]:
    """The one node that reads ``name`` (looking through float Casts) and the tensor it reads; None
    if several read it or it is a graph output."""
    while True:
        readers = index.readers.get(name, ())
        if len(readers) != 1 or name in index.graph_outputs:
            return None, name
        node = index.nodes[readers[0]]
        if node.op_type == "Cast" and index.passes_through(node):
            name = node.output[0]
            continue
        return readers[0], name
