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

# Names are imported on first use (PEP 562), so that ``import quantlab`` - and the CLI's start,
# which must answer Ctrl-C and --help at once - does not pay for ONNX Runtime and numpy first.
from .lazy import export_lazily

_EXPORTS = {
    "CalibrationResult": "calibrate", "calibrate": "calibrate", "calibrate_statistics": "calibrate",
    "collect_statistics": "calibrate", "CalibrationOutput": "calibrate", "CollectOptions": "calibrate",
    "Method": "calibrate", "RangePolicy": "calibrate", "DataSpec": "workload", "resolve_model": "workload",
    "QuantlabError": "errors", "load_model": "graph", "get_calibrator": "plugins",
    "list_calibrators": "plugins", "Preprocess": "preprocess", "Statistics": "statistics",
    "CalibrationTable": "table",
}

__all__ = sorted(_EXPORTS)


export_lazily(__name__, _EXPORTS)
