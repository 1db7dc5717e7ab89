"""What ``tune`` is told: the accuracy budget, how the search ranks and scores, what it writes.

Small frozen objects in the style of NNCF's ``AdvancedAccuracyRestorerParameters``: the CLI fills
them from its flags, a Python user builds them directly, and :func:`quantlab.tune.tune` takes a
handful of them instead of two dozen keywords.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..errors import QuantlabError
from ..formats.trtcache import DEFAULT_TRT_VERSION
from ..precision import TRTEXEC_PRECISIONS
from .auto import DEFAULT_SAMPLES


@dataclass(frozen=True)
class Budget:
    """The accuracy budget: the metric may drop at most ``max_drop`` percentage points below FP32,
    with at most ``max_float_layers`` layers left out of INT8 (None: no limit), computing in
    ``high_precision`` (``fp16``, or ``fp32`` where a layer's ranges pass the fp16 range)."""

    max_drop: float = 0.5
    max_float_layers: Optional[int] = None
    high_precision: str = "fp16"

    def __post_init__(self) -> None:  # refused where it is made: before any work
        if self.high_precision not in TRTEXEC_PRECISIONS:
            raise QuantlabError(f"`high_precision` must be one of {', '.join(TRTEXEC_PRECISIONS)}, got "
                                f"{self.high_precision!r}", params=("high_precision",))
        if not (isinstance(self.max_drop, (int, float)) and self.max_drop >= 0):
            raise QuantlabError(f"`max_drop` must be a number of percentage points >= 0, got {self.max_drop!r}",
                                params=("max_drop",))
        if self.max_float_layers is not None and self.max_float_layers < 0:
            raise QuantlabError(f"`max_float_layers` must be >= 0, got {self.max_float_layers}",
                                params=("max_float_layers",))


@dataclass(frozen=True)
class SearchOptions:
    """How the search ranks and scores: ``sensitivity`` (``both``: each layer alone in float and alone
    in INT8; ``float``: only the first), the evaluation samples the ranking uses (``ranking_samples``;
    None: all), the calibration samples ``auto`` judges ranges on (``auto_samples``), and whether every
    single method's all-INT8 model is scored too and may be the search's starting point, the best on the
    evaluation data (``compare_methods``; None: yes)."""

    sensitivity: str = "both"
    ranking_samples: Optional[int] = 300
    auto_samples: int = DEFAULT_SAMPLES
    compare_methods: Optional[bool] = None

    def __post_init__(self) -> None:  # refused where it is made: before any work
        samples = self.ranking_samples
        if samples is not None and not (isinstance(samples, int) and samples > 0):
            raise QuantlabError(f"`ranking_samples` must be a positive integer or None (all), got "
                                f"{self.ranking_samples!r}", params=("ranking_samples",))
        if self.sensitivity not in ("both", "float"):
            raise QuantlabError(f"`sensitivity` must be 'both' or 'float', got {self.sensitivity!r}",
                                params=("sensitivity",))


@dataclass(frozen=True)
class TuneOutput:
    """What ``tune`` writes: the Q/DQ model ``qdq_model`` (``X.qdq.onnx``; ``X.cache`` and
    ``X.quantlab.json`` beside it, the cache's header for ``trt_version``) and a ``report`` folder."""

    qdq_model: Optional[Union[str, Path]] = None
    report: Optional[Union[str, Path]] = None
    trt_version: tuple = DEFAULT_TRT_VERSION
