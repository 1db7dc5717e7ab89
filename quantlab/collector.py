"""Run the FP32 model in ONNX Runtime and stream every activation into its histogram.

Per batch, each measured tensor is folded into its :class:`~quantlab.histogram.TensorHistogram`
and dropped, so memory depends on the batch size and the model, never on the number of
samples (ONNX Runtime's own calibrator keeps every intermediate output of every batch).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Optional

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from .errors import DataError, QuantlabError
from .graph import ModelGraph, add_outputs
from .histogram import DEFAULT_BINS
from .preprocess import Batch
from .statistics import Statistics

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def make_session(model_bytes: bytes, providers: Optional[Sequence[str]] = None,
                 threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime session on the given providers (CPU by default), checked to exist."""
    wanted = list(providers or DEFAULT_PROVIDERS)
    available = ort.get_available_providers()
    missing = [p for p in wanted if p not in available]
    if missing:
        raise QuantlabError(
            f"ONNX Runtime provider(s) {missing} are not available in this onnxruntime "
            f"(available: {available}); install the matching onnxruntime build or drop --provider"
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model_bytes, sess_options=options, providers=wanted)
    except Exception as exc:  # ORT raises its own exception types
        raise QuantlabError(f"ONNX Runtime cannot load the model: {exc}") from exc


class ActivationCollector:
    """Streams batches through the FP32 model and accumulates per-tensor statistics.

    Usable piecewise (``update`` per batch) or in one go (``collect``); ``statistics`` holds
    the result at any time.
    """

    def __init__(self, graph: ModelGraph, tensors: Optional[Sequence[str]] = None,
                 bins: int = DEFAULT_BINS, providers: Optional[Sequence[str]] = None):
        self.graph = graph
        names = list(tensors if tensors is not None else graph.activations)
        extended = add_outputs(graph.model, names)
        self.session = make_session(extended.SerializeToString(), providers)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.statistics = Statistics.empty(graph.sha256, names, bins)
        self._checked = False

    def update(self, batch: Batch) -> None:
        """Run one batch and fold its activations in."""
        try:
            outputs = self.session.run(self.output_names, batch.inputs)
        except Exception as exc:  # ORT's InvalidArgument, Fail, ...
            message = str(exc).strip().splitlines()[-1]
            raise DataError(f"ONNX Runtime rejected a batch of the data: {message}") from exc
        tensors = self.statistics.tensors
        if not self._checked:
            # Tensors whose type the graph did not state: keep the floating-point ones only.
            for name, value in zip(self.output_names, outputs):
                if name in tensors and np.asarray(value).dtype.kind != "f":
                    del tensors[name]
            self._checked = True
        for index, name in enumerate(self.output_names):
            hist = tensors.get(name)
            if hist is not None:
                hist.update(outputs[index])
            outputs[index] = None  # free each activation as soon as it is folded in
        self.statistics.num_samples += len(batch.indices)
        self.statistics.fingerprint.add(batch.inputs)

    def collect(self, batches: Iterable[Batch], total: Optional[int] = None,
                progress: bool = True) -> Statistics:
        with tqdm(total=total, unit="sample", desc="collecting", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for batch in batches:
                self.update(batch)
                bar.update(len(batch.indices))
        return self.statistics
