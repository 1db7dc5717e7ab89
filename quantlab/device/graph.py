"""An ONNX graph run node by node in torch, on any torch device, with its tensors named.

The op kernels are onnx2torch's (its registry of converters turns each ONNX node into a torch
module); what is quantlab's is the schedule around them: nodes in the file's order, every
tensor under its ONNX name, each one dropped after its last reader (so memory is the largest set
of live tensors, not all of them), a ``tap`` that sees every measured tensor as it is made, and
the two Q/DQ ops, which onnx2torch does not convert, computed as ONNX Runtime computes them
(:mod:`quantlab.device.arithmetic`).

A graph that needs an op onnx2torch cannot convert is refused before anything runs, with the op
and its nodes named: the CPU path (ONNX Runtime) runs it, and quietly running part of a graph
elsewhere would change numbers.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError, QuantlabError
from . import arithmetic, converters

QDQ_OPS = {"QuantizeLinear": arithmetic.quantize_linear, "DequantizeLinear": arithmetic.dequantize_linear}
INSTALL_HINT = "pip install 'quantlab[device]' (torch, onnx2torch)"


def load_torch():
    """torch and onnx2torch, or a QuantlabError saying how to install them."""
    # onnx2torch's Slice indexes with a list, which torch warns about on every run: noise to a user
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                            module="onnx2torch")
    try:
        import onnx2torch  # noqa: F401  (its converters register on import)
        import torch
    except ImportError as exc:
        raise QuantlabError(f"`device` needs torch and onnx2torch ({exc.name} is missing): {INSTALL_HINT}, "
                            "or leave `device` out to run on the CPU with ONNX Runtime", params=("device",)) from exc
    return torch


def resolve_device(name: str):
    """The torch device called ``name`` (``cuda``, ``cuda:1``, ``cpu``), checked to exist."""
    torch = load_torch()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise QuantlabError(f"`device` must name a torch device such as cuda or cuda:1, got {name!r}",
                            params=("device",)) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise QuantlabError(f"`device` is {name!r} but torch sees no CUDA GPU here (torch {torch.__version__}); "
                                "leave `device` out to run on the CPU", params=("device",))
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise QuantlabError(f"`device` is {name!r} but torch sees {torch.cuda.device_count()} CUDA GPU(s)",
                                params=("device",))
        device = torch.device("cuda", index)
    elif device.type != "cpu":
        raise QuantlabError(f"`device` must be cuda[:N] or cpu, got {name!r}", params=("device",))
    return device


def faithful_float(torch) -> None:
    """FP32 as written: no TF32 in cuDNN convolutions or matrix products (torch allows it in
    convolutions by default, which rounds inputs to 10 mantissa bits), and deterministic
    convolution algorithms, so a sample's activations do not change from run to run."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def stored_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each tensor-valued Constant node of the main graph made an initializer (exporters
    such as paddle2onnx store weights that way; onnx2torch's Conv and Gemm read weights from initializers)."""
    constants = [n for n in model.graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
                 and len(n.attribute) == 1 and n.attribute[0].name == "value"]
    if not constants:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [n for n in out.graph.node if not (n.op_type == "Constant" and n.domain in ("", "ai.onnx")
                                               and len(n.attribute) == 1 and n.attribute[0].name == "value")]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    for node in constants:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        out.graph.initializer.append(tensor)
    return out


def fold_constant_dequantize(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each DequantizeLinear of initializers (a weight's) replaced by its float
    result, computed as ONNX Runtime computes it, so that onnx2torch sees float weights where its
    Conv and Gemm converters need initializers."""
    initializers = {i.name: i for i in model.graph.initializer}
    folded, keep = {}, []
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and all(not n or n in initializers for n in node.input):
            args = [numpy_helper.to_array(initializers[n]) if n else None for n in node.input]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            folded[node.output[0]] = arithmetic.dequantize_numpy(*args, axis=axis)
        else:
            keep.append(node)
    if not folded:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    out.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in folded.items())
    return out


class _Step:
    """One node: its torch module (or Q/DQ function), the names it reads and writes, and the
    names whose last reader it is."""

    __slots__ = ("name", "op", "call", "inputs", "keywords", "outputs", "frees")

    def __init__(self, name, op, call, inputs, keywords, outputs):
        self.name, self.op, self.call = name, op, call
        self.inputs, self.keywords, self.outputs = inputs, keywords, outputs
        self.frees: tuple[str, ...] = ()


class TorchGraph:
    """``model`` converted for ``device``: :meth:`run` maps named inputs to named tensors."""

    def __init__(self, model: onnx.ModelProto, device):
        torch = load_torch()
        from onnx2torch.onnx_graph import OnnxGraph, ValueType
        from onnx2torch.utils.safe_shape_inference import safe_shape_inference

        faithful_float(torch)
        self.device = device
        model = fold_constant_dequantize(stored_constants(model))
        try:
            model = safe_shape_inference(model)
        except Exception as exc:  # onnx's shape inference raises its own types
            raise ModelError(f"onnx shape inference failed on the model: {exc}") from exc
        initializer_names = {i.name for i in model.graph.initializer}
        inputs = [v for v in model.graph.input if v.name not in initializer_names]
        del model.graph.input[:]  # onnx2torch's graph must not see initializers listed as inputs
        model.graph.input.extend(inputs)
        graph = OnnxGraph(model.graph)
        self.input_names = [name for name in graph.input_values]
        self.output_names = list(graph.output_values)
        opsets = {o.domain: o.version for o in model.opset_import}
        self.constants: dict[str, object] = {}
        self.steps: list[_Step] = []
        missing: dict[str, list[str]] = {}
        for unique, node in graph.nodes.items():
            op = node.operation_type
            if node.domain in ("", "ai.onnx") and op in QDQ_OPS:
                self.steps.append(_Step(unique, op, _qdq(op, node.attributes), tuple(node.input_values), {},
                                        tuple(node.output_values)))
                self._take_constants(graph, node.input_values, ValueType)
                continue
            try:
                module, mapping = converters.convert(node, graph, opsets.get(node.domain, opsets.get("", 1)))
            except converters.Unsupported as exc:
                missing.setdefault(f"{op} ({exc})", []).append(node.name or unique)
                continue
            except (KeyError, ValueError, NotImplementedError) as exc:  # e.g. a Conv whose weights are computed
                missing.setdefault(f"{op} ({type(exc).__name__}: {exc})", []).append(node.name or unique)
                continue
            module = module.to(device).eval()
            names = list(mapping.inputs)
            keywords = {}
            if "" in names or None in names:  # skipped optional inputs become keywords, as onnx2torch does
                first = next(i for i, n in enumerate(names) if not n)
                params = tuple(inspect.signature(module.forward).parameters)[first:len(names)]
                keywords = {param: n for param, n in zip(params, names[first:]) if n}
                names = names[:first]
            self.steps.append(_Step(unique, op, module, tuple(names), keywords, tuple(mapping.outputs)))
            self._take_constants(graph, list(names) + list(keywords.values()), ValueType)
        if missing:
            listed = "; ".join(f"{op} at {', '.join(nodes[:3])}{' ...' if len(nodes) > 3 else ''}"
                               for op, nodes in missing.items())
            raise QuantlabError(f"torch cannot run this graph on `device` {device}: onnx2torch has no conversion for "
                                f"{listed}. Leave `device` out: the CPU path (ONNX Runtime) runs every op this "
                                "model uses", params=("device",))
        self._plan_frees()

    def _take_constants(self, graph, names, value_type) -> None:
        for name in names:
            if name and name not in self.constants and graph.value_type(name) == value_type.GRAPH_INITIALIZER:
                self.constants[name] = graph.initializers[name].to_torch().to(self.device)

    def _plan_frees(self) -> None:
        last: dict[str, int] = {}
        for index, step in enumerate(self.steps):
            for name in (*step.inputs, *step.keywords.values()):
                last[name] = index
        keep = set(self.output_names) | set(self.constants)
        for index, step in enumerate(self.steps):
            read = dict.fromkeys((*step.inputs, *step.keywords.values()))
            step.frees = tuple(n for n in read if last.get(n) == index and n not in keep)

    @property
    def tensor_names(self) -> list[str]:
        """Every tensor a run can make, inputs first, in the order they are made."""
        return self.input_names + [name for step in self.steps for name in step.outputs]

    def run(self, feeds: Mapping[str, object], keep: Sequence[str] = (),
            tap: Optional[Callable[[str, object], None]] = None) -> dict[str, object]:
        """The graph outputs and the tensors in ``keep`` for one run of ``feeds`` (torch tensors on
        the device); ``tap(name, tensor)`` is called on each input and each tensor made, as it is made."""
        torch = load_torch()
        wanted = set(self.output_names) | set(keep)
        env = dict(self.constants)
        with torch.inference_mode():
            for name in self.input_names:
                env[name] = feeds[name]
                if tap is not None:
                    tap(name, env[name])
            for step in self.steps:
                try:
                    args = [env[n] for n in step.inputs]
                    kwargs = {k: env[n] for k, n in step.keywords.items()}
                    result = step.call(*args, **kwargs)
                except KeyError as exc:
                    raise QuantlabError(f"node {step.name} reads {exc}, which no earlier node made") from exc
                except RuntimeError as exc:
                    raise QuantlabError(f"torch failed on node {step.name} ({step.op}) on {self.device}: "
                                        f"{str(exc).splitlines()[0]}") from exc
                results = (result,) if len(step.outputs) == 1 else tuple(result)
                for name, value in zip(step.outputs, results):
                    if not name:
                        continue
                    env[name] = value
                    if tap is not None:
                        tap(name, value)
                for name in step.frees:
                    if name not in wanted:
                        env.pop(name, None)
        return {name: env[name] for name in [*self.output_names, *keep]}


def _qdq(op: str, attributes: Mapping) -> Callable:
    function = QDQ_OPS[op]
    axis = int(attributes.get("axis", 1))
    saturate = int(attributes.get("saturate", 1))
    if op == "QuantizeLinear":
        def call(x, scale, zero_point=None):
            return function(x, scale, zero_point, axis=axis, saturate=saturate)
    else:
        def call(x, scale, zero_point=None):
            return function(x, scale, zero_point, axis=axis)
    return call


def to_numpy(value) -> np.ndarray:
    """A torch tensor (any device) as a host array."""
    return value.detach().cpu().numpy()
