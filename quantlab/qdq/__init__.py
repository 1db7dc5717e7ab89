"""Q/DQ ONNX for TensorRT 11: export (placement and typed remainder), lint and the precision plan.

A strongly typed TensorRT 11 network runs INT8 only between Q/DQ pairs and every other op in the
type its ONNX tensors have, so a Q/DQ model *is* the engine's precision plan:

* :mod:`~quantlab.qdq.placement`: where the pairs stand (one rule table, each rule with its source);
* :mod:`~quantlab.qdq.remainder`: the type of everything else, decided from measured ranges;
* :mod:`~quantlab.qdq.export`: both, from the ranges of any cache or table;
* :mod:`~quantlab.qdq.lint`: what TensorRT cannot fuse or will run in fp32, in any Q/DQ model;
* :mod:`~quantlab.qdq.plan`: the precision TensorRT is expected to give each node, and FLOP shares.
"""

from .export import PLACEMENTS, QUANTIZED_OPS, QdqOptions, QdqReport, apply_biases, export_qdq, quantized_layers
from .lint import LintResult, lint
from .plan import PrecisionPlan, precision_plan
from .remainder import FP16_MAX, HIGH_PRECISIONS, MeasuredRange, measured_ranges

__all__ = ["FP16_MAX", "HIGH_PRECISIONS", "PLACEMENTS", "QUANTIZED_OPS", "LintResult", "MeasuredRange",
           "PrecisionPlan", "QdqOptions", "QdqReport", "apply_biases", "export_qdq", "quantized_layers", "lint",
           "measured_ranges", "precision_plan"]
