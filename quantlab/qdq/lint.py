"""Lint any Q/DQ ONNX model (quantlab's, ModelOpt's, a PyTorch QAT export) for TensorRT 11.

A strongly typed TensorRT 11 engine does what the Q/DQ ONNX says: INT8 only where a pair lets it
fuse, every other op in its ONNX type. A misplaced pair does not fail the build; it costs a
reformat, breaks a fusion or leaves a layer in float, silently. :func:`lint` reads the graph the
way TensorRT's Q/DQ fusions do and says, per node, what will go wrong and what to do about it.

Severities: an **error** is something TensorRT cannot build, or builds into other arithmetic than
the model states (asymmetric or uint8 quantization, an int32 bias DequantizeLinear, a Q nothing
dequantizes, per-channel pairs below opset 13, a zero or non-finite scale); a **warning** is
something that builds but runs slower or less exact than it could (a pair before an op with no
INT8 kernel, a pair between a Conv and its activation that splits their fusion, a one-sided
residual, Concat inputs with different scales, per-tensor weights, fp32 compute). The exit code
follows ``quantlab cache lint``: 0 clean, 1 warnings only, 2 any error.

:data:`RULES` lists every rule by name; each is one function below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import QuantlabError
from .placement import COMMUTING_OPS, POOLING_OPS, QUANTIZED_OPS, attribute, small_layers
from .plan import (
    ACTIVATIONS,
    QDQ_OPS,
    GraphIndex,
    PrecisionPlan,
    node_key,
    plan_from_index,
)
from .remainder import FP16_SMALLEST_NORMAL

ERROR, WARNING = "error", "warning"
# ONNX Runtime's integer-operator ("QOperator") format: TensorRT parses none of it.
INTEGER_OPS = frozenset({
    "ConvInteger", "MatMulInteger", "QGemm", "QAttention", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QEmbedLayerNormalization", "QOrderedMatMul",
})
# Readers of a DequantizeLinear that TensorRT fuses or runs in INT8 (besides commuting ops).
INT8_READERS = frozenset(QUANTIZED_OPS) | {"Add", "Concat", "QuantizeLinear"} | POOLING_OPS | COMMUTING_OPS
SCALE_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16})
TOP_FP32 = 5  # the fp32-region warning names this many nodes


@dataclass(frozen=True)
class Finding:
    """One problem: ``error`` (TensorRT cannot build or fuse it as intended) or ``warning`` (slower
    or less exact than it could be), the rule that found it, the node it is about, what to do."""

    severity: str
    rule: str
    node: str
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LintResult:
    """The findings and what the model holds: opset, activation Q/DQ pairs, weight dequantizers,
    INT8 layers among the compute layers (Conv/ConvTranspose/Gemm/MatMul), the FLOP shares."""

    findings: list[Finding]
    opset: int
    qdq_pairs: int
    weight_dequantizers: int = 0
    int8_layers: int = 0
    compute_layers: int = 0
    shares: dict[str, float] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def exit_code(self) -> int:
        """0 clean, 1 warnings only, 2 any error (as ``quantlab cache lint``)."""
        return 2 if self.errors else 1 if self.warnings else 0

    def summary(self) -> str:
        """One line per finding, then the counts."""
        lines = [f"{f.severity}: [{f.rule}] {f.message}" for f in self.findings]
        lines.append(f"{len(self.errors)} error(s), {len(self.warnings)} warning(s); opset {self.opset}, "
                     f"{self.qdq_pairs} activation Q/DQ pairs, {self.int8_layers} of {self.compute_layers} "
                     "compute layers INT8")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"exit_code": self.exit_code, "errors": len(self.errors), "warnings": len(self.warnings),
                "opset": self.opset, "qdq_pairs": self.qdq_pairs, "weight_dequantizers": self.weight_dequantizers,
                "int8_layers": self.int8_layers, "compute_layers": self.compute_layers, "shares": self.shares,
                "findings": [f.to_dict() for f in self.findings]}


def lint(model: onnx.ModelProto, *, input_shapes: Optional[Mapping[str, Sequence[int]]] = None) -> LintResult:
    """Every finding of every rule in :data:`RULES` on ``model``. A float model, or one in ONNX
    Runtime's integer-operator format, is refused (QuantlabError): there is no Q/DQ to lint.
    ``input_shapes`` fixes the shapes FLOPs are counted at (see :func:`~quantlab.qdq.plan.node_flops`)."""
    _refuse_unsupported(model)
    index = GraphIndex.of(model)
    plan = plan_from_index(index, input_shapes=input_shapes)
    findings = [finding for check in RULES.values() for finding in check(index, plan)]
    nodes = index.nodes
    pairs = sum(1 for i, n in enumerate(nodes) if n.op_type == "QuantizeLinear"
                and any(nodes[r].op_type == "DequantizeLinear" for r in index.final_readers(n.output[0])))
    weights = sum(1 for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] not in index.data)
    layers = [n for n in plan.nodes if n.op_type in QUANTIZED_OPS]
    return LintResult(findings, index.opset, pairs, weights, sum(1 for n in layers if n.precision == "int8"),
                      len(layers), plan.shares())


def _refuse_unsupported(model: onnx.ModelProto) -> None:
    """Refuse what is not a Q/DQ model: ONNX Runtime's integer format, or a float model."""
    ops = [node.op_type for node in model.graph.node]
    integer = sorted({op for op in ops if op.startswith("QLinear") or op in INTEGER_OPS})
    if integer:
        raise QuantlabError(
            f"the model is in ONNX Runtime's integer-operator (QOperator) format ({', '.join(integer)}): "
            "TensorRT builds INT8 only from QuantizeLinear/DequantizeLinear pairs. Quantize the float model in "
            "Q/DQ format instead: ONNX Runtime's quantize_static(..., quant_format=QuantFormat.QDQ), or "
            "quantlab export-qdq MODEL --cache CACHE -o OUT.qdq.onnx")
    if not QDQ_OPS & set(ops):
        raise QuantlabError(
            "the model has no Q/DQ nodes (QuantizeLinear/DequantizeLinear): it is a float model, so there is "
            "nothing to lint. Quantize it first: quantlab calibrate MODEL -o MODEL.qdq.onnx, or "
            "quantlab export-qdq MODEL --cache CACHE -o OUT.qdq.onnx")


# ------------------------------------------------------------------------------------------ helpers


def _finding(severity: str, rule: str, node: onnx.NodeProto, message: str) -> Finding:
    return Finding(severity, rule, node_key(node), message)


def _qdq(index: GraphIndex, in_scope: bool = True) -> list[int]:
    """Indices of the Q/DQ nodes that are int8/uint8 (``in_scope``) or the others (int4, fp8 ...)."""
    return [i for i, n in enumerate(index.nodes) if n.op_type in QDQ_OPS and index.is_int8(i) == in_scope]


def _scale(index: GraphIndex, node: onnx.NodeProto) -> Optional[np.ndarray]:
    """The scale of a Q/DQ node as an array, None where it is not a constant."""
    return index.value(node.input[1]) if len(node.input) > 1 else None


def _conv_behind(index: GraphIndex, name: str) -> Optional[int]:
    """The Conv/ConvTranspose that writes ``name``, directly or through a BatchNormalization
    (which TensorRT folds into it); None if none."""
    p = index.producer.get(name)
    if p is not None and index.nodes[p].op_type == "BatchNormalization":
        p = index.producer.get(index.nodes[p].input[0])
    return p if p is not None and index.nodes[p].op_type in ("Conv", "ConvTranspose") else None


def _is_quantized(index: GraphIndex, name: str) -> bool:
    return index.dq_source(name) is not None


def _activation_after_conv_pair(index: GraphIndex, q: int) -> Optional[tuple[int, list[int]]]:
    """For a QuantizeLinear between a Conv and its activation: (the Conv, the activations that read
    the pair's DequantizeLinear); None otherwise."""
    node = index.nodes[q]
    conv = _conv_behind(index, node.input[0])
    if conv is None:
        return None
    acts = [r for dq in index.readers.get(node.output[0], ()) if index.nodes[dq].op_type == "DequantizeLinear"
            for r in index.readers.get(index.nodes[dq].output[0], ()) if index.nodes[r].op_type in ACTIVATIONS]
    return (conv, acts) if acts else None


def _mflops(flops: int) -> str:
    return f"{flops / 1e6:.2f} MFLOPs"


# ------------------------------------------------------------------------------------------ rules


def rule_opset(index: GraphIndex, plan: PrecisionPlan) -> list[Finding]:
    """``opset``: per-channel Q/DQ (an ``axis`` or a scale of several values) need opset 13."""
    if index.opset >= 13:
        return []
    offenders = [i for i, n in enumerate(index.nodes) if n.op_type in QDQ_OPS and _per_channel(index, n)]
    if not offenders:
        return []
    first = index.nodes[offenders[0]]
    return [_finding(ERROR, "opset", first,
                     f"{len(offenders)} per-channel Q/DQ node(s) (first: {node_key(first)!r}) in an opset "
                     f"{index.opset} model: per-channel QuantizeLinear/DequantizeLinear exist from opset 13, and "
                     "TensorRT's parser reads them only there; convert the model "
                     "(onnx.version_converter.convert_version(model, 13)) or re-export it at opset 13 or later")]


def _per_channel(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """Is a Q/DQ node per-channel: an ``axis``, or a constant scale of several values?"""
    if any(a.name == "axis" for a in node.attribute):
        return True
    scale = _scale(index, node)
    return scale is not None and scale.size > 1


def rule_dangling_q(index: GraphIndex, plan: PrecisionPlan) -> list[Finding]:
    """``dangling-q``: a QuantizeLinear whose output no DequantizeLinear reads (through commuting
    ops): TensorRT has no INT8 consumer to fuse it into. A Q written as a graph output is an int8
    network output, not a defect."""
    findings = []
    for node in index.nodes:
        if node.op_type != "QuantizeLinear" or node.output[0] in index.graph_outputs:
            continue
        readers = index.final_readers(node.output[0])
        if not any(index.nodes[r].op_type == "DequantizeLinear" for r in readers):
            what = ", ".join(sorted({index.nodes[r].op_type for r in readers})) or "nothing"
            findings.append(_finding(ERROR, "dangling-q", node,
                                     f"QuantizeLinear {node_key(node)!r} is read by {what}, never by a "
                                     "DequantizeLinear: TensorRT cannot fuse a quantization nothing dequantizes; "
                                     "add the DequantizeLinear that belongs to it or remove it"))
    return findings


def rule_dangling_dq(index: GraphIndex, plan: PrecisionPlan) -> list[Finding]:
    """``dangling-dq``: an activation DequantizeLinear whose input comes from no QuantizeLinear (a
    constant input is a weight, a graph input an int8 network input: both fine)."""
    findings = []
    for node in index.nodes:
        if node.op_type != "DequantizeLinear":
            continue
        source = node.input[0]
        if source not in index.data or source in index.graph_inputs:
            continue
        p = index.producer.get(source)
        while p is not None and index.passes_through(index.nodes[p]) and index.nodes[p].input:
            p = index.producer.get(index.nodes[p].input[0])
        if p is None or index.nodes[p].op_type != "QuantizeLinear":
            what = index.nodes[p].op_type if p is not None else "no node"
            findings.append(_finding(ERROR, "dangling-dq", node,
                                     f"DequantizeLinear {node_key(node)!r} dequantizes {source!r}, which comes "
                                     f"from {what}, not from a QuantizeLinear or a constant: TensorRT has no INT8 "
                                     "tensor to dequantize there; pair it with a QuantizeLinear of the same scale "
                                     "or remove it"))
    return findings


def rule_no_int8_kernel(index: GraphIndex, plan: PrecisionPlan) -> list[Finding]:
    """``no-int8-kernel``: an activation DequantizeLinear read by an op TensorRT has no INT8 kernel
    for and cannot fuse it into (Relu, Sigmoid, Softmax, LayerNormalization, Mul ...): the pair
    costs a reformat and buys nothing. A pair between a Conv and its activation is reported by
    ``qdq-between-conv-and-activation`` instead."""
    covered = set()
    for q in _qdq(index):
        hit = _activation_after_conv_pair(index, q) if index.nodes[q].op_type == "QuantizeLinear" else None
        if hit is not None:
            covered.update(hit[1])
    findings, seen = [], set()
    for i in _qdq(index):
        node = index.nodes[i]
        if node.op_type != "DequantizeLinear" or node.input[0] not in index.data:
            continue
        for r in index.final_readers(node.output[0]):
            reader = index.nodes[r]
            if reader.op_type in INT8_READERS or r in covered or r in seen:
                continue
            seen.add(r)
            findings.append(_finding(WARNING, "no-int8-kernel", reader,
                                     f"{reader.op_type} {node_key(reader)!r} reads DequantizeLinear "
                                     f"{node_key(node)!r}: TensorRT has no INT8 {reader.op_type} to fuse it into, "
                                     "so the pair costs a reformat and buys nothing; remove the Q/DQ pair before "
                                     "it (keep pairs on the inputs of Conv, Gemm, MatMul, residual Add, Concat "
                                     "and pooling)"))
    return findings


def rule_residual_one_side(index: GraphIndex, plan: PrecisionPlan) -> list[Finding]:
    """``residual-one-side``: an Add of a quantized Conv's output (through BatchNormalization) and a
    float tensor: TensorRT fuses the Add into the INT8 convolution only when the other input is
    quantized too."""
    findings = []
    for node in index.nodes:
        if node.op_type != "Add" or len(node.input) != 2 or not all(n in index.data for n in node.input):
            continue
        convs = {name: c for name in node.input if (c := _conv_behind(index, name)) is not None}
        if not convs:
            continue
        fused = max(convs, key=convs.get)  # TensorRT fuses the Add into the later conv
        conv = index.nodes[convs[fused]]
        skip = node.input[1] if node.input[0] == fused else node.input[0]
        if skip == fused or not _is_quantized(index, conv.input[0]) or _is_quantized(index, skip):
            continue
        findings.append(_finding(WARNING, "residual-one-side", node,
                                 f"Add {node_key(node)!r} adds INT8 Conv {node_key(conv)!r} to float tensor "
                                 f"{skip!r}: TensorRT cannot fuse the Add into the INT8 convolution, so it runs "
                                 f"apart, in float; put a Q/DQ pair on {skip!r} (quantlab export-qdq's residual "
                                 "and tensorrt placements do)"))
    return findings


def rule_concat_scales(index: GraphIndex, plan: PrecisionPlan) -> list[Finding]:
    """``concat-scales``: a Concat stays INT8 only when every input comes from a DequantizeLinear
    and all share one scale."""
    findings = []
    for node in index.nodes:
        if node.op_type != "Concat":
            continue
        data = [n for n in node.input if n and n in index.data]
        sources = {n: index.dq_source(n) for n in data}
        quantized = [n for n in data if sources[n] is not None]
        if not quantized:
            continue
        if len(quantized) < len(data):
            floats = [n for n in data if sources[n] is None]
            findings.append(_finding(WARNING, "concat-scales", node,
                                     f"Concat {node_key(node)!r} joins {len(quantized)} quantized and "
                                     f"{len(floats)} float input(s) (e.g. {floats[0]!r}): it cannot stay INT8; "
                                     "quantize every input with one shared scale, or none"))
            continue
        scales = [_scale(index, index.nodes[sources[n]]) for n in quantized]
        if any(s is None for s in scales):
            continue
        if any(s.shape != scales[0].shape or not np.array_equal(s, scales[0]) for s in scales[1:]):
            values = sorted({float(np.max(s)) for s in scales})
            findings.append(_finding(WARNING, "concat-scales", node,
                                     f"Concat {node_key(node)!r} reads DequantizeLinear nodes of {len(values)} "
                                     f"different scales ({values[0]:.3g} to {values[-1]:.3g}): it cannot stay INT8 "
                                     "and TensorRT requantizes its inputs; give all its inputs' Q/DQ one scale "
                                     "(the largest range: quantlab's concat-shared-scale rule)"))
    return findings


def rule_qdq_between_conv_and_activation(index: GraphIndex, plan: PrecisionPlan) -> list[Finding]:
    """``qdq-between-conv-and-activation``: Conv -> Q -> DQ -> Relu breaks TensorRT's Conv+activation
    fusion; the pair belongs after the activation."""
    findings = []
    for q in _qdq(index):
        if index.nodes[q].op_type != "QuantizeLinear":
            continue
        hit = _activation_after_conv_pair(index, q)
        if hit is None:
            continue
        conv, acts = hit
        act = index.nodes[acts[0]]
        findings.append(_finding(WARNING, "qdq-between-conv-and-activation", index.nodes[q],
                                 f"QuantizeLinear {node_key(index.nodes[q])!r} sits between Conv "
                                 f"{node_key(index.nodes[conv])!r} and its {act.op_type} {node_key(act)!r}: "
                                 "TensorRT cannot fuse the Conv with its activation across a Q/DQ pair; move the "
                                 f"pair after the {act.op_type} (quantize its output instead)"))
    return findings


def rule_weight_per_tensor(index: GraphIndex, plan: PrecisionPlan) -> list[Finding]:
    """``weight-per-tensor``: a Conv/ConvTranspose/Gemm/MatMul weight dequantized with one scale for
    the whole tensor; TensorRT wants one per output channel (per-tensor loses accuracy)."""
    findings = []
    for node in index.nodes:
        if node.op_type not in QUANTIZED_OPS or len(node.input) < 2:
            continue
        for name in node.input[:2]:
            dq = index.dq_source(name)
            if dq is None or not index.is_int8(dq) or index.nodes[dq].input[0] in index.data:
                continue
            scale = _scale(index, index.nodes[dq])
            if scale is not None and scale.size == 1 and _channels(index, index.nodes[dq], node) != 1:
                findings.append(_finding(WARNING, "weight-per-tensor", node,
                                         f"{node.op_type} {node_key(node)!r}: its weight DequantizeLinear "
                                         f"{node_key(index.nodes[dq])!r} has one scale for the whole tensor; "
                                         "TensorRT wants per-output-channel weight scales (less rounding error "
                                         "at the same speed): re-quantize the weights per channel (quantlab "
                                         "export-qdq does; ONNX Runtime: quantize_static(..., per_channel=True))"))
    return findings


def _channels(index: GraphIndex, dq: onnx.NodeProto, layer: onnx.NodeProto) -> Optional[int]:
    """Output channels of the weight ``dq`` dequantizes for ``layer`` (None where unknown): a weight
    with one output channel (YOLOv8's DFL conv) has one scale either way."""
    weight = index.value(dq.input[0])
    if weight is None or weight.ndim < 2:
        return None
    if layer.op_type == "Conv":
        return int(weight.shape[0])
    if layer.op_type == "ConvTranspose":
        return int(weight.shape[1]) * int(attribute(layer, "group", 1))
    if layer.op_type == "Gemm":
        return int(weight.shape[0] if attribute(layer, "transB", 0) else weight.shape[1])
    return int(weight.shape[-1])


def rule_zero_point(index: GraphIndex, plan: PrecisionPlan) -> list[Finding]:
    """``zero-point``: TensorRT quantizes symmetrically to int8 only: a uint8 Q/DQ or a non-zero zero
    point cannot be built as written. A pair is reported once, on its QuantizeLinear."""
    findings = []
    for i in _qdq(index):
        node = index.nodes[i]
        if _same_zero_point_as_its_quantize(index, node):
            continue
        label = f"{node.op_type} {node_key(node)!r}"
        if index.quantized_type(node) == TensorProto.UINT8:
            findings.append(_finding(ERROR, "zero-point", node,
                                     f"{label} quantizes to uint8 (its zero point's type, or the default without "
                                     "one): TensorRT supports int8 with zero point 0 only; re-quantize "
                                     "symmetrically to int8 (ONNX Runtime: activation_type=QuantType.QInt8, "
                                     "extra_options={'ActivationSymmetric': True})"))
            continue
        zero = index.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is not None and np.any(zero != 0):
            findings.append(_finding(ERROR, "zero-point", node,
                                     f"{label} has zero point {int(np.ravel(zero)[np.flatnonzero(zero)[0]])}: "
                                     "TensorRT supports symmetric quantization only (zero point 0); re-quantize "
                                     "symmetrically (ONNX Runtime: extra_options={'ActivationSymmetric': True, "
                                     "'WeightSymmetric': True})"))
    return findings


def _same_zero_point_as_its_quantize(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """Is ``node`` a DequantizeLinear right after a QuantizeLinear of the same zero point (whose
    finding then covers the pair)?"""
    p = index.producer.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
    if p is None or index.nodes[p].op_type != "QuantizeLinear":
        return False
    q = index.nodes[p]
    mine, theirs = (n.input[2] if len(n.input) > 2 else "" for n in (node, q))
    if mine == theirs:
        return True
    a, b = index.value(mine), index.value(theirs)
    return a is not None and b is not None and a.dtype == b.dtype and np.array_equal(a, b)


def rule_int32_bias(index: GraphIndex, plan: PrecisionPlan) -> list[Finding]:
    """``int32-bias``: an int32 DequantizeLinear (ONNX Runtime's quantized Conv/Gemm bias): TensorRT's
    parser rejects it (only activation types may enter a DequantizeLinear; onnx-tensorrt #850)."""
    found = [i for i, n in enumerate(index.nodes) if n.op_type == "DequantizeLinear"
             and index.quantized_type(n) == TensorProto.INT32]
    if not found:
        return []
    first = index.nodes[found[0]]
    return [_finding(ERROR, "int32-bias", first,
                     f"{len(found)} DequantizeLinear node(s) dequantize int32 tensors (first: {node_key(first)!r}), "
                     "ONNX Runtime's quantized biases: TensorRT's parser rejects a DequantizeLinear of int32 and "
                     "quantizes biases itself; keep biases in float (ONNX Runtime: quantize_static(..., "
                     "extra_options={'QuantizeBias': False}))")]


def rule_scale_type(index: GraphIndex, plan: PrecisionPlan) -> list[Finding]:
    """``scale-type``: a Q/DQ scale must be float32, float16 or bfloat16 (TensorRT has no float64)."""
    findings = []
    for i in _qdq(index):
        node = index.nodes[i]
        if len(node.input) < 2:
            continue
        kind = index.types.get(node.input[1])
        if kind is not None and kind not in SCALE_TYPES:
            name = TensorProto.DataType.Name(kind).lower()
            findings.append(_finding(ERROR, "scale-type", node,
                                     f"{node.op_type} {node_key(node)!r} has a {name} scale: TensorRT takes "
                                     "float32, float16 or bfloat16 scales; store the scale as float32"))
    return findings


def rule_scale_value(index: GraphIndex, plan: PrecisionPlan) -> list[Finding]:
    """``scale-value``: a zero, negative or non-finite scale is an error (TensorRT refuses it); an fp16
    scale whose typical (median) value is below fp16's smallest normal (6.1e-05) is a warning: fp16
    keeps fewer significant bits there. Single subnormal channels (dead filters) do not count."""
    findings = []
    for i in _qdq(index):
        node = index.nodes[i]
        scale = _scale(index, node)
        if scale is None or not scale.size:
            continue
        values = np.asarray(scale, np.float64).ravel()
        label = f"{node.op_type} {node_key(node)!r}"
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            bad = values[~np.isfinite(values) | (values <= 0)][0]
            findings.append(_finding(ERROR, "scale-value", node,
                                     f"{label} has scale {bad:g}: TensorRT needs finite, positive scales; "
                                     "recalibrate the tensor (an all-zero tensor needs no Q/DQ) or give the "
                                     "channel the smallest positive scale"))
        elif scale.dtype == np.float16 and float(np.median(values)) < FP16_SMALLEST_NORMAL:
            findings.append(_finding(WARNING, "scale-value", node,
                                     f"{label} has float16 scales around {float(np.median(values)):.3g}, below "
                                     f"fp16's smallest normal {FP16_SMALLEST_NORMAL:.3g}: fp16 stores them with "
                                     "fewer significant bits; store this scale as float32"))
    return findings


def rule_out_of_scope(index: GraphIndex, plan: PrecisionPlan) -> list[Finding]:
    """``out-of-scope``: int4, fp8 and other non-int8 Q/DQ (int32 biases aside: ``int32-bias``) are
    noted once and otherwise not linted."""
    others = [i for i in _qdq(index, in_scope=False) if index.quantized_type(index.nodes[i]) != TensorProto.INT32]
    if not others:
        return []
    kinds = sorted({TensorProto.DataType.Name(index.quantized_type(index.nodes[i])).lower() for i in others})
    first = index.nodes[others[0]]
    return [_finding(WARNING, "out-of-scope", first,
                     f"{len(others)} Q/DQ node(s) quantize to {', '.join(kinds)} (first: {node_key(first)!r}): out "
                     "of scope, quantlab lints INT8 Q/DQ; these nodes were not checked")]


def rule_fp32_region(index: GraphIndex, plan: PrecisionPlan) -> list[Finding]:
    """``fp32-region``: compute ops typed float32 run in fp32 on TensorRT 11 (one summary warning,
    with the largest by FLOPs)."""
    fp32 = [n for n in plan.nodes if n.precision == "fp32"]
    if not fp32:
        return []
    total = plan.total_flops
    flops = sum(n.flops for n in fp32)
    share = f"{100 * flops / total:.1f} % of FLOPs" if total else "FLOPs unknown"
    top = sorted(fp32, key=lambda n: -n.flops)[:TOP_FP32]
    named = ", ".join(f"{n.node!r} ({n.op_type}, {_mflops(n.flops)})" for n in top)
    more = f" and {len(fp32) - len(top)} more" if len(fp32) > len(top) else ""
    return [Finding(WARNING, "fp32-region", top[0].node,
                    f"{len(fp32)} compute op(s) are typed float32 and will run in fp32 on TensorRT 11 ({share}): "
                    f"{named}{more}; TensorRT 11 runs every op in its ONNX type, so type them fp16 or bf16 "
                    "(quantlab export-qdq does, from measured ranges: --high-precision fp16, the default) or "
                    "convert the float remainder before building")]


def rule_unquantized_layer(index: GraphIndex, plan: PrecisionPlan) -> list[Finding]:
    """``unquantized-layer``: a Conv/ConvTranspose/Gemm/MatMul whose data input is not dequantized runs
    in float. Layers float is right for are left out: those too small for INT8 to pay (ModelOpt's
    rule, :mod:`~quantlab.qdq.placement`'s ``small-layers``) and attention's MatMuls of two float
    activations (``attention-in-float``)."""
    small = _small(index)
    flops = {n.node: n for n in plan.nodes}
    total = plan.total_flops
    findings = []
    for i, node in enumerate(index.nodes):
        if node.op_type not in QUANTIZED_OPS or i in small:
            continue
        data = [n for n in node.input[:2] if n and n in index.data]
        floats = [n for n in data if not _is_quantized(index, n)]
        if not data or not floats or (node.op_type == "MatMul" and len(floats) == 2):
            continue
        entry = flops.get(node_key(node))
        cost = (f"{_mflops(entry.flops)}, {100 * entry.flops / total:.1f} % of FLOPs" if entry and total
                else "FLOPs unknown")
        findings.append(_finding(WARNING, "unquantized-layer", node,
                                 f"{node.op_type} {node_key(node)!r} reads float input {floats[0]!r} (no "
                                 f"DequantizeLinear): it runs in {entry.precision if entry else 'float'} ({cost}); "
                                 "put a Q/DQ pair on its input (and per-channel weights) to run it in INT8, or "
                                 "leave it in float on purpose"))
    return findings


def _small(index: GraphIndex) -> dict[int, str]:
    """Layers ModelOpt's size rule keeps in float; a weight behind a DequantizeLinear counts by the
    shape of the int8 initializer it dequantizes."""
    weights = dict(index.initializers)
    for node in index.nodes:
        if node.op_type in QUANTIZED_OPS:
            for name in node.input[:2]:
                p = index.producer.get(name)
                if p is not None and index.nodes[p].op_type == "DequantizeLinear" and \
                        index.nodes[p].input[0] in index.initializers:
                    weights[name] = index.initializers[index.nodes[p].input[0]]
    return small_layers(index.model, weights)


RULES: dict[str, Callable[[GraphIndex, PrecisionPlan], Sequence[Finding]]] = {
    "opset": rule_opset,
    "dangling-q": rule_dangling_q,
    "dangling-dq": rule_dangling_dq,
    "no-int8-kernel": rule_no_int8_kernel,
    "residual-one-side": rule_residual_one_side,
    "concat-scales": rule_concat_scales,
    "qdq-between-conv-and-activation": rule_qdq_between_conv_and_activation,
    "weight-per-tensor": rule_weight_per_tensor,
    "zero-point": rule_zero_point,
    "scale-type": rule_scale_type,
    "scale-value": rule_scale_value,
    "int32-bias": rule_int32_bias,
    "out-of-scope": rule_out_of_scope,
    "fp32-region": rule_fp32_region,
    "unquantized-layer": rule_unquantized_layer,
}
