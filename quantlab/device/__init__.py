"""Running quantlab's graphs on a torch device (``--device cuda``): FP32 and Q/DQ graphs, and the
histograms of every measured activation, computed where the activations are.

The CPU path (ONNX Runtime) stays the default and the reference. A device is named the way ONNX
Runtime's execution providers are passed around, as one more provider, ``torch:<device>``
(:func:`device_provider`): every command that takes ``providers`` can run on a device without a
second set of options, and :func:`device_of` tells the places that work differently there (the
collector, which keeps activations on the device) which device that is.

- :mod:`.graph`: an ONNX graph run node by node in torch (onnx2torch's op converters), named tensors.
- :mod:`.arithmetic`: QuantizeLinear/DequantizeLinear as ONNX Runtime computes them.
- :mod:`.histogram`: the power-of-two histogram fold on the device, bit for bit the CPU kernel's bins.
- :mod:`.collector`: the collector of statistics on a device.
- :mod:`.session`: an ONNX Runtime-shaped session over a torch graph, for the evaluation runners.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from ..errors import QuantlabError

PREFIX = "torch:"


def device_provider(device: str) -> str:
    """The provider string that runs graphs on torch device ``device`` (``cuda``, ``cuda:1``, ``cpu``)."""
    return PREFIX + device


def device_of(providers: Optional[Sequence[str]]) -> Optional[str]:
    """The torch device ``providers`` name (None: ONNX Runtime runs the graphs)."""
    named = [p[len(PREFIX):] for p in providers or () if isinstance(p, str) and p.startswith(PREFIX)]
    if not named:
        return None
    if len(named) > 1 or len(providers) > 1:
        raise QuantlabError(f"`device` runs graphs in torch and cannot be combined with other providers "
                            f"({', '.join(providers)}); pass one of them", params=("device",))
    return named[0]


def with_device(providers: Optional[Sequence[str]], device: Optional[str]) -> Optional[tuple[str, ...]]:
    """``providers`` with ``device`` added (the CLI's ``--device`` beside ``--provider``)."""
    if not device:
        return tuple(providers) if providers else None
    if providers:
        raise QuantlabError(f"`device` {device!r} runs graphs in torch; ONNX Runtime's providers "
                            f"({', '.join(providers)}) cannot be used with it", params=("device",))
    return (device_provider(device),)
