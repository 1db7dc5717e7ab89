"""Calibrator and dataset-adapter plugins, found through entry points.

Built-in calibrators (``calibrators/``) and adapters (:mod:`quantlab.data`) register through
quantlab's own ``pyproject.toml`` under the groups ``quantlab.calibrators`` and
``quantlab.datasets``, exactly as a third-party package would; ``pip install some-plugin``
therefore adds a ``--method`` or a ``--data-format`` with no change here.

A calibrator is a class with a ``name`` and ``compute_amax(hist, edges) -> float``; keyword
arguments of its constructor are its parameters (``percentile`` takes ``p``). It may also
define ``calibrate(stats)`` to use more than the histogram (``max`` uses the exact max |x|).
A method that chooses every range at once (``auto``) registers in the same group and implements
:class:`quantlab.calibrate.RangeChooser` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import CalibratorError, DataError

CALIBRATOR_GROUP = "quantlab.calibrators"
DATASET_GROUP = "quantlab.datasets"


@runtime_checkable
class Calibrator(Protocol):
    """What every calibrator plugin provides."""

    name: str

    def compute_amax(self, hist: np.ndarray, edges: np.ndarray) -> float:
        """Threshold amax for a histogram of |x| with ``len(edges) == len(hist) + 1``."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    target: str  # "module:attr"
    distribution: str


def entry_points_of(group: str) -> dict[str, Any]:
    found = {}
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep)
    return found


def list_calibrators() -> list[PluginInfo]:
    """Installed calibrators, sorted by name."""
    return describe_group(CALIBRATOR_GROUP)


def list_dataset_adapters() -> list[PluginInfo]:
    """Installed dataset adapters, sorted by name."""
    return describe_group(DATASET_GROUP)


def describe_group(group: str) -> list[PluginInfo]:
    """The plugins installed in an entry-point ``group``, sorted by name."""
    infos = []
    for name, ep in sorted(entry_points_of(group).items()):
        dist = getattr(ep, "dist", None)
        infos.append(PluginInfo(name, ep.value, dist.name if dist is not None else "?"))
    return infos


def get_calibrator(name: str, **params: Any) -> Calibrator:
    """Instantiate the calibrator registered as ``name`` with its parameters.

    >>> get_calibrator("percentile", p=99.9).compute_amax(hist, edges)
    """
    cls = calibrator_class(name)
    try:
        return cls(**params)
    except TypeError as exc:
        accepted = parameter_names(cls)
        raise CalibratorError(
            f"bad parameters {params} for method {name!r} ({exc}); it takes "
            + (", ".join(accepted) if accepted else "no parameters")) from exc
    except ValueError as exc:
        raise CalibratorError(f"bad parameter for method {name!r}: {exc}") from exc


def calibrator_class(name: str) -> type:
    """The class registered as method ``name`` (its class attributes, e.g. ``trt_algorithm``, without
    an instance)."""
    eps = entry_points_of(CALIBRATOR_GROUP)
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none (is quantlab installed with pip?)"
        raise CalibratorError(f"unknown calibration method {name!r}; installed: {known}")
    return eps[name].load()


def parameter_names(cls: type) -> list[str]:
    """The keyword parameters a plugin class takes (what its error messages list)."""
    import inspect

    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return []
    return [p.name for p in signature.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def get_dataset_adapter(name: str) -> type:
    """The dataset adapter class registered as ``name``."""
    eps = entry_points_of(DATASET_GROUP)
    if name not in eps:
        raise DataError(f"unknown data format {name!r}; installed: {', '.join(sorted(eps))}")
    return eps[name].load()


def detect_dataset_adapter(source: str) -> type:
    """The first installed adapter (in a fixed preference order) that recognises ``source``."""
    from .data import check_source_exists

    eps = entry_points_of(DATASET_GROUP)
    preferred = ["npy", "idx", "callable", "images"]
    order = [n for n in preferred if n in eps] + sorted(n for n in eps if n not in preferred)
    for name in order:
        cls = eps[name].load()
        if cls.detect(source):
            return cls
    check_source_exists(source)
    raise DataError(
        f"cannot tell what kind of data {source!r} is (not a .npy/.npz file, an IDX file, "
        "an image folder, Polygraphy inputs JSON or module:function); check the path or pass --data-format"
    )
