"""What to measure and what to quantize in an ONNX model.

Pure graph inspection, no execution: which tensors are activations (and so get an INT8
range), which of them feed compute-heavy ops (the ``quantizable`` subset Q/DQ export needs),
and which initializers are weights with which per-channel axis.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
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
    """A weight initializer quantized per output channel along ``axis``."""

    name: str
    op_type: str
    node: str
    axis: int


@dataclass
class ModelGraph:
    """An ONNX model with the facts calibration needs."""

    model: onnx.ModelProto
    path: Optional[Path]
    sha256: str
    inputs: list[InputSpec]
    activations: list[str]  # graph inputs + node outputs that carry runtime float data
    quantizable: list[str]  # activations that are inputs of QUANTIZABLE_OPS
    weights: list[WeightSpec]

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
    return _inspect(model, path, hashlib.sha256(raw).hexdigest())


def _inspect(model: onnx.ModelProto, path: Optional[Path], digest: str) -> ModelGraph:
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    inputs = [_input_spec(vi) for vi in graph.input if vi.name not in initializers]
    types = _tensor_types(model)

    dynamic = {spec.name for spec in inputs}
    activations = [spec.name for spec in inputs if _is_float(types.get(spec.name))]
    for node in graph.node:
        if node.op_type == "Constant" or not any(i in dynamic for i in node.input if i):
            continue
        for output in node.output:
            if not output:
                continue
            dynamic.add(output)
            if _is_float(types.get(output)) or output not in types:
                activations.append(output)

    quantizable, seen = [], set()
    weights: list[WeightSpec] = []
    for node in graph.node:
        if node.op_type in QUANTIZABLE_OPS:
            for name in node.input:
                if name in dynamic and name not in seen:
                    seen.add(name)
                    quantizable.append(name)
        if node.op_type in WEIGHTED_OPS:
            spec = _weight_spec(node, initializers)
            if spec is not None:
                weights.append(spec)
    return ModelGraph(model, path, digest, inputs, activations, quantizable, weights)


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


def _input_spec(vi: onnx.ValueInfoProto) -> InputSpec:
    tensor = vi.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    except (KeyError, TypeError):
        dtype = np.dtype(np.float32)
    return InputSpec(vi.name, dims, dtype)


def _weight_spec(node: onnx.NodeProto, initializers: dict) -> Optional[WeightSpec]:
    """The weight of a Conv/ConvTranspose/Gemm/MatMul and its output-channel axis.

    Conv: W is [C_out, C_in/g, k...] -> axis 0. ConvTranspose: W is [C_in, C_out/g, k...]
    -> axis 1. Gemm: B is [K, N] -> axis 1, or [N, K] with transB=1 -> axis 0.
    MatMul with a constant right operand [..., K, N]: axis -1 (its last axis).
    """
    if len(node.input) < 2 or node.input[1] not in initializers:
        return None
    weight = initializers[node.input[1]]
    if weight.data_type not in FLOAT_TYPES:
        return None
    ndim = len(weight.dims)
    if node.op_type == "Conv":
        axis = 0
    elif node.op_type == "ConvTranspose":
        axis = 1
    elif node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        axis = 0 if trans_b else 1
    else:
        axis = ndim - 1
    if ndim == 0 or axis >= ndim:
        return None
    return WeightSpec(weight.name, node.op_type, node.name, axis)


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
