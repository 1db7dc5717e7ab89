"""Which onnx2torch converter runs an ONNX node, for the opsets quantlab writes.

onnx2torch registers converters per operator version and stops at opset 17 for many operators,
while quantlab's Q/DQ export writes opset 19 (fp16 scales need it). Most of the revisions since
then only admit more element types (int4, float8, bfloat16) and compute the same on the types
these graphs carry; for those the newest older converter is the right one. Where a revision
changed what a node means (reductions read their axes from an input from opset 18 on; Pad and
Resize gained modes), the node is rewritten into the older form when it uses none of the new
behaviour, and refused otherwise, with what it uses named.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import numpy as np
import onnx
from onnx import defs, helper

# Revisions that only add element types (ONNX's Changelog.md: opsets 19 and 21 for these).
TYPE_ONLY = frozenset({"Cast", "CastLike", "Constant", "ConstantOfShape", "Equal", "Identity", "Reshape", "Shape",
                       "Size", "Squeeze", "Unsqueeze", "Transpose", "Flatten"})
REDUCTIONS = frozenset({"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                        "ReduceMin", "ReduceProd", "ReduceSumSquare"})


class Unsupported(Exception):
    """A node no converter here runs; the message says why."""


def convert(node, graph, version: int):
    """(torch module, onnx mapping) of onnx2torch ``node`` at opset ``version`` of its domain."""
    from onnx2torch.node_converters import get_converter
    from onnx2torch.onnx_node import OnnxNode

    op, domain = node.operation_type, node.domain
    try:
        return get_converter(domain=domain, operation_type=op, version=version)(node, graph)
    except NotImplementedError as exc:
        if "Converter is not implemented" not in str(exc):
            if op in FALLBACKS:
                return FALLBACKS[op](node, graph, exc)
            raise Unsupported(str(exc)) from exc
    rewrite = _rewrites().get(op)
    if rewrite is None:
        raise Unsupported(f"no conversion of {op} at opset {version}")
    older = _older_converter(op, domain, version)
    if older is None:
        raise Unsupported(f"no conversion of {op} at opset {version} or before")
    proto = rewrite(node.proto, graph)
    return older(OnnxNode(proto, node.unique_name), graph)


def _older_converter(op: str, domain: str, version: int) -> Optional[Callable]:
    """The converter of the newest revision of ``op`` before the one in force at ``version``."""
    from onnx2torch.node_converters import get_converter

    try:
        since = defs.get_schema(op, max_inclusive_version=version, domain=domain).since_version
    except defs.SchemaError:
        return None
    while since > 1:
        try:
            return get_converter(domain=domain, operation_type=op, version=since - 1)
        except NotImplementedError:
            try:
                since = defs.get_schema(op, max_inclusive_version=since - 1, domain=domain).since_version
            except defs.SchemaError:
                return None
    return None


def _same(proto: onnx.NodeProto, graph) -> onnx.NodeProto:
    return proto


def _attribute(proto: onnx.NodeProto, name: str, default=None):
    for attribute in proto.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _constant(graph, name: str) -> np.ndarray:
    if name not in graph.initializers:
        raise Unsupported(f"its input {name} is computed, and the older form of the op needs it stored")
    return graph.initializers[name].to_numpy()


def _reduction(proto: onnx.NodeProto, graph) -> onnx.NodeProto:
    """Reduce*-18 (axes as an optional input) as Reduce*-13 (axes as an attribute)."""
    axes = _constant(graph, proto.input[1]) if len(proto.input) > 1 and proto.input[1] else None
    if (axes is None or axes.size == 0) and _attribute(proto, "noop_with_empty_axes", 0):
        raise Unsupported("noop_with_empty_axes=1 without axes")
    attributes = {a.name: helper.get_attribute_value(a) for a in proto.attribute if a.name != "noop_with_empty_axes"}
    if axes is not None and axes.size:
        attributes["axes"] = [int(a) for a in axes.reshape(-1)]
    return helper.make_node(proto.op_type, [proto.input[0]], list(proto.output), name=proto.name, **attributes)


def _pad(proto: onnx.NodeProto, graph) -> onnx.NodeProto:
    """Pad-18/19/21 without an ``axes`` input and without mode ``wrap`` is Pad-13."""
    if len(proto.input) > 3 and proto.input[3]:
        raise Unsupported("Pad with an axes input")
    mode = _attribute(proto, "mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) == "wrap":
        raise Unsupported("Pad mode 'wrap'")
    return proto


def _resize(proto: onnx.NodeProto, graph) -> onnx.NodeProto:
    """Resize-18/19 that uses none of antialias, axes, keep_aspect_ratio_policy or
    half_pixel_symmetric is Resize-13."""
    used = []
    if _attribute(proto, "antialias", 0):
        used.append("antialias")
    if _attribute(proto, "axes") is not None:
        used.append("axes")
    policy = _attribute(proto, "keep_aspect_ratio_policy", b"stretch")
    if (policy.decode() if isinstance(policy, bytes) else policy) != "stretch":
        used.append("keep_aspect_ratio_policy")
    mode = _attribute(proto, "coordinate_transformation_mode", b"half_pixel")
    if (mode.decode() if isinstance(mode, bytes) else mode) == "half_pixel_symmetric":
        used.append("half_pixel_symmetric")
    if used:
        raise Unsupported(f"Resize with {', '.join(used)}")
    return proto


def _split(proto: onnx.NodeProto, graph) -> onnx.NodeProto:
    """Split-18 with ``num_outputs`` splits as Split-13 without a ``split`` input does (equal parts)."""
    attributes = {a.name: helper.get_attribute_value(a) for a in proto.attribute if a.name != "num_outputs"}
    return helper.make_node("Split", list(proto.input), list(proto.output), name=proto.name, **attributes)


def _rewrites() -> dict[str, Callable]:
    table: dict[str, Callable] = {op: _same for op in TYPE_ONLY}
    table.update({op: _reduction for op in REDUCTIONS})
    table.update({"Pad": _pad, "Resize": _resize, "Split": _split})
    return table


def _batch_norm(node, graph, why):
    """A BatchNormalization whose input rank shape inference could not tell (onnx2torch picks
    BatchNorm1d/2d/3d by rank): onnx2torch's rank-free module, which reads the statistics as inputs."""
    from onnx2torch.node_converters.batch_norm import OnnxBatchNorm
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    if len(node.output_values) != 1:
        raise Unsupported(str(why))
    attributes = node.attributes
    module = OnnxBatchNorm(momentum=1 - attributes.get("momentum", 0.9), epsilon=attributes.get("epsilon", 1e-5))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def _same_max_pool(node, graph, why):
    """MaxPool with auto_pad SAME_UPPER/SAME_LOWER (Keras exports): the padding is computed from each
    run's input size, as ONNX defines it, and filled with -inf, which no window's maximum takes."""
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    attributes = node.attributes
    mode = attributes.get("auto_pad", "NOTSET")
    if mode not in ("SAME_UPPER", "SAME_LOWER") or attributes.get("ceil_mode", 0) or len(node.output_values) != 1:
        raise Unsupported(str(why))
    kernel = tuple(attributes["kernel_shape"])
    module = _same_pool_module()(kernel, tuple(attributes.get("strides", [1] * len(kernel))),
                                 tuple(attributes.get("dilations", [1] * len(kernel))), mode == "SAME_UPPER")
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


@functools.cache
def _same_pool_module():
    """The module class of :func:`_same_max_pool` (made once, when torch is first needed)."""
    import torch
    from torch import nn
    from torch.nn import functional

    class SamePool(nn.Module):
        def __init__(self, kernel, strides, dilations, upper):
            super().__init__()
            self.kernel, self.strides, self.dilations, self.upper = kernel, strides, dilations, upper

        def forward(self, x):
            pads = []
            for axis, (k, s, d) in enumerate(zip(self.kernel, self.strides, self.dilations)):
                size = x.shape[2 + axis]
                total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
                small = total // 2
                pads.append((small, total - small) if self.upper else (total - small, small))
            flat = [p for pair in reversed(pads) for p in pair]  # F.pad: last axis first
            x = functional.pad(x, flat, value=-torch.inf)
            pool = {1: functional.max_pool1d, 2: functional.max_pool2d, 3: functional.max_pool3d}[len(self.kernel)]
            return pool(x, self.kernel, self.strides, 0, self.dilations)

    return SamePool


FALLBACKS = {"BatchNormalization": _batch_norm, "MaxPool": _same_max_pool}
