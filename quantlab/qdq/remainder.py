"""The typed remainder: what runs outside INT8, in which float type, decided from measured ranges.

A TensorRT 11 network is strongly typed: every op runs in the type its ONNX tensors have. An
exporter that leaves everything outside the Q/DQ pairs in float32 hands TensorRT an engine whose
remainder runs in fp32 - slower than fp16 for much of the graph. ModelOpt converts the remainder
to fp16 with fixed guesses (a threshold on I/O values seen on a few samples, on initializers).
quantlab has every tensor's histogram from calibration, so it decides per tensor from data.

This module is two small halves:

* **the decision** (:func:`decide`): the precision of each node outside INT8 and, for a node kept
  in fp32, the measured reason. The rules, each stated with its threshold:

  - ``overflow``: a float tensor the node reads or writes has a measured max |x| above
    ``FP16_MAX / OVERFLOW_MARGIN`` (65504 / 4 = 16376): held-out data may exceed the calibration
    maximum, and the margin leaves it 4x room before fp16 saturates to inf;
  - ``underflow``: more than ``UNDERFLOW_SHARE`` (10 %) of the tensor's values lie below fp16's
    smallest normal (2**-14 = 6.1e-5), where fp16 keeps fewer than 10 significant bits. A
    histogram resolves this only where its bin width is at most 2**-14 (max |x| below about 0.06
    with 2048 bins); exact zeros, which fp16 stores exactly, fall in the same first bins, so the
    rule errs towards fp32;
  - ``accumulation``: reductions and normalisations (``ACCUMULATING_OPS``) sum N values; an fp16
    running sum of N values up to max |x| can reach N * max |x| (N * max |x|**2 for sums of
    squares), so the op stays fp32 where that bound, from the measured input range and N from the
    model's static shapes, passes the overflow threshold. Where N is not static the bound is not
    checked, and the reason says so;
  - ``scale``: an INT8 layer whose Q/DQ scale (activation; for weights the median over output
    channels) falls below fp16's smallest normal keeps fp32 types (its arithmetic stays INT8): an
    fp16 scale there would lose precision. Single channels below it (dead filters) do not count:
    their fp16 scale moves a dequantized weight by at most 127 * 2**-25 = 3.8e-6, far below the
    layer's INT8 step; a scale that fp16 would flush to zero is stored as its smallest subnormal
    (2**-24), since TensorRT refuses a zero scale;
  - ``type``: an op ONNX defines no fp16/bf16 version of (its type constraints), a custom-domain op,
    an op with subgraphs or an explicit output type (``Cast``, ``dtype``) keeps its types.

  bf16 has fp32's exponent range: only the ``type`` rule applies to it.

* **the mechanism** (:func:`retype`): a copy of a model in which chosen nodes compute in fp16 or
  bf16 - converted copies of their float32 initializers, one Cast per tensor entering a region,
  a Cast back (to the original name) for each tensor read outside it, graph I/O types unchanged.
  Which inputs of a node change type comes from the op's ONNX schema: exactly the inputs bound to
  a type parameter that holds float32 here and allows the new type (a Resize's ``scales``, fixed
  to float32 by its schema, stays float32). :func:`quantlab.precision.float16_layers` (tune's
  fallback layers) is this same mechanism on a smaller set of nodes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import QuantlabError
from ..graph import names_used, static_dims
from ..histogram import EMPTY_EXPONENT, TensorHistogram

HIGH_PRECISIONS = ("fp16", "bf16", "fp32")
ELEMENT_TYPES = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16, "fp32": TensorProto.FLOAT}
SUFFIXES = {TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16"}
FP16_MAX = float(np.finfo(np.float16).max)
FP16_SMALLEST_NORMAL = 2.0 ** -14
OVERFLOW_MARGIN = 4.0
UNDERFLOW_SHARE = 0.10
FP16_LIMIT = FP16_MAX / OVERFLOW_MARGIN

# Ops that sum many values (reductions, normalisations): the ``accumulation`` rule. Value: whether
# the sum is of squares.
ACCUMULATING_OPS = {
    "ReduceSum": False, "ReduceMean": False, "ReduceL1": False, "ReduceLogSumExp": False,
    "ReduceSumSquare": True, "ReduceL2": True, "GlobalAveragePool": False, "GlobalLpPool": True,
    "LayerNormalization": True, "InstanceNormalization": True, "GroupNormalization": True,
    "LpNormalization": True, "MeanVarianceNormalization": True,
}


@dataclass(frozen=True)
class MeasuredRange:
    """What calibration saw of one tensor: max |x| and the share of values below fp16's smallest
    normal (None where the histogram cannot resolve it). ``bound``: True where max |x| is only a
    lower bound (a range from a cache, whose saturating threshold may sit below the maximum)."""

    max_abs: float
    below_normal: Optional[float] = None
    bound: bool = False

    @classmethod
    def of(cls, histogram: TensorHistogram) -> MeasuredRange:
        total = histogram.total
        if histogram.exponent == EMPTY_EXPONENT or not total:
            return cls(0.0)
        width = math.ldexp(1.0, histogram.exponent) / histogram.bins
        below = None
        if width <= FP16_SMALLEST_NORMAL:
            under = int(FP16_SMALLEST_NORMAL / width)  # bins that lie wholly below 2**-14
            below = float(histogram.counts[:under].sum()) / total
        return cls(float(histogram.max_abs), below)

    def to_dict(self) -> dict:
        return {"max_abs": self.max_abs, "below_normal": self.below_normal, **({"bound": True} if self.bound else {})}

    @classmethod
    def from_dict(cls, data: Mapping) -> MeasuredRange:
        return cls(float(data["max_abs"]), data.get("below_normal"), bool(data.get("bound", False)))


def measured_ranges(histograms: Mapping[str, TensorHistogram]) -> dict[str, MeasuredRange]:
    """:class:`MeasuredRange` of every histogram (the statistics of a calibration)."""
    return {name: MeasuredRange.of(h) for name, h in histograms.items()}


def thresholds_as_ranges(amax: Mapping[str, float]) -> dict[str, MeasuredRange]:
    """Ranges from a cache's amax values: lower bounds on max |x| (saturating calibrators clip)."""
    return {name: MeasuredRange(float(value), None, True) for name, value in amax.items() if math.isfinite(value)}


def unsafe_reason(name: str, measured: Optional[MeasuredRange], high: str) -> Optional[str]:
    """Why ``name`` cannot be stored in ``high`` (fp16/bf16), from its measured range; None if it can."""
    if measured is None or high != "fp16":
        return None
    if measured.max_abs > FP16_LIMIT:
        return f"{name}: max |x| {measured.max_abs:.3g} > {FP16_LIMIT:.0f} (fp16 max / {OVERFLOW_MARGIN:g})"
    if measured.below_normal is not None and measured.below_normal > UNDERFLOW_SHARE:
        return (f"{name}: {measured.below_normal:.0%} of values below fp16's smallest normal 6.1e-05 "
                f"(> {UNDERFLOW_SHARE:.0%})")
    return None


@dataclass(frozen=True)
class NodePrecision:
    """The type one node computes in (``fp16``/``bf16``/``fp32``), whether its arithmetic is INT8
    (it reads DequantizeLinear outputs), and why, where it is fp32 while the rest is not."""

    node: str
    op_type: str
    precision: str
    int8: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        return {"op": self.op_type, "precision": self.precision, **({"int8": True} if self.int8 else {}),
                **({"reason": self.reason} if self.reason else {})}


def decide(model: onnx.ModelProto, measured: Mapping[str, MeasuredRange], high: str,
           activations: set[str]) -> dict[int, NodePrecision]:
    """The precision of every computing node of a Q/DQ model (by index), from measured ranges.

    ``activations``: the float tensors that carry runtime data (constants and shape computations
    stay as they are: TensorRT folds them). Q/DQ nodes take the type of the tensor they quantize
    (see :func:`qdq_types`). ``measured`` is keyed by the float model's tensor names; a
    DequantizeLinear output stands for the tensor it dequantizes.
    """
    if high not in HIGH_PRECISIONS:
        raise QuantlabError(f"`high_precision` must be one of {', '.join(HIGH_PRECISIONS)}, got {high!r}",
                            params=("high_precision",))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    origin = _dequantized_origin(model)
    shapes = _static_shapes(model)
    opset = opset_of(model)
    producers = {out: node for node in graph.node for out in node.output}
    decisions: dict[int, NodePrecision] = {}
    for index, node in enumerate(graph.node):
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        data = [name for name in node.input if name and origin.get(name, name) in activations]
        if not data:
            continue  # constants and shape arithmetic: folded by TensorRT
        key = node.name or node.output[0]
        int8 = any(name in origin for name in node.input)
        if high == "fp32":
            decisions[index] = NodePrecision(key, node.op_type, "fp32", int8)
            continue
        reason = convertible(node, ELEMENT_TYPES[high], opset)
        if not reason:
            tensors = [origin.get(name, name) for name in data] + [o for o in node.output if o in activations]
            reason = next((why for why in (unsafe_reason(t, measured.get(t), high) for t in tensors) if why), "")
        if not reason and high == "fp16" and node.op_type in ACCUMULATING_OPS:
            reason = _accumulation_reason(node, origin.get(node.input[0], node.input[0]), measured, shapes)
        if not reason and high == "fp16" and int8:
            reason = _scale_reason(node, producers, initializers)
        decisions[index] = NodePrecision(key, node.op_type, "fp32" if reason else high, int8, reason)
    return decisions


def qdq_types(model: onnx.ModelProto, decisions: Mapping[int, NodePrecision], measured: Mapping[str, MeasuredRange],
              high: str) -> dict[int, str]:
    """The type of each Q/DQ node: an activation pair stores the type its quantized tensor can have
    (fp16 where measured safe and its scale is an fp16 normal number), a weight DequantizeLinear
    the type of the layer that reads it; so Casts stand only where a layer's type differs."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    types: dict[int, str] = {}
    if high == "fp32":
        return types
    for index, node in enumerate(graph.node):
        if node.op_type == "QuantizeLinear":
            scale_ok = high != "fp16" or _typical_scale(initializers.get(node.input[1])) >= FP16_SMALLEST_NORMAL
            safe = unsafe_reason(node.input[0], measured.get(node.input[0]), high) is None
            kind = high if scale_ok and safe else "fp32"
            types[index] = kind
            for dq in consumers.get(node.output[0], []):
                if graph.node[dq].op_type == "DequantizeLinear":
                    types[dq] = kind
    for index, node in enumerate(graph.node):
        if node.op_type == "DequantizeLinear" and index not in types:  # a weight: the type of its layer
            readers = [decisions[i].precision for i in consumers.get(node.output[0], []) if i in decisions]
            types[index] = high if readers and all(p == high for p in readers) else "fp32"
    return types


def convertible(node: onnx.NodeProto, target: int, opset: int) -> str:
    """'' if ``node`` can compute in ``target`` (its schema at the model's ``opset`` allows it), else why not."""
    label = helper.tensor_dtype_to_string(target).replace("TensorProto.", "").lower()
    if node.domain not in ("", "ai.onnx"):
        return f"{node.op_type}: custom-domain op ({node.domain}), types kept"
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return f"{node.op_type}: has subgraphs, types kept"
    if any(a.name in ("to", "dtype") for a in node.attribute) or node.op_type in ("Cast", "CastLike"):
        return f"{node.op_type}: sets its output type explicitly"
    schema = _schema(node, opset)
    if schema is None:
        return f"{node.op_type}: no ONNX schema"
    params = _float_params(schema, target)
    if not params:
        return f"{node.op_type}: ONNX defines no {label} version"
    formals = [_formal(schema.inputs, k) for k in range(len(node.input))]
    if not any(f is not None and f.type_str in params for f in formals):
        return f"{node.op_type}: no input of it can be {label}"
    if any(a.type == onnx.AttributeProto.TENSOR for a in node.attribute):
        return f"{node.op_type}: holds a tensor attribute of fixed type"
    return ""


def retype(model: onnx.ModelProto, precisions: Mapping[int, int], *, check: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` in which node ``i`` computes in ``precisions[i]`` (FLOAT16 or BFLOAT16).

    Per node, the inputs and outputs bound to a float32 type parameter that allows the new type
    change type (from the op's schema). Such an input that is a float32 initializer gets a
    converted copy (``<name>_fp16``; the original stays for other readers); a float32 tensor gets
    one Cast, shared by every reader of that type; an output becomes ``<name>_fp16`` and is cast
    back to ``<name>`` where anything else reads it (graph outputs included), so graph I/O types and
    the names other nodes read do not change. A node whose types the schema cannot change, or whose
    float32 initializer would overflow, is an error naming it.
    """
    result, types, initializers, taken = _working_copy(model)
    graph = result.graph
    if not precisions:
        return result
    bound = {i: _bound_positions(graph.node[i], precisions[i], types, opset_of(result))
             for i in precisions}
    # Who reads each name in float32: nodes left as they are, positions a converted node keeps, outputs.
    outside = {o.name for o in graph.output}
    for index, node in enumerate(graph.node):
        inputs_kept = [n for k, n in enumerate(node.input) if n and (index not in bound or k not in bound[index][0])]
        outside.update(inputs_kept)
        outside |= names_used(_subgraphs_only(node))

    available: dict[tuple[str, int], str] = {}  # (float32 name, type) -> the name holding it in that type
    new_initializers: list[onnx.TensorProto] = []
    ordered: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        if index not in precisions:
            ordered.append(node)
            continue
        target, suffix = precisions[index], SUFFIXES[precisions[index]]
        label = f"{node.op_type} {_key(node)!r}"
        inputs, outputs = bound[index]
        for position in sorted(inputs):
            name = node.input[position]
            if (name, target) in available:
                node.input[position] = available[(name, target)]
            elif name in initializers:
                array = numpy_helper.to_array(initializers[name])
                finite = array[np.isfinite(array)]
                peak = float(np.max(np.abs(finite))) if finite.size else 0.0
                if target == TensorProto.FLOAT16 and (peak > FP16_MAX or finite.size < array.size):
                    raise QuantlabError(f"{label} cannot compute in float16: its initializer {name!r} holds values up "
                                        f"to {peak:.4g}, beyond float16's {FP16_MAX:.0f}; keep it in fp32 "
                                        "(`high_precision`)", params=("high_precision",))
                is_scale = node.op_type in ("QuantizeLinear", "DequantizeLinear") and position == 1
                copy = numpy_helper.from_array(converted(array, target, is_scale), name="")
                copy.name = _unique(f"{name}_{suffix}", taken)
                new_initializers.append(copy)
                available[(name, target)] = node.input[position] = copy.name
            else:
                cast = _unique(f"{name}_{suffix}", taken)
                ordered.append(helper.make_node("Cast", [name], [cast], name=_unique(f"{cast}_Cast", taken), to=target))
                available[(name, target)] = node.input[position] = cast
        back = []
        for position in sorted(outputs):
            name = node.output[position]
            inner = _unique(f"{name}_{suffix}", taken)
            available[(name, target)] = node.output[position] = inner
            if name in outside:
                back.append(helper.make_node("Cast", [inner], [name], name=_unique(f"{name}_Cast_fp32", taken),
                                             to=TensorProto.FLOAT))
        ordered.append(node)
        ordered += back

    _replace_nodes(graph, ordered, new_initializers)
    present = {out for node in graph.node for out in node.output}
    kept_info = [vi for vi in graph.value_info if vi.name in present and vi.name not in
                 {name for name, _ in available}]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    if check:
        # The checker, then type inference with type checks (the Casts must line up) but not strict
        # shape merging: exporters declare wrong output shapes that ONNX Runtime ignores (PP-OCRv5's
        # classifier declares its [N, 2] Softmax output as a scalar), and the full check refuses them.
        try:
            onnx.checker.check_model(result)
            onnx.shape_inference.infer_shapes(result, check_type=True, strict_mode=False)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise QuantlabError(f"the retyped model fails onnx.checker: {str(exc).strip().splitlines()[0]}") from exc
    return result


def rounded(model: onnx.ModelProto, precisions: Mapping[int, int]) -> onnx.ModelProto:
    """The float32 model that computes what :func:`retype` (same arguments) stores: every tensor
    the typed model holds in fp16/bf16 is rounded to that type (a Cast there and back), and so is
    every initializer it converts, Q/DQ scales included; arithmetic stays float32.

    This is how TensorRT runs a typed network - fp16 tensors in memory, fp32 accumulation inside
    kernels - and how the evaluation engine scores it. A DequantizeLinear's output is not rounded:
    TensorRT fuses it into the INT8 layer that reads it (int8 products summed exactly, rescaled in
    fp32), whereas an fp16 DequantizeLinear executed as written would round q * scale to fp16.
    """
    result, types, initializers, taken = _working_copy(model)
    graph = result.graph
    if not precisions:
        return result
    done: dict[tuple[str, int], str] = {}  # (name, type) -> its rounded float32 copy
    new_initializers: list[onnx.TensorProto] = []
    ordered: list[onnx.NodeProto] = []

    def round_trip(name: str, target: int, rounded_name: str) -> list[onnx.NodeProto]:
        inner = _unique(f"{rounded_name}_{SUFFIXES[target]}", taken)
        return [helper.make_node("Cast", [name], [inner], name=_unique(f"{inner}_Cast", taken), to=target),
                helper.make_node("Cast", [inner], [rounded_name], name=_unique(f"{rounded_name}_Cast", taken),
                                 to=TensorProto.FLOAT)]

    for index, node in enumerate(graph.node):
        if index not in precisions:
            ordered.append(node)
            continue
        target = precisions[index]
        inputs, outputs = _bound_positions(node, target, types, opset_of(result))
        for position in sorted(inputs):
            name = node.input[position]
            if (name, target) not in done:
                if name in initializers:
                    array = numpy_helper.to_array(initializers[name])
                    is_scale = node.op_type in ("QuantizeLinear", "DequantizeLinear") and position == 1
                    copy = numpy_helper.from_array(converted(array, target, is_scale).astype(np.float32), name="")
                    copy.name = _unique(f"{name}_as_{SUFFIXES[target]}", taken)
                    new_initializers.append(copy)
                    done[(name, target)] = copy.name
                else:
                    rounded_name = _unique(f"{name}_as_{SUFFIXES[target]}", taken)
                    ordered += round_trip(name, target, rounded_name)
                    done[(name, target)] = rounded_name
            node.input[position] = done[(name, target)]
        ordered.append(node)
        if node.op_type == "DequantizeLinear":  # read as it is by the INT8 layer TensorRT fuses it into
            done.update(((name, target), name) for name in node.output)
            continue
        for position in sorted(outputs):
            name = node.output[position]
            raw = _unique(f"{name}_unrounded", taken)
            node.output[position] = raw
            ordered += round_trip(raw, target, name)
            done[(name, target)] = name
    _replace_nodes(graph, ordered, new_initializers)
    graph.ClearField("value_info")
    return result


def emulated(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float32 model that computes what any typed Q/DQ model stores (quantlab's, ModelOpt's): the
    scoring :func:`rounded` gives quantlab's own exports, for a file whose precision map is unknown.

    Every fp16/bf16 tensor the file holds becomes a float32 tensor of the same name carrying the
    rounded value: a node that writes fp16 computes in float32 and its output is rounded (a Cast
    there and back); a Cast to fp16 rounds; a Cast back to float32 is then the identity; fp16
    initializers (weights, scales) become their exact float32 values. DequantizeLinear outputs are
    not rounded (TensorRT fuses them into the INT8 layer), as in :func:`rounded`.
    """
    result, types, initializers, taken = _working_copy(model)
    graph = result.graph
    low = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
    for init in graph.initializer:
        if init.data_type in low:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and to in low:  # round, and stay float32
            inner = _unique(f"{node.output[0]}_{SUFFIXES[to]}", taken)
            ordered += [helper.make_node("Cast", [node.input[0]], [inner], name=node.name, to=to),
                        helper.make_node("Cast", [inner], [node.output[0]], name=_unique(f"{inner}_Cast", taken),
                                         to=TensorProto.FLOAT)]
            continue
        if node.op_type == "Cast" and to == TensorProto.FLOAT and types.get(node.input[0]) in low:
            ordered.append(helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name))
            continue
        ordered.append(node)
        if node.op_type == "DequantizeLinear":
            continue
        for position, name in enumerate(node.output):
            if name and types.get(name) in low:
                raw = _unique(f"{name}_unrounded", taken)
                node.output[position] = raw
                inner = _unique(f"{name}_{SUFFIXES[types[name]]}", taken)
                ordered += [helper.make_node("Cast", [raw], [inner], name=_unique(f"{inner}_Cast", taken),
                                             to=types[name]),
                            helper.make_node("Cast", [inner], [name], name=_unique(f"{name}_Cast_fp32", taken),
                                             to=TensorProto.FLOAT)]
    _replace_nodes(graph, ordered, [])
    graph.ClearField("value_info")
    for info in list(graph.input) + list(graph.output):
        if info.type.tensor_type.elem_type in low:
            info.type.tensor_type.elem_type = TensorProto.FLOAT
    return result


def element_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of each tensor shape inference can tell (graph I/O and initializers as declared)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # custom ops: what the file states
        inferred = model
    types = {init.name: init.data_type for init in model.graph.initializer}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


# ----------------------------------------------------------------------------------------- helpers


def _working_copy(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int], dict, set[str]]:
    """A copy to rewrite, its element types, its initializers by name and every name it uses."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    initializers = {init.name: init for init in result.graph.initializer}
    return result, element_types(result), initializers, _all_names(result)


def _replace_nodes(graph: onnx.GraphProto, ordered: list, new_initializers: list) -> None:
    """``ordered`` as the graph's nodes, ``new_initializers`` added, initializers nothing reads dropped."""
    del graph.node[:]
    graph.node.extend(ordered)
    graph.initializer.extend(new_initializers)
    used = names_used(graph) | {o.name for o in graph.output} | {i.name for i in graph.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _schema(node: onnx.NodeProto, opset: int):
    try:
        return onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except onnx.defs.SchemaError:
        return None


def _formal(formals, position: int):
    """The formal parameter of actual position ``position`` (a variadic last one repeats)."""
    if position < len(formals):
        return formals[position]
    last = formals[-1] if formals else None
    return last if last is not None and last.option == onnx.defs.OpSchema.FormalParameterOption.Variadic else None


def _float_params(schema, target: int) -> set[str]:
    """The type parameters of ``schema`` that may hold both float32 and ``target``."""
    wanted = {"tensor(float)", "tensor(" + {TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}[target]
              + ")"}
    return {c.type_param_str for c in schema.type_constraints if wanted <= set(c.allowed_type_strs)}


def _bound_positions(node: onnx.NodeProto, target: int, types: Mapping[str, int],
                     opset: int) -> tuple[set[int], set[int]]:
    """The input and output positions of ``node`` that change type: bound to a type parameter that
    holds float32 in this node and allows ``target``."""
    reason = convertible(node, target, opset)
    if reason:
        raise QuantlabError(f"node {_key(node)!r} cannot be retyped: {reason}", params=("high_precision",))
    schema = _schema(node, opset)
    params = _float_params(schema, target)
    holding = set()
    for formals, names in ((schema.inputs, node.input), (schema.outputs, node.output)):
        for position, name in enumerate(names):
            formal = _formal(formals, position)
            if name and formal is not None and formal.type_str in params and types.get(name) == TensorProto.FLOAT:
                holding.add(formal.type_str)
    inputs = {k for k, name in enumerate(node.input) if name and (f := _formal(schema.inputs, k)) is not None
              and f.type_str in holding and types.get(name) in (TensorProto.FLOAT, None)}
    outputs = {k for k, name in enumerate(node.output) if name and (f := _formal(schema.outputs, k)) is not None
               and f.type_str in holding}
    return inputs, outputs


def _dequantized_origin(model: onnx.ModelProto) -> dict[str, str]:
    """Output of each activation DequantizeLinear -> the float tensor its QuantizeLinear read."""
    quantized = {node.output[0]: node.input[0] for node in model.graph.node if node.op_type == "QuantizeLinear"}
    return {node.output[0]: quantized[node.input[0]] for node in model.graph.node
            if node.op_type == "DequantizeLinear" and node.input[0] in quantized}


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    shapes = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = static_dims(vi)
    return shapes


def _accumulation_reason(node: onnx.NodeProto, source: str, measured: Mapping[str, MeasuredRange],
                         shapes: Mapping[str, tuple]) -> str:
    """The ``accumulation`` rule: '' when an fp16 sum over the reduced elements stays in range."""
    range_ = measured.get(source)
    if range_ is None:
        return ""
    n = _reduced_count(node, shapes.get(node.input[0]), shapes.get(node.output[0]))
    if n is None:
        return ""
    peak = range_.max_abs ** 2 if ACCUMULATING_OPS[node.op_type] else range_.max_abs
    if n * peak > FP16_LIMIT:
        what = "squares of values" if ACCUMULATING_OPS[node.op_type] else "values"
        return (f"{_key(node)}: sums {n} {what} up to {range_.max_abs:.3g} (bound {n * peak:.3g} > "
                f"{FP16_LIMIT:.0f})")
    return ""


def _reduced_count(node: onnx.NodeProto, shape: Optional[tuple], out: Optional[tuple]) -> Optional[int]:
    """How many elements one output value sums (None where a shape is not static)."""
    if not shape or any(d is None or d <= 0 for d in shape):
        return None
    total = int(np.prod(shape))
    if node.op_type in ("GlobalAveragePool", "GlobalLpPool", "InstanceNormalization"):
        return int(np.prod(shape[2:])) or 1
    if node.op_type == "GroupNormalization":
        groups = next((a.i for a in node.attribute if a.name == "num_groups"), 1)
        return total // max(shape[0] * groups, 1)
    if node.op_type == "LayerNormalization":
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1) % len(shape)
        return int(np.prod(shape[axis:]))
    if out and all(d is not None and d > 0 for d in out):
        return max(total // max(int(np.prod(out)), 1), 1)
    return None


def _scale_reason(node: onnx.NodeProto, producers: Mapping[str, onnx.NodeProto],
                  initializers: Mapping[str, onnx.TensorProto]) -> str:
    for name in node.input:
        dq = producers.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        typical = _typical_scale(initializers.get(dq.input[1]))
        if typical < FP16_SMALLEST_NORMAL:
            return (f"{_key(node)}: Q/DQ scale {typical:.3g} of {dq.input[0]!r} is below fp16's smallest normal "
                    "(INT8 arithmetic kept, fp32 types)")
    return ""


def _typical_scale(init: Optional[onnx.TensorProto]) -> float:
    """The median of a Q/DQ scale (one value per tensor, or per output channel)."""
    if init is None:
        return math.inf
    values = np.abs(numpy_helper.to_array(init).astype(np.float64)).ravel()
    return float(np.median(values)) if values.size else math.inf


def converted(array: np.ndarray, target: int, scale: bool = False) -> np.ndarray:
    """``array`` in ``target``'s numpy type; a Q/DQ ``scale`` never rounds to zero (TensorRT refuses
    a zero scale): values fp16 would flush are stored as its smallest subnormal."""
    result = array.astype(helper.tensor_dtype_to_np_dtype(target))
    if scale:
        tiny = np.array(2.0 ** -24 if target == TensorProto.FLOAT16 else np.finfo(np.float32).tiny,
                        dtype=result.dtype)
        result = np.where((result == 0) & (array != 0), tiny, result)
    return result


def _key(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _all_names(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    names = {init.name for init in graph.initializer} | {vi.name for vi in graph.input} | names_used(graph)
    for node in graph.node:
        names.update(node.output)
        names.add(node.name)
    return names


def _unique(base: str, taken: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3``... : the first name not yet in ``taken`` (then taken)."""
    name, count = base, 1
    while name in taken:
        count += 1
        name = f"{base}_{count}"
    taken.add(name)
    return name


def _subgraphs_only(node: onnx.NodeProto) -> onnx.GraphProto:
    """A graph holding ``node``'s subgraphs' nodes, so :func:`names_used` sees what they read."""
    holder = onnx.GraphProto()
    for attribute in node.attribute:
        for sub in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else
                    attribute.graphs if attribute.type == onnx.AttributeProto.GRAPHS else []):
            holder.node.extend(sub.node)
    return holder
