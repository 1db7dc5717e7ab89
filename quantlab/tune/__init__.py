"""Accuracy first: per-tensor range search (``auto``), sensitivity analysis and an accuracy budget.

* :mod:`quantlab.tune.auto` - ``--method auto``: per tensor, the range that hurts the network least
  (a range chooser of the calibration pipeline, registered like every method);
* :mod:`quantlab.tune.sensitivity` - each quantized layer alone in float / alone in INT8, ranked;
* :mod:`quantlab.tune.search` - the greedy fallback search under an accuracy budget;
* :mod:`quantlab.tune.options` - what tune is told (:class:`Budget`, :class:`SearchOptions`,
  :class:`TuneOutput`);
* :mod:`quantlab.tune.pipeline` - :func:`tune`, all of it with the files and the report.

    from quantlab.tune import Budget, TuneOutput, tune
"""

from ..lazy import export_lazily

_EXPORTS = {"tune": "pipeline", "tuned_paths": "pipeline", "Budget": "options", "SearchOptions": "options",
            "TuneOutput": "options"}

__all__ = sorted(_EXPORTS)


export_lazily(__name__, _EXPORTS)
