"""Evaluation: FP32 vs INT8 on held-out data, the verdict of compare, sweep and tune.

* :mod:`quantlab.evaluation.engine` - runners (ONNX Runtime sessions in TensorRT-faithful or
  ONNX Runtime-native INT8 arithmetic) and the one streaming pass every command uses;
* :mod:`quantlab.evaluation.metrics` - metric plugins (entry-point group ``quantlab.metrics``).
"""
