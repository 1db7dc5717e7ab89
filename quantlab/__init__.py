"""quantlab: INT8 calibration for TensorRT.

The public API::

    from quantlab import calibrate, get_calibrator
    amax = get_calibrator("entropy").compute_amax(hist, edges)
    result = calibrate("model.onnx", DataSpec("calib/"), method="entropy", output="model.cache")

Stages of the data flow, one module each: :mod:`quantlab.graph` (what to measure),
:mod:`quantlab.data` and :mod:`quantlab.preprocess` (samples), :mod:`quantlab.collector`
(ONNX Runtime run), :mod:`quantlab.histogram` and :mod:`quantlab.statistics` (streaming
statistics), the ``calibrators`` plugins (amax), :mod:`quantlab.weights` (per-channel weight
ranges), :mod:`quantlab.table` and :mod:`quantlab.formats` (files written).
"""

__version__ = "0.1.0"

from .calibrate import (
    CalibrationResult,
    DataSpec,
    calibrate,
    calibrate_statistics,
    collect_statistics,
)
from .errors import QuantlabError
from .graph import load_model
from .plugins import get_calibrator, list_calibrators
from .preprocess import Preprocess
from .statistics import Statistics
from .table import CalibrationTable

__all__ = [
    "CalibrationResult", "CalibrationTable", "DataSpec", "Preprocess", "QuantlabError",
    "Statistics", "calibrate", "calibrate_statistics", "collect_statistics", "get_calibrator",
    "list_calibrators", "load_model",
]
