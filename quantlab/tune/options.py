"""What ``tune`` is told: the accuracy budget, how the search ranks and scores, what it writes.

Small frozen objects in the style of NNCF's ``AdvancedAccuracyRestorerParameters``: the CLI fills
them from its flags, a Python user builds them directly, and :func:`quantlab.tune.tune` takes a
handful of them instead of two dozen keywords.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..formats.trtcache import DEFAULT_TRT_VERSION
from .auto import DEFAULT_SAMPLES


@dataclass(frozen=True)
class Budget:
    """The accuracy budget: the metric may drop at most ``max_drop`` percentage points below FP32,
    with at most ``max_float_layers`` layers left out of INT8 (None: no limit), computing in
    ``high_precision`` (``fp16``, or ``fp32`` where a layer's ranges pass the fp16 range)."""

    max_drop: float = 0.5
    max_float_layers: Optional[int] = None
    high_precision: str = "fp16"


@dataclass(frozen=True)
class SearchOptions:
    """How the search ranks and scores: ``sensitivity`` (``both``: each layer alone in float and alone
    in INT8; ``float``: only the first), the evaluation samples the ranking uses (``ranking_samples``;
    None: all), the calibration samples ``auto`` judges ranges on (``auto_samples``), and whether every
    single method's all-INT8 model is scored too (``compare_methods``; None: when a report is written)."""

    sensitivity: str = "both"
    ranking_samples: Optional[int] = 300
    auto_samples: int = DEFAULT_SAMPLES
    compare_methods: Optional[bool] = None


@dataclass(frozen=True)
class TuneOutput:
    """What ``tune`` writes: the Q/DQ model ``qdq_model`` (``X.qdq.onnx``; ``X.cache`` and
    ``X.quantlab.json`` beside it, the cache's header for ``trt_version``) and a ``report`` folder."""

    qdq_model: Optional[Union[str, Path]] = None
    report: Optional[Union[str, Path]] = None
    trt_version: tuple = DEFAULT_TRT_VERSION
