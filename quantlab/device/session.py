"""An ONNX Runtime-shaped session over a :class:`~quantlab.device.graph.TorchGraph`.

The evaluation runners, auto's whole-model and node-by-node runs and the bias correction all
talk to sessions through ``run(output_names, feeds)`` and ``get_outputs()``: this session gives
them that on a torch device, host arrays in and out, so each of them runs on a GPU unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx

from .graph import TorchGraph, resolve_device, to_numpy


@dataclass(frozen=True)
class _Arg:
    name: str


class TorchSession:
    """``run(output_names, feeds)`` of ``model`` on torch device ``device`` (host arrays in and out)."""

    def __init__(self, model: onnx.ModelProto, device: str):
        self.device = resolve_device(device)
        self.graph = TorchGraph(model, self.device)

    def get_inputs(self) -> list[_Arg]:
        return [_Arg(name) for name in self.graph.input_names]

    def get_outputs(self) -> list[_Arg]:
        return [_Arg(name) for name in self.graph.output_names]

    def run(self, output_names: Optional[Sequence[str]], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        names = list(output_names or self.graph.output_names)
        tensors = {name: torch.from_numpy(np.ascontiguousarray(value)).to(self.device)
                   for name, value in feeds.items()}
        outputs = self.graph.run(tensors, keep=[n for n in names if n not in self.graph.output_names])
        return [to_numpy(outputs[name]) for name in names]
