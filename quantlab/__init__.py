"""quantlab: INT8 calibration for TensorRT.

The public API::

    from quantlab import DataSpec, Method, calibrate, get_calibrator
    amax = get_calibrator("entropy").compute_amax(hist, edges)
    result = calibrate("model.onnx", DataSpec("calib/"), Method("percentile", {"p": 99.99}), output="model.cache")

Stages of the data flow, one module each: :mod:`quantlab.graph` (what to measure),
:mod:`quantlab.data` and :mod:`quantlab.preprocess` (samples), :mod:`quantlab.workload` (what a
command works on: model, data spec, data set), :mod:`quantlab.collector`
(ONNX Runtime run), :mod:`quantlab.histogram` and :mod:`quantlab.statistics` (streaming
statistics), the :mod:`quantlab.calibrators` plugins (amax), :mod:`quantlab.weights` (per-channel weight
ranges), :mod:`quantlab.table` and :mod:`quantlab.formats` (files written).
"""

__version__ = "0.1.0"

import sys
import types

# Names are imported on first use (PEP 562), so that ``import quantlab`` - and the CLI's start,
# which must answer Ctrl-C and --help at once - does not pay for ONNX Runtime and numpy first.
from .lazy import lazy_exports

_EXPORTS = {
    "CalibrationResult": "calibrate", "calibrate": "calibrate", "calibrate_statistics": "calibrate",
    "collect_statistics": "calibrate", "CalibrationOutput": "calibrate", "CollectOptions": "calibrate",
    "Method": "calibrate", "RangePolicy": "calibrate", "DataSpec": "workload", "resolve_model": "workload",
    "QuantlabError": "errors", "load_model": "graph", "get_calibrator": "plugins",
    "list_calibrators": "plugins", "Preprocess": "preprocess", "Statistics": "statistics",
    "CalibrationTable": "table",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list:
    return sorted(list(globals()) + __all__)


class _Package(types.ModuleType):
    """The function ``quantlab.calibrate`` shares its name with the module ``quantlab.calibrate``.

    Importing a submodule binds it as an attribute of its package, which would hide the lazily
    imported function; here an exported name keeps meaning the exported object (as it did when
    this file imported everything eagerly). The module stays reachable through ``sys.modules``
    and ``from quantlab.calibrate import ...``.
    """

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
