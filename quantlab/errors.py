"""Exceptions quantlab raises for bad input.

Every error a user can cause (a missing model, data that does not fit, a cache for another
model) is a :class:`QuantlabError`: the CLI prints its message as one line and exits 2, so the
message must say what is wrong *and* what to do about it.

The library is used from Python and from the command line, and the two spell the same setting
differently (``batch_size=`` vs ``--batch-size``). Messages are written with the Python
parameter names, in backticks (`` `mean` has 3 values ...``), and declare them in ``params``; the
CLI renders them with its own flags (:meth:`QuantlabError.render`), so neither audience is told
about options it does not have. A declared name that contains an underscore is unambiguous and is
re-spelled even without backticks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence


class QuantlabError(Exception):
    """A problem with the user's input; the message is shown to the user as is.

    ``params``: the Python parameter names that occur in the message, which a front end may
    re-spell (the CLI turns ``batch_size`` into ``--batch-size``).
    """

    def __init__(self, message: str, *, params: Sequence[str] = ()):
        super().__init__(message)
        self.params = tuple(params)

    def render(self, spelling: Mapping[str, str]) -> str:
        """The message with each declared parameter name written as ``spelling`` spells it."""
        return respell(str(self), spelling, self.params)


def respell(text: str, spelling: Mapping[str, str], names: Sequence[str] = ()) -> str:
    """``text`` with parameter names (in backticks; with an underscore, also bare) re-spelled.

    ``names`` limits which names are re-spelled; by default every name ``spelling`` knows.
    """
    for name in names or list(spelling):
        if name not in spelling:
            continue
        text = text.replace(f"`{name}`", spelling[name])
        if "_" in name:
            text = re.sub(rf"(?<![\w./-]){re.escape(name)}(?![\w-])", spelling[name], text)
    return text


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


class OutputError(QuantlabError):
    """An output path that cannot or must not be written (a device, a FIFO, one of the inputs)."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread by the CLI's handler.

    A BaseException like KeyboardInterrupt, so that ``except Exception`` in user callables does
    not swallow it and every ``finally`` on the way out removes its temporary files.
    """
