"""Accuracy first: per-tensor range search (``auto``), sensitivity analysis and an accuracy budget.

* :mod:`quantlab.tune.auto` - ``--method auto``: per tensor, the range that hurts the network least;
* :mod:`quantlab.tune.sensitivity` - each quantized layer alone in float / alone in INT8, ranked;
* :mod:`quantlab.tune.search` - the greedy fallback search under an accuracy budget;
* :mod:`quantlab.tune.precision` - the fallback as outputs for TensorRT 10/11 (Q/DQ, fp16) and <= 10;
* :mod:`quantlab.tune.pipeline` - :func:`tune`, all of it with the files and the report.
"""


def tune(*args, **kwargs):
    """:func:`quantlab.tune.pipeline.tune` (imported on first use: it loads ONNX Runtime)."""
    from .pipeline import tune as run

    return run(*args, **kwargs)
