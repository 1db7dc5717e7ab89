"""Bias correction: fold the mean error INT8 puts on each output channel back into the float bias.

Quantizing a layer's weights and inputs shifts the *expectation* of its outputs, not only their
noise: a ReLU6 input clipped at its range, weights rounded one way more often than the other in
a small depthwise kernel. That shift is a per-channel constant, so it can be measured on the
calibration samples and subtracted from the layer's float bias, and the corrected model is still
an ordinary Q/DQ model (the bias stays float: TensorRT adds it in the INT8 kernel's epilogue).
NNCF applies a fast variant by default; ModelOpt's ONNX path has none.

How (:func:`correct_biases`): the graph runs node by node on an FP32 and an INT8 path side by side
(:mod:`quantlab.interpreter`, the arithmetic of the exported Q/DQ model). At each quantized
Conv/ConvTranspose/Gemm, in graph order, with every correction upstream already in place on the
INT8 path, the correction is the mean over samples and positions of INT8 output minus FP32
output, per output channel (summed in float64). Layers without a bias get one (said so in the
record); a MatMul has no bias input and is left alone, as are layers whose weight or bias is shared
with another layer (one bias cannot correct two layers), layers whose input has no range, and
corrections that would overflow fp16 in the typed remainder.

A TensorRT calibration cache holds ranges only: it cannot carry a corrected bias. The corrections
live in the table (``biases``) and in every Q/DQ model exported from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from onnx import numpy_helper

from .errors import QuantlabError
from .graph import ModelGraph
from .interpreter import NodeSessions, TwoPathRun
from .qdq import FP16_MAX, QUANTIZED_OPS
from .workload import DataSpec, sample_inputs

CORRECTED_OPS = ("Conv", "ConvTranspose", "Gemm")
DEFAULT_SAMPLES = 32


@dataclass(frozen=True)
class BiasCorrection:
    """Bias correction's settings: the calibration ``samples`` the mean errors are measured on (the
    first of the selection; both paths of the whole graph are held for them), ONNX Runtime
    ``providers``."""

    samples: int = DEFAULT_SAMPLES
    providers: Optional[tuple] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.samples, int) and self.samples > 0):
            raise QuantlabError(f"bias correction: samples must be a positive integer, got {self.samples!r}",
                                params=("samples",))


@dataclass
class BiasCorrections:
    """What bias correction did: the corrected float bias per layer (node name -> float32 array),
    each correction's size, and the layers it left alone with the reason."""

    biases: dict[str, np.ndarray] = field(default_factory=dict)
    shifts: dict[str, dict] = field(default_factory=dict)  # node -> {"norm", "relative", "added"}
    skipped: dict[str, str] = field(default_factory=dict)
    samples: int = 0
    note: str = ""  # why fewer samples than asked, if so

    def to_dict(self) -> dict:
        return {"samples": self.samples, "corrected": len(self.biases), "layers": self.shifts,
                "skipped": self.skipped, **({"samples_note": self.note} if self.note else {}),
                "note": "a TensorRT calibration cache cannot carry corrected biases: deploy the Q/DQ model"}


def correct_biases(graph: ModelGraph, amax: dict[str, float], data: DataSpec,
                   options: BiasCorrection = BiasCorrection(), layers: Optional[set[str]] = None,
                   progress: bool = False) -> BiasCorrections:
    """The bias corrections of ``graph`` quantized with the activation ranges ``amax`` (INT8 weights
    per channel, as exported), measured on the first ``options.samples`` samples of ``data``.
    ``layers``: the layers the exported model quantizes (:func:`quantlab.qdq.quantized_layers`);
    None: every Conv/ConvTranspose/Gemm/MatMul whose inputs have ranges."""
    fixed = next((spec.fixed_batch for spec in graph.inputs if spec.fixed_batch), None)
    # Both paths of the whole graph run on all the samples at once; a graph whose batch is fixed (its
    # Reshapes name the batch) takes no more than that many.
    samples = min(options.samples, fixed) if fixed else options.samples
    inputs = sample_inputs(graph, data, samples)
    sessions = NodeSessions(graph, options.providers)
    nodes = sessions.nodes
    keys = [node.name or node.output[0] for node in nodes]
    if layers is None:
        layers = {key for key, node in zip(keys, nodes) if node.op_type in QUANTIZED_OPS}
    eligible, result, added = _eligible_layers(graph, sessions, amax, layers)
    result.samples = len(next(iter(inputs.values())))
    if fixed and fixed < options.samples:
        result.note = (f"the model's batch is fixed at {fixed}: the mean errors are measured on {result.samples} "
                       f"sample(s) (every position of each), not {options.samples}")

    def correct(position: int, got: np.ndarray, reference: np.ndarray) -> np.ndarray:
        key = keys[position]
        if key not in eligible:
            return got
        shift = _mean_error(got, reference)
        bias, beta = eligible[key]
        corrected = (bias - shift / beta).astype(np.float32)
        if np.abs(corrected).max(initial=0.0) > FP16_MAX:
            result.skipped[key] = (f"the corrected bias would reach {np.abs(corrected).max():.4g}, beyond fp16's "
                                   f"{FP16_MAX:g} (the typed remainder could not hold it)")
            return got
        result.biases[key] = corrected
        norm = float(np.linalg.norm(shift))
        base = float(np.linalg.norm(bias.astype(np.float64)))
        result.shifts[key] = {"norm": norm, "relative": norm / base if base else None, "added": key in added}
        return (got - _channel_shaped(shift, got.ndim)).astype(got.dtype)

    positions = frozenset(i for i, key in enumerate(keys) if key in layers and nodes[i].op_type in QUANTIZED_OPS)
    TwoPathRun(sessions, {}, {name: float(value) for name, value in amax.items()}, layers=positions,
               correct=correct, label="bias correction").run(inputs, progress=progress)
    return result


def _eligible_layers(graph: ModelGraph, sessions: NodeSessions, amax: dict[str, float], layers: set[str]):
    """The layers bias correction may change -> (their float bias, Gemm's beta); a result holding the
    others' reasons; the layers that had no bias."""
    result = BiasCorrections()
    added: set[str] = set()
    initializers = sessions.initializers
    uses: dict[str, list[str]] = {}
    for node in sessions.nodes:
        for name in dict.fromkeys(node.input):
            uses.setdefault(name, []).append(node.name or node.output[0])
    specs = {spec.node: spec for spec in graph.weights}
    eligible = {}
    for node in sessions.nodes:
        key = node.name or node.output[0]
        if node.op_type == "MatMul" and key in specs:
            result.skipped[key] = "a MatMul has no bias input (an Add node would change what TensorRT fuses)"
            continue
        if node.op_type not in CORRECTED_OPS or key not in specs:
            continue
        spec = specs[key]
        if key not in layers:
            result.skipped[key] = "the Q/DQ placement leaves it in float"
            continue
        if node.input[0] not in amax:
            result.skipped[key] = "its input has no range: the layer stays in float"
            continue
        shared = [other for other in uses.get(spec.name, []) if other != key]
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias_name:
            shared += [other for other in uses.get(bias_name, []) if other != key]
        if shared:
            result.skipped[key] = (f"its weight or bias is shared with {shared[0]!r}: one bias cannot correct two "
                                   "layers")
            continue
        beta = 1.0
        if node.op_type == "Gemm":
            beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0) or 0.0
            if beta == 0:
                result.skipped[key] = "Gemm's beta is 0: its bias input is ignored"
                continue
        channels = _output_channels(node, numpy_helper.to_array(initializers[spec.name]))
        if bias_name is None:
            bias = np.zeros(channels, np.float32)
            added.add(key)
        elif bias_name not in initializers:
            result.skipped[key] = "its bias is computed at run time, not a constant"
            continue
        else:
            bias = numpy_helper.to_array(initializers[bias_name]).astype(np.float32)
            if bias.size != channels:
                result.skipped[key] = f"its bias has shape {list(bias.shape)}, not one value per output channel"
                continue
            bias = bias.reshape(channels)
        eligible[key] = (bias, beta)
    return eligible, result, added


def _output_channels(node, weight: np.ndarray) -> int:
    """Output channels of a Conv ([M, C/g, k...]), ConvTranspose ([C, M/g, k...]) or Gemm."""
    if node.op_type == "Conv":
        return weight.shape[0]
    if node.op_type == "ConvTranspose":
        group = next((a.i for a in node.attribute if a.name == "group"), 1) or 1
        return weight.shape[1] * group
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return weight.shape[0] if trans_b else weight.shape[1]


def _mean_error(got: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Mean of ``got - reference`` per channel (axis 1), over samples and positions, in float64."""
    diff = got.astype(np.float64) - reference
    axes = tuple(a for a in range(diff.ndim) if a != 1)
    return diff.mean(axis=axes)


def _channel_shaped(shift: np.ndarray, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[1] = -1
    return shift.reshape(shape)
