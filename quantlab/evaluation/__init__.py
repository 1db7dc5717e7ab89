"""Evaluation: FP32 vs INT8 on held-out data, the verdict of compare, sweep and tune.

* :mod:`quantlab.evaluation.engine` - runners (ONNX Runtime sessions in TensorRT-faithful or
  ONNX Runtime-native INT8 arithmetic) and the one streaming pass every command uses;
* :mod:`quantlab.evaluation.metrics` - metric plugins (entry-point group ``quantlab.metrics``);
* :mod:`quantlab.evaluation.options` - what an evaluation is told (:class:`EvalOptions`,
  :class:`CompareOptions`);
* :mod:`quantlab.evaluation.heldout` - the held-out samples, opened once;
* :mod:`quantlab.evaluation.compare` and :mod:`quantlab.evaluation.sweep` - the two commands;
* :mod:`quantlab.evaluation.roundtrip` - a real engine's files held against FP32 and the emulation,
  the inputs it should run, the first divergence.

    from quantlab.evaluation import CompareOptions, EngineFiles, EvalOptions, compare, export_inputs, sweep
"""

from ..lazy import export_lazily

_EXPORTS = {"CompareResult": "compare", "compare": "compare", "CompareOptions": "options", "EvalOptions": "options",
            "EngineFiles": "roundtrip", "export_inputs": "roundtrip",
            "SWEEP_METHODS": "sweep", "SweepOutput": "sweep", "sweep": "sweep"}

__all__ = sorted(_EXPORTS)


export_lazily(__name__, _EXPORTS)
