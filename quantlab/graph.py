"""What to measure and what to quantize in an ONNX model, on a normalised working copy.

Pure graph work, no execution: which tensors are activations (and so get an INT8 range), which
of them feed compute-heavy ops (the ``quantizable`` subset Q/DQ export needs), and which
constants are weights with which per-channel axis.

Real exports are messy (paddle2onnx keeps every weight in a ``Constant`` node or behind an
``Identity``; torch writes batch axes as -1 or strings; YOLO heads compute anchor grids from
``Shape``), and the user's file is never edited. So :func:`load_model` makes one normalised
working copy (:func:`normalise`), and everything downstream - collection, Q/DQ export,
evaluation - runs on it:

* ``Constant`` nodes become initializers, and ``Identity``/``Cast``/``Reshape``/``Transpose``/
  ``Squeeze``/``Unsqueeze``/``Flatten`` nodes fed only by initializers are folded into the
  initializer they compute (what TensorRT's own constant folding does); each keeps its output's
  name, so every tensor a cache refers to keeps its name;
* a batch (or any) dimension written as -1, 0 or a string is dynamic;
* tensors that do not depend on the input's *values* (outputs of ``Shape``/``Size``, and what is
  computed from them and from constants: ``ConstantOfShape``, ``Range``, a YOLO anchor grid) are
  data-independent: TensorRT folds them, they get no range and never stop a run;
* Q/DQ export needs opset >= 13 (per-channel DequantizeLinear): :func:`upgrade_opset`.

The model's SHA-256 is that of the user's file, so tables and statistics still name it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ModelError

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
# Ops whose activation inputs an explicit-quantization build quantizes (TensorRT fuses Q/DQ
# into these): the compute-heavy ones.
QUANTIZABLE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"}
# Weight input index and per-output-channel axis of each weighted op (see weight_axis).
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


@dataclass(frozen=True)
class InputSpec:
    """A graph input: name, shape (an int per fixed dim, None per symbolic one) and dtype."""

    name: str
    shape: tuple
    dtype: np.dtype

    @property
    def sample_shape(self) -> tuple:
        """The shape of one sample (the first axis is the batch)."""
        return self.shape[1:]

    @property
    def fixed_batch(self) -> Optional[int]:
        return self.shape[0] if self.shape and isinstance(self.shape[0], int) else None


@dataclass(frozen=True)
class WeightSpec:
    """A weight initializer, input ``index`` of ``node``, quantized per output channel along ``axis``."""

    name: str
    op_type: str
    node: str
    axis: int
    index: int = 1


@dataclass
class ModelGraph:
    """An ONNX model (the normalised working copy) with the facts calibration needs."""

    model: onnx.ModelProto
    path: Optional[Path]
    sha256: str  # of the user's file, not of the working copy
    inputs: list[InputSpec]
    activations: list[str]  # graph inputs + node outputs that carry runtime float data
    quantizable: list[str]  # activations that are inputs of QUANTIZABLE_OPS
    weights: list[WeightSpec]
    data_independent: list[str] = field(default_factory=list)  # float tensors TensorRT folds: no range
    unquantizable_weights: dict[str, str] = field(default_factory=dict)  # node -> why its weight stays float
    normalisation: list[str] = field(default_factory=list)  # what the working copy changed, for summaries

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.model.graph.output]

    def initializer(self, name: str) -> np.ndarray:
        for init in self.model.graph.initializer:
            if init.name == name:
                return numpy_helper.to_array(init)
        raise KeyError(name)


def load_model(source: Union[str, Path, onnx.ModelProto]) -> ModelGraph:
    """Load and inspect an ONNX model; a missing or non-ONNX file is a clear ModelError."""
    if isinstance(source, onnx.ModelProto):
        model, path = source, None
        raw = model.SerializeToString()
    else:
        path = Path(source)
        if not path.exists():
            raise ModelError(f"model file {path} does not exist")
        if path.is_dir():
            raise ModelError(f"{path} is a folder; give the path of an .onnx model file")
        raw = path.read_bytes()
        try:
            model = onnx.load_model_from_string(raw)
        except Exception as exc:  # protobuf raises DecodeError and friends
            raise ModelError(f"{path} is not an ONNX model (cannot parse it: {exc})") from exc
        if not model.graph.node:
            raise ModelError(f"{path} is not an ONNX model with a graph (no nodes found)")
        external = path.parent
        if any(init.data_location == TensorProto.EXTERNAL for init in model.graph.initializer):
            onnx.load_external_data_for_model(model, str(external))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path or 'model'} is not a valid ONNX model: {first}") from exc
    working, notes = normalise(model)
    graph = _inspect(working, path, hashlib.sha256(raw).hexdigest())
    graph.normalisation = notes
    return graph


# Ops that TensorRT constant-folds when every input is a constant, and that exports put between
# a weight and its Conv/MatMul (paddle2onnx: Identity; torch: Cast, Reshape, Transpose).
FOLDABLE_OPS = {"Identity", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"}
# Ops whose output depends on the input's shape only, never its values.
SHAPE_OPS = {"Shape", "Size", "EyeLike"}


def normalise(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """The normalised working copy of ``model`` (see the module docstring) and what changed."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    graph = work.graph
    notes = []
    initializers = {init.name: init for init in graph.initializer}
    graph_inputs = {vi.name for vi in graph.input}

    constants, folded, kept = 0, 0, []
    for node in graph.node:
        value = _constant_value(node) if node.op_type == "Constant" else None
        if value is None and node.op_type in FOLDABLE_OPS and node.input and all(
                (not name) or (name in initializers and name not in graph_inputs) for name in node.input):
            value = _fold(node, [numpy_helper.to_array(initializers[n]) if n else None for n in node.input])
            folded += value is not None
        elif value is not None:
            constants += 1
        if value is None:
            kept.append(node)
            continue
        tensor = numpy_helper.from_array(np.ascontiguousarray(value), node.output[0])
        graph.initializer.append(tensor)
        initializers[tensor.name] = tensor
    if constants or folded:
        del graph.node[:]
        graph.node.extend(kept)
        used = names_used(graph) | {o.name for o in graph.output} | graph_inputs
        kept_inits = [init for init in graph.initializer if init.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept_inits)
        if work.ir_version < 4:  # initializers had to be graph inputs before IR 4
            work.ir_version = 4
        if constants:
            notes.append(f"{constants} Constant node(s) read as initializers")
        if folded:
            notes.append(f"{folded} {'/'.join(sorted(FOLDABLE_OPS))} node(s) of constants folded into the "
                         "constant they compute")

    dynamic = 0
    for vi in graph.input:
        if vi.name in initializers:
            continue
        for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value <= 0:
                dim.dim_param = f"{vi.name}_dim{axis}"
                dynamic += 1
    if dynamic:
        notes.append(f"{dynamic} input dimension(s) written as -1 or 0 read as dynamic")
    return work, notes


def names_used(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node reads, in ``graph`` and in the subgraphs of its If/Loop/Scan nodes
    (which may read the outer graph's initializers)."""
    used = set()
    for node in graph.node:
        used.update(name for name in node.input if name)
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else
                        attribute.graphs if attribute.type == onnx.AttributeProto.GRAPHS else []):
                used |= names_used(sub)
    return used


def _constant_value(node: onnx.NodeProto) -> Optional[np.ndarray]:
    """The value of a ``Constant`` node (None for a sparse one, which stays a node)."""
    for attribute in node.attribute:
        if attribute.name == "sparse_value":
            return None
        if attribute.name in ("value", "value_float", "value_floats", "value_int", "value_ints",
                              "value_string", "value_strings"):
            value = helper.get_attribute_value(attribute)
            if attribute.name == "value":
                return numpy_helper.to_array(value)
            if attribute.name.startswith("value_string"):
                return None
            dtype = np.float32 if "float" in attribute.name else np.int64
            return np.asarray(value, dtype=dtype)
    return None


def _fold(node: onnx.NodeProto, values: list) -> Optional[np.ndarray]:
    """Compute a FOLDABLE_OPS node on constant inputs with numpy (None: leave it as a node)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    x = values[0]
    try:
        if node.op_type == "Identity":
            return x
        if node.op_type == "Cast":
            return x.astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
        if node.op_type == "Transpose":
            return np.transpose(x, attrs.get("perm"))
        if node.op_type == "Flatten":
            axis = attrs.get("axis", 1) % max(x.ndim, 1)
            return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
        if node.op_type == "Reshape":
            shape = [int(v) for v in values[1]]
            if not attrs.get("allowzero", 0):
                shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
            return x.reshape(shape)
        axes = attrs.get("axes")
        if axes is None and len(values) > 1 and values[1] is not None:
            axes = [int(v) for v in values[1]]
        if node.op_type == "Squeeze":
            return np.squeeze(x, axis=tuple(axes)) if axes else np.squeeze(x)
        if node.op_type == "Unsqueeze":
            out = x
            for axis in sorted(a % (x.ndim + len(axes)) for a in axes):
                out = np.expand_dims(out, axis)
            return out
    except (KeyError, ValueError, TypeError, IndexError):
        return None
    return None


def upgrade_opset(model: onnx.ModelProto, target: int = 13) -> tuple[onnx.ModelProto, Optional[int]]:
    """``model`` at ONNX opset ``target`` or later, and the opset it had if it was converted.

    Per-channel QuantizeLinear/DequantizeLinear (an ``axis``) exist from opset 13, and TensorRT's
    parser wants them, so an opset 11/12 export is brought to 13 with ``onnx.version_converter``
    and checked. Node output names do not change. A conversion ONNX cannot do is an error that
    names the op that blocked it.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= target:
        return model, None
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, target)
    except Exception as exc:  # the converter raises RuntimeError/ValidationError with C++ text
        text = str(exc)
        blocked = next((word for word in text.replace("$", " ").split() if word in _op_types(model)), None)
        raise ModelError(
            f"cannot convert the model from opset {opset} to {target} for per-channel Q/DQ"
            + (f": ONNX has no conversion for its {blocked} nodes" if blocked else f" ({text.splitlines()[0]})")
            + "; export the model at opset 13 or later") from exc
    # The converter re-infers shapes and may leave graph outputs and value_info without one.
    originals = {vi.name: vi for vi in list(model.graph.input) + list(model.graph.output)}
    for field_ in (converted.graph.input, converted.graph.output):
        for vi in field_:
            if _shapeless(vi) and vi.name in originals:
                vi.CopyFrom(originals[vi.name])
    kept = [vi for vi in converted.graph.value_info if not _shapeless(vi)]
    del converted.graph.value_info[:]
    converted.graph.value_info.extend(kept)
    try:
        onnx.checker.check_model(converted)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"the model converted from opset {opset} to {target} fails onnx.checker: "
                         f"{str(exc).strip().splitlines()[0]}; export it at opset 13 or later") from exc
    return converted, opset


def _shapeless(vi: onnx.ValueInfoProto) -> bool:
    return vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape")


def _op_types(model: onnx.ModelProto) -> set:
    return {node.op_type for node in model.graph.node}


def _inspect(model: onnx.ModelProto, path: Optional[Path], digest: str) -> ModelGraph:
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    inputs = [_input_spec(vi) for vi in graph.input if vi.name not in initializers]
    types = _tensor_types(model)

    # A tensor is data (it depends on the inputs' values), shape-only (on their shapes: Shape,
    # Size and what is computed from those and constants) or constant (not reached from inputs).
    data = {spec.name for spec in inputs}
    shape_only: set[str] = set()
    activations = [spec.name for spec in inputs if _is_float(types.get(spec.name))]
    data_independent = []
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        names = [i for i in node.input if i]
        from_data = node.op_type not in SHAPE_OPS and any(i in data for i in names)
        from_shape = not from_data and any(i in data or i in shape_only for i in names)
        for output in node.output:
            if not output:
                continue
            if from_data:
                data.add(output)
                if _is_float(types.get(output)) or output not in types:
                    activations.append(output)
            elif from_shape:
                shape_only.add(output)
                if _is_float(types.get(output)):
                    data_independent.append(output)

    quantizable, seen = [], set()
    weights: list[WeightSpec] = []
    unquantizable: dict[str, str] = {}
    producers = {output: node.op_type for node in graph.node for output in node.output}
    for node in graph.node:
        if node.op_type in QUANTIZABLE_OPS:
            for name in node.input:
                if name in data and name not in seen:
                    seen.add(name)
                    quantizable.append(name)
        if node.op_type in WEIGHTED_OPS:
            spec, why = _weight_spec(node, initializers, data, producers)
            if spec is not None:
                weights.append(spec)
            elif why:
                unquantizable[node.name or node.output[0]] = why
    return ModelGraph(model, path, digest, inputs, activations, quantizable, weights, data_independent,
                      unquantizable)


def _is_float(elem_type: Optional[int]) -> bool:
    return elem_type in FLOAT_TYPES


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor ONNX shape inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # custom ops: fall back to what the file states
        inferred = model
    graph = inferred.graph
    types = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def static_dims(vi: onnx.ValueInfoProto) -> tuple:
    """A tensor's dimensions as declared: an int per fixed one, None per symbolic one."""
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim)


def _input_spec(vi: onnx.ValueInfoProto) -> InputSpec:
    tensor = vi.type.tensor_type
    dims = static_dims(vi)
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    except (KeyError, TypeError):
        dtype = np.dtype(np.float32)
    return InputSpec(vi.name, dims, dtype)


def _weight_spec(node: onnx.NodeProto, initializers: dict, data: set,
                 producers: dict) -> tuple[Optional[WeightSpec], str]:
    """The weight of a Conv/ConvTranspose/Gemm/MatMul and its output-channel axis, or why there is none.

    Conv: W is [C_out, C_in/g, k...] -> axis 0. ConvTranspose: W is [C_in, C_out/g, k...]
    -> axis 1. Gemm: B is [K, N] -> axis 1, or [N, K] with transB=1 -> axis 0.
    MatMul with a constant right operand [..., K, N]: axis -1 (its last axis); with a constant
    left operand [M, K] (``W @ x``): axis -2 (its rows). A node whose operands are both data
    (attention's Q @ K^T) has no weight, and that is no reason to report.
    """
    operands = list(node.input[:2])
    if len(operands) < 2:
        return None, ""
    if node.op_type == "MatMul" and operands[0] in initializers and operands[1] not in initializers:
        index = 0
    else:
        index = 1
    name = operands[index]
    if name not in initializers:
        if name in data:
            return None, ""
        if producers.get(name) == "DequantizeLinear":
            return None, f"its weight {name!r} is already quantized (it comes from a DequantizeLinear)"
        return None, (f"its weight {name!r} is computed in the graph by a {producers.get(name, '?')} node, "
                      "not a constant quantlab can quantize")
    weight = initializers[name]
    if weight.data_type not in FLOAT_TYPES:
        return None, f"its weight {name!r} is not floating point (already quantized?)"
    ndim = len(weight.dims)
    if node.op_type == "Conv":
        axis = 0
    elif node.op_type == "ConvTranspose":
        axis = 1
    elif node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        axis = 0 if trans_b else 1
    else:
        axis = ndim - 1 if index == 1 else ndim - 2
    if ndim == 0 or not 0 <= axis < ndim:
        return None, f"its weight {name!r} has shape {tuple(weight.dims)}, with no output-channel axis"
    return WeightSpec(weight.name, node.op_type, node.name or node.output[0], axis, index), ""


def add_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``names`` (so a runtime hands them back)."""
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    existing = {o.name for o in extended.graph.output}
    known = {vi.name: vi for vi in extended.graph.value_info}
    for name in names:
        if name in existing:
            continue
        info = onnx.ValueInfoProto()
        if name in known:
            info.CopyFrom(known[name])
        else:
            info.name = name
        extended.graph.output.append(info)
    return extended
