"""Exceptions quantlab raises for bad input.

Every error a user can cause (a missing model, data that does not fit, a cache for another
model) is a :class:`QuantlabError`: the CLI prints its message as one line and exits non-zero,
so the message must say what is wrong *and* what to do about it.
"""

from __future__ import annotations


class QuantlabError(Exception):
    """A problem with the user's input; the message is shown to the user as is."""


class ModelError(QuantlabError):
    """The model file is missing, unreadable or not a usable ONNX model."""


class DataError(QuantlabError):
    """The calibration or evaluation data is missing, empty or does not fit the model."""


class StatisticsError(QuantlabError):
    """Collected statistics cannot be calibrated (NaN/Inf activations, all-zero tensors...)."""


class CacheFormatError(QuantlabError):
    """A calibration cache or table file cannot be parsed."""


class CalibratorError(QuantlabError):
    """An unknown calibration method or invalid calibrator parameters."""
