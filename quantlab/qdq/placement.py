"""Where Q/DQ pairs stand: one rule table, each rule with its source, each switchable.

TensorRT builds INT8 only between Q/DQ pairs, and only where it can fuse them into a kernel. The
rules below say where quantlab puts them; :data:`PLACEMENTS` names three sets of rules:

* ``compute``: the data inputs of Conv/ConvTranspose/Gemm/MatMul (what ``export-qdq`` always did);
* ``residual``: ``compute`` + the skip input of residual Adds;
* ``tensorrt`` (the default): every rule, as TensorRT fuses.

``--no-rule NAME`` switches one rule off. :func:`place` is pure graph work: which tensor gets a
pair, which node inputs read its DequantizeLinear, and which ranges its scale comes from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import onnx
from onnx import numpy_helper

from ..errors import QuantlabError

QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops that move INT8 values without rescaling them (TensorRT propagates Q/DQ across them: a DQ
# forward, a Q backward), with the input that carries the data.
COMMUTING_OPS = frozenset({
    "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "MaxPool", "GlobalMaxPool",
    "Slice", "Pad", "Resize", "DepthToSpace", "SpaceToDepth", "Split", "Gather",
})
POOLING_OPS = frozenset({"AveragePool", "GlobalAveragePool"})
SMALL_CHANNELS = 16  # ModelOpt's threshold for convs and for MatMul/Gemm N and K


@dataclass(frozen=True)
class Rule:
    """One placement rule: its name (for ``--no-rule``), the placements that use it, what it does and
    where the rule comes from."""

    name: str
    placements: tuple[str, ...]
    does: str
    source: str


RULES = (
    Rule("compute-inputs", ("compute", "residual", "tensorrt"),
         "Q/DQ on the data inputs of Conv, ConvTranspose, Gemm and MatMul (and per-channel DQ on their weights)",
         "TensorRT developer guide, explicit quantization, 'Q/DQ placement recommendations': quantize all "
         "inputs of weighted operations"),
    Rule("residual-skip", ("residual", "tensorrt"),
         "Q/DQ on the skip input of an Add whose other input comes from a Conv (through BatchNormalization), "
         "shared with the skip tensor's other quantized readers",
         "TensorRT developer guide: Conv+Add(+ReLU) fuses into one INT8 convolution only when the Add's other "
         "input is quantized; ModelOpt graph_utils.py (residual branch detection)"),
    Rule("small-layers", ("tensorrt",),
         "Conv with fewer than 16 input or output channels, and MatMul/Gemm with N or K below 16, stay in "
         "float, except where ModelOpt's INT8 exceptions hold (group 1: one channel count a multiple of 8, "
         "square kernel, first layer or the other count >= 16; grouped: output channels a multiple of 8, "
         "every kernel dimension >= 3)",
         "ModelOpt 0.47 onnx/quantization/graph_utils.py: find_nodes_from_convs_to_exclude, _MIN_MATMUL_DIM = 16 "
         "(INT8 kernels do not pay below these sizes)"),
    Rule("attention-in-float", ("tensorrt",),
         "a MatMul whose two operands are both activations (attention's Q @ K^T and scores @ V) stays in float",
         "ModelOpt 0.47 onnx/quantization/partitioning.py (MatMul -> Softmax -> MatMul left in float): TensorRT "
         "runs attention as a fused fp16 kernel, and INT8 scores from a Softmax lose the small probabilities"),
    Rule("commuting-share", ("tensorrt",),
         "a tensor that reaches several quantized inputs, directly or through ops that commute with "
         "quantization (MaxPool, Reshape, Transpose, Flatten, Slice, Pad, Resize ...), is quantized once, "
         "before them, with its own range",
         "TensorRT developer guide: Q/DQ propagation across commuting layers; one Q per tensor lets its "
         "producer write INT8 once"),
    Rule("concat-shared-scale", ("tensorrt",),
         "a Concat whose output feeds only quantized inputs gets one Q/DQ per input and one on its output, "
         "all with one scale (the largest range among its inputs, recorded in the report), so it runs in INT8",
         "TensorRT developer guide: concatenation stays in INT8 only when all inputs share a scale; "
         "ModelOpt graph_utils.py concat elimination (shared scale)"),
    Rule("pooling", ("tensorrt",),
         "an AveragePool/GlobalAveragePool whose output is quantized also gets a Q/DQ on its input",
         "TensorRT developer guide: AveragePool fuses with the DQ before it and the Q after it into an INT8 "
         "pooling"),
)
RULE_NAMES = tuple(rule.name for rule in RULES)
PLACEMENTS = ("compute", "residual", "tensorrt")


@dataclass
class Pair:
    """One activation Q/DQ pair: the tensor it quantizes, the node inputs that read its DQ (node
    index, input index), the tensors whose largest range sets its scale, and the rule that made it."""

    tensor: str
    consumers: list[tuple[int, int]]
    ranges_of: tuple[str, ...]
    rule: str


@dataclass
class Placement:
    """The pairs to insert, the layers left in float (node key -> why), the weighted layers whose
    weights are quantized, and what each rule did (for the report)."""

    pairs: list[Pair] = field(default_factory=list)
    float_layers: dict[str, str] = field(default_factory=dict)
    quantized_layers: list[int] = field(default_factory=list)
    applied: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def active_rules(placement: str, disabled: Iterable[str] = ()) -> tuple[str, ...]:
    """The rules a placement uses, less ``disabled`` (each must name a rule)."""
    if placement not in PLACEMENTS:
        raise QuantlabError(f"unknown Q/DQ placement {placement!r}; choose one of {', '.join(PLACEMENTS)}",
                            params=("placement",))
    for name in disabled:
        if name not in RULE_NAMES:
            raise QuantlabError(f"unknown placement rule {name!r}; the rules are {', '.join(RULE_NAMES)}",
                                params=("disabled_rules",))
    return tuple(rule.name for rule in RULES if placement in rule.placements and rule.name not in set(disabled))


def place(model: onnx.ModelProto, activations: set[str], amax: Mapping[str, float], rules: Iterable[str],
          excluded: set[int] = frozenset()) -> Placement:
    """Where the pairs go in ``model`` under ``rules``; ``excluded``: node indices kept in float."""
    rules = set(rules)
    graph = model.graph
    nodes = list(graph.node)
    initializers = {init.name: init for init in graph.initializer}
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    readers: dict[str, list[tuple[int, int]]] = {}
    for i, node in enumerate(nodes):
        for k, name in enumerate(node.input):
            if name:
                readers.setdefault(name, []).append((i, k))
    graph_outputs = {o.name for o in graph.output}
    result = Placement()
    floated = small_layers(model, initializers) if "small-layers" in rules else {}
    if "attention-in-float" in rules:
        for i, node in enumerate(nodes):
            if node.op_type == "MatMul" and len(node.input) >= 2 and all(n in activations for n in node.input[:2]):
                floated.setdefault(i, "MatMul of two activations (attention): TensorRT fuses attention in fp16")

    targets: dict[str, list[tuple[int, int]]] = {}
    for i, node in enumerate(nodes):
        if node.op_type not in QUANTIZED_OPS:
            continue
        key = node.name or node.output[0]
        if i in excluded:
            continue
        if i in floated:
            result.float_layers[key] = floated[i]
            continue
        result.quantized_layers.append(i)
        for k, name in enumerate(node.input[:2]):
            if name in activations:
                targets.setdefault(name, []).append((i, k))
    result.applied["compute-inputs"] = len(targets)

    if "residual-skip" in rules:
        count = 0
        for i, node in enumerate(nodes):
            if node.op_type != "Add" or i in excluded:
                continue
            inputs = [name for name in node.input[:2] if name in activations]
            from_conv = [name for name in inputs if _conv_source(name, nodes, producer)]
            if len(inputs) != 2 or not from_conv:
                continue
            # TensorRT fuses the Add into the later of the two producing convs; the other input is the skip.
            fused = max(from_conv, key=lambda name: producer[name])
            skip = inputs[0] if inputs[1] == fused else inputs[1]
            targets.setdefault(skip, []).append((i, list(node.input).index(skip)))
            count += 1
        result.applied["residual-skip"] = count

    # Every pair so far quantizes a tensor for its own readers, with its own range.
    pairs = {name: Pair(name, consumers, (name,), "compute-inputs") for name, consumers in targets.items()}

    if "commuting-share" in rules:
        shared = 0
        sources: dict[str, list[tuple[str, int]]] = {}  # source -> (chained target, first node of its chain)
        for name in list(pairs):
            source, first = _commuting_source(name, nodes, producer, readers, activations, graph_outputs)
            if source != name:
                sources.setdefault(source, []).append((name, first))
        for source, chained in sources.items():
            if len(chained) + (source in pairs) < 2 or source not in amax:
                continue
            pair = pairs.setdefault(source, Pair(source, [], (source,), "commuting-share"))
            for name, first in chained:
                pair.consumers.append((first, 0))
                del pairs[name]  # the chain now carries values on the source's INT8 grid
            pair.rule = "commuting-share"
            shared += 1
        result.applied["commuting-share"] = shared

    extra: list[Pair] = []
    if "concat-shared-scale" in rules:
        count = 0
        for name in list(pairs):
            p = producer.get(name)
            if p is None or nodes[p].op_type != "Concat" or name in graph_outputs:
                continue
            inputs = [n for n in nodes[p].input if n]
            if not all(n in activations and n in amax for n in inputs) or len(readers.get(name, [])) != len(
                    pairs[name].consumers):
                continue
            group = tuple(dict.fromkeys(inputs))
            for k, n in enumerate(nodes[p].input):
                if n:
                    extra.append(Pair(n, [(p, k)], group, "concat-shared-scale"))
            # The output keeps its pair, on the same scale: the identity on values that are already on
            # that grid, and the readers' input is a DequantizeLinear whether or not TensorRT carries
            # the INT8 values across the Concat.
            pairs[name].ranges_of, pairs[name].rule = group, "concat-shared-scale"
            count += 1
        result.applied["concat-shared-scale"] = count

    if "pooling" in rules:
        count = 0
        for name in list(pairs):
            source, _ = _commuting_source(name, nodes, producer, readers, activations, graph_outputs)
            p = producer.get(source)
            if p is None or nodes[p].op_type not in POOLING_OPS or p in excluded:
                continue
            x = nodes[p].input[0]
            if x in activations and x in amax and len(readers.get(name, [])) == len(pairs[name].consumers):
                extra.append(Pair(x, [(p, 0)], (x,), "pooling"))
                count += 1
        result.applied["pooling"] = count

    result.pairs = list(pairs.values()) + extra
    return result


def _conv_source(name: str, nodes: list, producer: Mapping[str, int]) -> bool:
    """Does ``name`` come from a Conv, directly or through a BatchNormalization (which TensorRT folds)?"""
    p = producer.get(name)
    if p is not None and nodes[p].op_type == "BatchNormalization":
        p = producer.get(nodes[p].input[0])
    return p is not None and nodes[p].op_type == "Conv"


def _commuting_source(name: str, nodes: list, producer: Mapping[str, int], readers: Mapping[str, list],
                      activations: set[str], graph_outputs: set[str]) -> tuple[str, int]:
    """Walk back from ``name`` through commuting ops (each intermediate tensor read by the chain alone):
    the source tensor and the first node of the chain (the one that reads the source; -1 if none)."""
    first = -1
    current = name
    while True:
        p = producer.get(current)
        if p is None or nodes[p].op_type not in COMMUTING_OPS or not nodes[p].input:
            break
        if nodes[p].op_type == "Resize" and attribute(nodes[p], "mode", b"nearest") != b"nearest":
            break
        if current != name and (len(readers.get(current, [])) != 1 or current in graph_outputs):
            break
        upstream = nodes[p].input[0]
        if upstream not in activations:
            break
        current, first = upstream, p
    return current, first


def attribute(node: onnx.NodeProto, name: str, default):
    """The value of ``node``'s attribute ``name``, or ``default`` where the node does not set it."""
    for found in node.attribute:
        if found.name == name:
            return onnx.helper.get_attribute_value(found)
    return default


def small_layers(model: onnx.ModelProto, initializers: Mapping[str, onnx.TensorProto]) -> dict[int, str]:
    """Node index -> why it stays in float, for the ``small-layers`` rule (weights' shapes decide)."""
    small = {}
    first_conv = next((i for i, n in enumerate(model.graph.node) if n.op_type == "Conv"), None)
    for i, node in enumerate(model.graph.node):
        if len(node.input) < 2 or node.input[1] not in initializers and node.input[0] not in initializers:
            continue
        if node.op_type == "Conv" and node.input[1] in initializers:
            shape = tuple(initializers[node.input[1]].dims)
            if len(shape) < 3:
                continue
            groups = attribute(node, "group", 1)
            c_out, c_in = shape[0], shape[1] * groups
            if min(c_in, c_out) >= SMALL_CHANNELS:
                continue
            kernel = shape[2:]
            if groups == 1:
                keep = ((c_in % 8 == 0 or c_out % 8 == 0) and len(set(kernel)) == 1
                        and (i == first_conv or max(c_in, c_out) >= SMALL_CHANNELS))
            else:
                keep = c_out % 8 == 0 and all(k >= 3 for k in kernel)
            if not keep:
                small[i] = f"Conv with {c_in} input and {c_out} output channels (< {SMALL_CHANNELS}): INT8 does not pay"
        elif node.op_type in ("Gemm", "MatMul"):
            weight = node.input[1] if node.input[1] in initializers else node.input[0]
            shape = tuple(numpy_helper.to_array(initializers[weight]).shape)
            if len(shape) < 2:
                continue
            if node.op_type == "Gemm" and attribute(node, "transB", 0):
                n, k = shape[0], shape[1]
            else:
                k, n = shape[-2], shape[-1]
            if min(n, k) < SMALL_CHANNELS:
                small[i] = f"{node.op_type} with N={n}, K={k} (< {SMALL_CHANNELS}): INT8 does not pay"
    return small
