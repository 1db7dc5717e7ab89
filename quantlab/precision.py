"""Fallback layers in both TensorRT worlds: one list of layers kept out of INT8, three outputs.

``quantlab tune`` ends with a list of *fallback layers*: ONNX node names of Conv/ConvTranspose/
Gemm/MatMul nodes (the TensorRT ONNX parser names each such layer after its node) that stay in
higher precision. This module turns that list into what each TensorRT world needs, as pure
functions (the caller writes the files, atomically):

* TensorRT 10/11, explicit quantization: :func:`quantlab.qdq.export_qdq` with
  ``exclude_nodes=fallback`` leaves those layers out of INT8, and its typed remainder
  (:mod:`quantlab.qdq.remainder`, ``high_precision``) gives them - with every other op outside
  INT8 - fp16, or fp32 where measured ranges demand it: a TensorRT 11 network is strongly typed,
  so an fp32 op in the ONNX *runs* in fp32. :func:`float16_layers` is the same mechanism
  (:func:`quantlab.qdq.remainder.retype`) applied to the fallback layers alone of an fp32 Q/DQ
  model, for callers that want only those in float16.
* TensorRT <= 10, implicit quantization: :func:`trt_cache_without` drops the cache entries of
  the tensors around the fallback layers, and :func:`trtexec_command` writes the ``trtexec``
  line that pins those layers to fp16/fp32 with ``--layerPrecisions`` and
  ``--precisionConstraints=obey``.

What TensorRT does with these, from its sources and manuals (so the rules below can be checked):

* ``trtexec`` (``samples/common/sampleOptions.cpp``, TensorRT 8.6 to 10.16) splits the value of
  ``--layerPrecisions`` on every ``,`` (no escape exists), then splits each item on its *last*
  ``:``; a name may be wrapped in ``'...'``, and all single quotes are then removed. So names with
  ``:``, ``/``, spaces and ``=`` work as they are, names with ``,`` or ``'`` cannot be written at
  all, and a ``*`` in a name is a wildcard (``sampleUtils.cpp``: ``matchStringWithOneWildcard``)
  that would also match - and change the precision of - other layers.
* ``setPrecision`` (``NvInfer.h``) only *prefers* a precision unless
  ``BuilderFlag::kOBEY_PRECISION_CONSTRAINTS`` (``--precisionConstraints=obey``) is set, which
  makes the build fail instead of ignoring it; TensorRT 10.12 deprecated both in favour of strong
  typing, and TensorRT 11 removed them (and implicit INT8).
* With a calibration cache, a tensor without an entry has no dynamic range, and TensorRT falls
  back to a non-INT8 implementation for the layers that read or write it ("Missing scale and
  zero-point for tensor ..., expect fall back to non-int8 implementation for any layer consuming
  or producing given tensor"); Conv/Deconv/FullyConnected can still take INT8 input and write a
  float output (developer guide, layer-level control of precision).
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .errors import QuantlabError
from .qdq import QUANTIZED_OPS
from .qdq.remainder import FP16_MAX, retype

# What trtexec's --layerPrecisions can pin a fallback layer to (TensorRT <= 10); the Q/DQ model's
# remainder has its own set, quantlab.qdq.HIGH_PRECISIONS (bf16 too).
TRTEXEC_PRECISIONS = ("fp16", "fp32")

# Ops that may join a fallback layer's fp16 region (see fallback_region): elementwise, every
# float input and the output of one type T, and harmless in fp16 - piecewise linear or bounded
# (no Exp/Pow/Div/Softplus, which overflow fp16 on ordinary inputs; no reductions or
# normalisations, whose sums need fp32 accumulation). ONNX Runtime's CPU provider has fp16
# kernels for all of them (checked on 1.32, optimisations on and off), and TensorRT fuses such an
# activation into the convolution before it only when both run in one precision.
FP16_ELEMENTWISE_OPS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Add", "Sub", "Mul", "Max", "Min", "Neg", "Abs", "Identity",
})

# Ops that move INT8 values without rescaling them: TensorRT runs them on the input's scale (a
# pooling layer must have the same input and output range; shuffles are reformatting) and its
# explicit-quantization optimiser moves Q/DQ across them. A range on either side of one of these
# next to a fallback layer would quantize the fallback layer's own input or output.
DATA_MOVEMENT_OPS = frozenset({
    "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "MaxPool", "GlobalMaxPool",
    "Slice", "DepthToSpace", "SpaceToDepth",
})



def fallback_nodes(model: onnx.ModelProto, nodes: Iterable[str]) -> list[onnx.NodeProto]:
    """The float Conv/ConvTranspose/Gemm/MatMul nodes named in ``nodes``, in graph order.

    Every name must be a layer TensorRT would name so (one node of a compute-heavy op, not
    quantized): a typo would silently leave the layer the user meant to keep in INT8. Errors
    name the closest layer names.
    """
    if isinstance(nodes, str):
        raise QuantlabError(f"`nodes` must be a list of node names, not one string ({nodes[:60]!r})",
                            params=("nodes",))
    wanted = list(dict.fromkeys(nodes))
    by_name: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.name:
            by_name.setdefault(node.name, []).append(node)
    layers = [name for name, found in by_name.items() if found[0].op_type in QUANTIZED_OPS]
    producers = {output: node for node in model.graph.node for output in node.output if output}
    for name in wanted:
        if not isinstance(name, str):
            raise QuantlabError(f"`nodes` holds {name!r}, which is not a node name", params=("nodes",))
        found = by_name.get(name, [])
        if not found:
            close = difflib.get_close_matches(name, layers, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise QuantlabError(f"no node named {name!r} in the model (`nodes`){hint}", params=("nodes",))
        if len(found) > 1:
            raise QuantlabError(f"{len(found)} nodes are named {name!r}: TensorRT renames all but one, so the name "
                                "does not pick one layer; give the model's nodes unique names (`nodes`)",
                                params=("nodes",))
        node = found[0]
        if node.op_type not in QUANTIZED_OPS:
            raise QuantlabError(f"node {name!r} is a {node.op_type}, not a {'/'.join(QUANTIZED_OPS)} layer; only those "
                                "can be fallback layers (`nodes`)", params=("nodes",))
        for tensor in node.input:
            producer = producers.get(tensor)
            if producer is not None and producer.op_type == "DequantizeLinear":
                raise QuantlabError(
                    f"layer {name!r} is quantized in this model (its input {tensor!r} comes from the "
                    f"DequantizeLinear {producer.name or producer.output[0]!r}), not a float layer; export the Q/DQ "
                    "model with it in `exclude_nodes` (`nodes`)", params=("nodes", "exclude_nodes"))
    chosen = set(wanted)
    return [node for node in model.graph.node if node.name in chosen]


def fallback_region(model: onnx.ModelProto, nodes: Iterable[str], *, extend: bool = True) -> list[str]:
    """The nodes :func:`float16_layers` computes in float16: the fallback layers, and with
    ``extend`` the elementwise ops right after them (keys: node name, or first output if unnamed).

    An op of :data:`FP16_ELEMENTWISE_OPS` joins when *every* non-constant input comes from the
    region and its constants fit in fp16: the activation after a fallback Conv (which TensorRT
    fuses into it only in one precision), an Add of two fallback branches, a chain of such ops
    between two fallback layers. An op that also reads a tensor from outside (a residual Add whose
    skip comes from the INT8 part) stays fp32: widening fp16 into the INT8 part's float glue is a
    speed/accuracy trade the user did not ask for, and the fp32 op computes there exactly as in
    the fp32 fallback model. Ops are visited in graph order, which ONNX requires to be topological.
    """
    return [_key(model.graph.node[i]) for i in sorted(_region(model, fallback_nodes(model, nodes), extend))]


def _region(model: onnx.ModelProto, layers: list[onnx.NodeProto], extend: bool) -> set[int]:
    names = {id(node) for node in layers}
    region = {i for i, node in enumerate(model.graph.node) if id(node) in names}
    if not extend:
        return region
    initializers = {init.name: init for init in model.graph.initializer}
    produced: set[str] = {out for i in region for out in model.graph.node[i].output}
    for index, node in enumerate(model.graph.node):
        if index in region or node.op_type not in FP16_ELEMENTWISE_OPS or not _default_domain(node):
            continue
        data = [name for name in node.input if name and name not in initializers]
        constants = [initializers[name] for name in node.input if name in initializers]
        if data and all(name in produced for name in data) and all(_fits_fp16(c) for c in constants):
            region.add(index)
            produced.update(out for out in node.output if out)
    return region


def float16_layers(model: onnx.ModelProto, nodes: Iterable[str], *, extend: bool = True) -> onnx.ModelProto:
    """A copy of a Q/DQ model in which the fallback layers ``nodes`` compute in float16.

    ``model`` is what :func:`quantlab.qdq.export_qdq` returns with ``exclude_nodes=nodes`` and
    ``high_precision="fp32"``: the fallback layers read float32 tensors and float32 weights. In a
    strongly typed TensorRT 11 network they would run in fp32; here each one (with ``extend``, its fp16 region: see
    :func:`fallback_region`) gets

    * fp16 copies of its float32 initializers (weight, bias, Clip bounds), under new names, so a
      weight another node also reads is unchanged for it (the float32 original is dropped only
      when nothing reads it any more);
    * one Cast to float16 per float32 tensor entering the region (shared by its consumers);
    * a Cast back to float32 for each tensor leaving it (read outside, or a graph output). The
      float32 tensor keeps the original name, so graph outputs and the Q/DQ nodes after the region
      read what they read before, and the fp16 value inside is ``<name>_fp16``. Inside the region
      no Cast is inserted, so adjacent fallback layers (Conv -> Relu -> Conv) pass fp16 straight
      on, and a tensor with other readers outside is cast back once for them. A tensor only the
      region reads exists only as ``<name>_fp16`` (ask for that name to look at it).

    Graph input and output types do not change. The result passes ``onnx.checker`` (full check)
    and runs in ONNX Runtime (CPU has fp16 Conv, ConvTranspose, Gemm and MatMul). A weight that
    overflows fp16 is an error naming the layer: such a layer needs fp32. Activations are not
    checked here (this function has no ranges): a region tensor whose calibrated amax exceeds
    65504 would overflow in fp16, and the caller, who has the table, should pick fp32 for it.
    """
    layers = fallback_nodes(model, nodes)
    region = _region(model, layers, extend) if layers else set()
    return retype(model, dict.fromkeys(region, TensorProto.FLOAT16))


def trt_cache_without(activations: dict[str, float], model: onnx.ModelProto,
                      nodes: Iterable[str]) -> dict[str, float]:
    """The cache entries for a TensorRT <= 10 implicit-INT8 build with ``nodes`` in higher precision.

    ``activations`` maps tensor names to cache values (amax or scale: they are not read);
    ``model`` is the float model the cache is for, or the Q/DQ model
    :func:`quantlab.qdq.export_qdq` made from it with ``exclude_nodes=nodes`` (then its
    placement - e.g. ``residual`` skips - decides which tensors stay quantized). Kept entries keep
    their order and values; entries naming no tensor of the model are kept.

    Rule: drop the entry of every tensor that carries a fallback layer's input or output values -

    * the data inputs of the fallback layers, followed back through :data:`DATA_MOVEMENT_OPS`
      (the Flatten before a fallback Gemm, the MaxPool before that);
    * the outputs of their float region (:func:`fallback_region`: the layers and the elementwise
      ops that read only their outputs, such as a MatMul's bias Add and its activation), followed
      on through data movement -

    unless the tensor is

    * read by a quantized layer: a data input of a Conv/ConvTranspose/Gemm/MatMul that is not a
      fallback layer, or the input of a QuantizeLinear in a Q/DQ model. The Q/DQ model quantizes
      it too, and the INT8 layer needs its range (without it TensorRT runs that layer in float);
    * a graph input or output: trtexec reads the scales of network inputs/outputs built as INT8
      (``--inputIOFormats=int8:...``) from the cache and fails without them; with the default
      fp32 I/O the range is unused, so keeping it costs nothing.

    Why: ``--layerPrecisions=L:fp16 --precisionConstraints=obey`` fixes L's own precision, but
    implicit INT8 still follows the ranges around it. If L's input X keeps its range, the layer
    that writes X may write INT8 and L reads X dequantized - the very quantization error the
    fallback was meant to remove (the Q/DQ model gives L a float X); if the tensors after L keep
    theirs, the ops there run INT8 on L's re-quantized output. Without a range TensorRT falls back
    to a non-INT8 implementation for the layers that read or write the tensor, and the producer of
    X (a Conv with INT8 input) writes it in float. So the cache then quantizes next to the fallback
    layers exactly what the Q/DQ model quantizes: the inputs of quantized layers. Two limits of
    implicit INT8 remain: a tensor that L and a quantized layer both read has one range, and
    TensorRT may hand L the INT8 copy; and ops outside the region (a residual Add that also reads
    the INT8 part) keep their ranges and may run INT8, where explicit quantization runs them in
    float - a difference between the two worlds everywhere, not one of the fallback layers.
    """
    layers = fallback_nodes(model, nodes)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output if out}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(node)
    fallback = {id(node) for node in layers}
    keep = {vi.name for vi in graph.input} | {vi.name for vi in graph.output}
    for node in graph.node:
        if node.op_type in QUANTIZED_OPS and id(node) not in fallback:
            keep.update(name for name in node.input[:2] if name)
        elif node.op_type == "QuantizeLinear" and node.input:
            keep.add(node.input[0])

    touched: set[str] = set()
    upstream = [name for node in layers for name in node.input if name and name not in initializers]
    while upstream:  # inputs, back through data movement to where the values were computed
        name = upstream.pop()
        if name in touched or name in keep:
            continue
        touched.add(name)
        producer = producers.get(name)
        if producer is not None and producer.op_type in DATA_MOVEMENT_OPS and id(producer) not in fallback:
            upstream += [n for n in producer.input[:1] if n and n not in initializers]
    region = _region(model, layers, extend=True)
    downstream = [name for i in region for name in graph.node[i].output if name]
    while downstream:  # the region's outputs, on through data movement
        name = downstream.pop()
        if name in touched or name in keep:
            continue
        touched.add(name)
        for consumer in consumers.get(name, []):
            if consumer.op_type in DATA_MOVEMENT_OPS and consumer.input[0] == name:
                downstream += [n for n in consumer.output[:1] if n]
    return {name: value for name, value in activations.items() if name not in touched}


def trtexec_command(onnx_path: str, cache_path: str, nodes: Sequence[str], *, high_precision: str = "fp16") -> str:
    """The ``trtexec`` line that builds ``onnx_path`` in implicit INT8 (TensorRT <= 10) from the cache
    at ``cache_path`` with the fallback layers ``nodes`` in ``high_precision``; shell-quoted.

    ``fp16``: ``--int8 --fp16 ... --layerPrecisions=a:fp16,b:fp16 --precisionConstraints=obey``.
    TensorRT needs ``--fp16`` to allow any fp16 layer (under ``obey`` a layer pinned to fp16
    without it fails the build); it also lets the other non-INT8 layers (those the cache has no
    ranges for) pick fp16 where faster - the speed the user chose fp16 for.
    ``fp32``: ``--int8 ... --layerPrecisions=a:fp32,...`` with no ``--fp16``, so that the layers
    around the fallback layers that fall out of INT8 stay fp32 too, as in the Q/DQ model; TensorRT's
    fp32 still allows TF32 on Ampere and later unless ``--noTF32`` is added (its default, in
    TensorRT 11 as well). No fallback layers: a plain ``--int8 --calib=`` line.

    trtexec reads the cache through its own IInt8EntropyCalibrator2, and TensorRT ignores a cache
    whose header names another algorithm (then calibrating on trtexec's random inputs), so write
    the cache with an ``EntropyCalibration2`` header. Names are checked against trtexec's parser
    (see the module docstring): ``,`` and ``'`` cannot be written, and ``*`` would be a wildcard
    matching other layers; each is an error naming the layer.
    """
    if high_precision not in TRTEXEC_PRECISIONS:
        raise QuantlabError(f"`high_precision` {high_precision!r} is not one of {', '.join(TRTEXEC_PRECISIONS)}",
                            params=("high_precision",))
    if isinstance(nodes, str):
        raise QuantlabError(f"`nodes` must be a list of layer names, not one string ({nodes[:60]!r})",
                            params=("nodes",))
    names = list(dict.fromkeys(nodes))
    for name in names:
        if not isinstance(name, str) or not name:
            raise QuantlabError(f"`nodes` holds {name!r}, which is not a layer name", params=("nodes",))
        for char, why in ((",", "trtexec splits --layerPrecisions on every comma, with no escape"),
                          ("'", "trtexec strips single quotes from layer names"),
                          ("*", "trtexec reads '*' as a wildcard, which would also change other layers' precision")):
            if char in name:
                raise QuantlabError(f"layer {name!r} cannot be named on the trtexec command line: {why}; rename "
                                    "the node in the ONNX model (`nodes`)", params=("nodes",))
    args = ["trtexec", f"--onnx={onnx_path}", "--int8"]
    if names and high_precision == "fp16":
        args.append("--fp16")
    args.append(f"--calib={cache_path}")
    if names:
        args.append("--layerPrecisions=" + ",".join(f"{name}:{high_precision}" for name in names))
        args.append("--precisionConstraints=obey")
    return " ".join(shlex.quote(arg) for arg in args)


def _key(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def _fits_fp16(init: onnx.TensorProto) -> bool:
    """Can ``init`` be read in an fp16 op: float32 within fp16's range, fp16, or not a float (indices)?"""
    if init.data_type in (TensorProto.DOUBLE, TensorProto.BFLOAT16):
        return False
    if init.data_type != TensorProto.FLOAT:
        return True
    array = numpy_helper.to_array(init)
    finite = array[np.isfinite(array)]
    return finite.size == 0 or float(np.max(np.abs(finite))) <= FP16_MAX


