"""Evaluation: FP32 vs INT8 on held-out data, the verdict of compare, sweep and tune.

* :mod:`quantlab.evaluation.engine` - runners (ONNX Runtime sessions in TensorRT-faithful or
  ONNX Runtime-native INT8 arithmetic) and the one streaming pass every command uses;
* :mod:`quantlab.evaluation.metrics` - metric plugins (entry-point group ``quantlab.metrics``);
* :mod:`quantlab.evaluation.options` - what an evaluation is told (:class:`EvalOptions`,
  :class:`CompareOptions`);
* :mod:`quantlab.evaluation.heldout` - the held-out samples, opened once;
* :mod:`quantlab.evaluation.compare` and :mod:`quantlab.evaluation.sweep` - the two commands.

    from quantlab.evaluation import CompareOptions, EvalOptions, compare, sweep
"""

_EXPORTS = {"CompareResult": "compare", "compare": "compare", "CompareOptions": "options", "EvalOptions": "options",
            "SWEEP_METHODS": "sweep", "SweepOutput": "sweep", "sweep": "sweep"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Names imported on first use: ``quantlab.evaluation.options`` alone must not load the engine."""
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quantlab.evaluation' has no attribute {name!r}")
