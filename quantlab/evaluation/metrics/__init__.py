"""Metric plugins: streaming, mergeable comparisons of INT8 model outputs against FP32.

A metric is a class registered under the entry-point group ``quantlab.metrics`` (the built-ins
in quantlab's own ``pyproject.toml``, exactly like a third-party plugin), or named on the command
line as ``module:Class`` / ``path/file.py:Class``. Its contract::

    class MyMetric:
        name = "my-metric"

        def __init__(self, outputs: Sequence[str], **params): ...
            # the model outputs it reads (all of the model's, unless the user chose some);
            # params come from --metric-param NAME=VALUE (values as int/float/str)

        @classmethod
        def applies(cls, shapes: Mapping[str, tuple]) -> bool: ...
            # optional: True when the outputs (per-sample shapes, batch axis dropped, None for a
            # dynamic axis) look like this metric's kind; used by --metric auto

        def update(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                   labels: Optional[np.ndarray]) -> None: ...
            # one batch: FP32 outputs, INT8 outputs (same names, batch axis first), labels or None

        def merge(self, other: "MyMetric") -> None: ...
            # fold in another instance's state (another shard of the samples): exact, so any split
            # of the samples into batches or shards gives the same result, bit for bit, when the
            # shards are merged in a fixed order

        def result(self) -> dict: ...
            # JSON-able: {"metric": name, "score": float, "score_name": str, "outputs": [...], ...}
            # score: one number, higher is better (what sweep ranks by); outputs: one dict per
            # model output with its numbers

State is sums and counts, never the samples, so memory does not grow with the held-out set
(``detection`` keeps one small record per decoded detection, capped; see its module).

Built-ins (``quantlab/evaluation/metrics/``, registered in ``pyproject.toml``): ``fidelity``
(cosine, SQNR, max abs error; fits every output), ``classification`` (``[N, C]``: top-1
agreement, top-1/top-5 with labels), ``detection`` (YOLO-style ``[N, 4+C, A]`` / ``[N, A, 4+C]``:
boxes and scores apart, mAP@0.5 against FP32's detections) and ``dense`` (``[N, K, H, W]``
maps: mask IoU, pixel agreement). The built-ins make their sums exact (``base.ExactSum``), so
their results do not depend on the split into batches or shards at all, not only on the order.

The registry: :func:`list_metrics`, :func:`metric_class` (name or ``module:Class``),
:func:`make_metric` (an instance, parameters checked) and :func:`detect_metric` (what
``--metric auto`` picks). Their errors are :class:`~quantlab.errors.QuantlabError` naming the
Python parameters ``metric`` and ``metric_params`` (``--metric`` and ``--metric-param``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from ...data import load_callable
from ...errors import QuantlabError
from ...plugins import PluginInfo, describe_group, entry_points_of, parameter_names
from .base import Metric, sqnr_db

METRIC_GROUP = "quantlab.metrics"
# --metric auto: the first built-in that recognises the outputs, most specific first (a YOLO
# head is also a 2-D per-sample array, logits are the next most telling shape); else fidelity.
DETECTION_ORDER = ("detection", "classification", "dense")
FALLBACK = "fidelity"
_REQUIRED = ("update", "merge", "result")

__all__ = ["METRIC_GROUP", "Metric", "PluginInfo", "detect_metric", "list_metrics", "make_metric",
           "metric_class", "sqnr_db"]


def list_metrics() -> list[PluginInfo]:
    """Installed metrics (entry-point group ``quantlab.metrics``), sorted by name."""
    return describe_group(METRIC_GROUP)


def metric_class(spec: str) -> type:
    """The metric class ``spec`` names: an installed metric's name, ``module:Class`` or ``path/file.py:Class``.

    Errors name the Python parameter ``metric`` (the CLI's ``--metric``).
    """
    if ":" in spec:
        loaded = load_callable(spec, param="metric", kind="metric class", error=QuantlabError)
    else:
        entry_points = entry_points_of(METRIC_GROUP)
        if spec not in entry_points:
            known = ", ".join(sorted(entry_points)) or "none (is quantlab installed with pip?)"
            raise QuantlabError(f"unknown metric {spec!r} for `metric`; installed: {known} (or give "
                                "module:Class or path/file.py:Class)", params=("metric",))
        try:
            loaded = entry_points[spec].load()
        except Exception as exc:  # a broken plugin package: say which one
            raise QuantlabError(f"metric plugin {spec!r} ({entry_points[spec].value}) failed to load: "
                                f"{type(exc).__name__}: {exc}; reinstall or fix that package") from exc
    missing = [m for m in _REQUIRED if not callable(getattr(loaded, m, None))]
    if not inspect.isclass(loaded) or missing:
        lacks = f" (it lacks {', '.join(missing)})" if missing else ""
        raise QuantlabError(f"{spec!r} given as `metric` is not a metric class{lacks}: it needs a class with "
                            "update, merge and result, see quantlab.evaluation.metrics", params=("metric",))
    return loaded


def make_metric(spec: str, outputs: Sequence[str], **params: Any) -> Any:
    """A fresh instance of the metric ``spec`` reading ``outputs``, with its parameters checked.

    A parameter the class does not take is an error listing those it takes (named as
    ``metric_params``, the CLI's ``--metric-param``); a value it refuses says why.
    """
    cls = metric_class(spec)
    label = getattr(cls, "name", "") or spec
    accepted = parameter_names(cls)[1:]  # the first is `outputs`
    takes_any = any(p.kind is p.VAR_KEYWORD for p in _signature(cls))
    unknown = [name for name in params if name not in accepted]
    if unknown and not takes_any:
        raise QuantlabError(
            f"metric {label!r} has no parameter {', '.join(unknown)} (in `metric_params`); it takes "
            + (", ".join(accepted) if accepted else "no parameters"), params=("metric_params",))
    try:
        return cls(list(outputs), **params)
    except QuantlabError:
        raise
    except (TypeError, ValueError) as exc:
        if params:
            raise QuantlabError(f"bad `metric_params` {params} for metric {label!r}: {exc}",
                                params=("metric_params",)) from exc
        raise QuantlabError(f"metric {label!r} could not be created (with no parameters given): "
                            f"{type(exc).__name__}: {exc}", params=("metric",)) from exc
    except Exception as exc:  # a plugin's own failure: named as the plugin's, not as the user's input
        raise QuantlabError(f"metric {label!r} failed while being created: {type(exc).__name__}: {exc} "
                            f"(in {cls.__module__}.{cls.__qualname__})", params=("metric",)) from exc


def _signature(cls: type) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        return []


def detect_metric(shapes: Mapping[str, tuple]) -> str:
    """The metric ``--metric auto`` uses for outputs of these per-sample shapes (None: dynamic).

    The first built-in of :data:`DETECTION_ORDER` whose ``applies`` is true, else ``fidelity``,
    which fits every output.
    """
    shapes = {name: tuple(shape) for name, shape in shapes.items()}
    for name in DETECTION_ORDER:
        if metric_class(name).applies(shapes):
            return name
    return FALLBACK
