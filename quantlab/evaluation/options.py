"""What an evaluation is told: how INT8 is judged against FP32, and what ``compare`` adds.

One :class:`EvalOptions` is shared by ``compare``, ``sweep`` and ``tune`` (and the CLI fills it from
the same flags for each), so a method is judged the same way whichever command asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class EvalOptions:
    """How the INT8 model is judged against FP32.

    ``outputs``: the model outputs read (empty: all); ``metric``: a metric plugin's name or
    ``module:Class`` (``auto``: chosen from the outputs' shapes) with its ``metric_params``;
    ``int8_arithmetic``: ``tensorrt`` (the Q/DQ graph as written, TensorRT's arithmetic to float
    rounding) or ``onnxruntime`` (its own CPU integer kernels); ``providers``: ONNX Runtime's.
    """

    outputs: tuple[str, ...] = ()
    metric: str = "auto"
    metric_params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    int8_arithmetic: str = "tensorrt"
    providers: Optional[tuple[str, ...]] = None

    def __post_init__(self) -> None:  # lists from a caller become tuples: the options stay immutable
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "metric_params", dict(self.metric_params or {}))
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers) or None)  # none given: the default


@dataclass(frozen=True)
class CompareOptions:
    """What ``compare`` measures beyond the outputs: the INT8 ``backend`` (``onnxruntime`` on the CPU,
    or ``tensorrt``: an engine built from the Q/DQ model), the held-out samples the per-tensor errors
    are measured on (``tensor_samples``; 0 skips them), how many ``worst`` tensors to list, and the
    SQNR in dB below which ``first_divergence`` names a tensor (None: no divergence search)."""

    backend: str = "onnxruntime"
    tensor_samples: int = 32
    worst: int = 10
    first_divergence: Optional[float] = None
