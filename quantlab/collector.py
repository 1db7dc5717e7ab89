"""Run the FP32 model in ONNX Runtime and stream every activation into its histogram.

Per batch, each measured tensor is folded into its :class:`~quantlab.histogram.TensorHistogram`
and dropped, so memory depends on the batch size and the model, never on the number of
samples (ONNX Runtime's own calibrator keeps every intermediate output of every batch).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
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

    Two things keep collection close to the cost of inference. ONNX Runtime writes the
    activations of a batch into output buffers that are allocated once per input shape and
    reused (an ImageNet-sized MobileNetV2 produces 1.7 GB of activations per batch of 32:
    fresh buffers for each batch cost more page faults than the convolutions cost time).
    And the histograms of one batch are filled on ``threads`` threads, one tensor per task:
    numpy's passes and ``bincount`` release the GIL.
    """

    def __init__(self, graph: ModelGraph, tensors: Optional[Sequence[str]] = None,
                 bins: int = DEFAULT_BINS, providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None):
        self.graph = graph
        names = list(tensors if tensors is not None else graph.activations)
        # Model inputs are histogrammed straight from the feeds, not echoed back by the session.
        self.input_names = [n for n in names if n in {spec.name for spec in graph.inputs}]
        extended = add_outputs(graph.model, [n for n in names if n not in self.input_names])
        self.session = make_session(extended.SerializeToString(), providers)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.statistics = Statistics.empty(graph.sha256, names, bins)
        self.threads = max(1, threads if threads is not None else available_cpus())
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self.seconds = {"inference": 0.0, "histograms": 0.0}  # where collection time went
        self._checked = False
        self._buffers: Optional[tuple[tuple, list[np.ndarray]]] = None  # (input shapes, outputs)

    def update(self, batch: Batch) -> None:
        """Run one batch and fold its activations in."""
        started = time.perf_counter()
        named = list(zip(self.output_names, self._run(batch.inputs)))
        ran = time.perf_counter()
        named += [(name, np.asarray(batch.inputs[name])) for name in self.input_names]
        tensors = self.statistics.tensors
        if not self._checked:
            # Tensors whose type the graph did not state: keep the floating-point ones only.
            for name, value in named:
                if name in tensors and np.asarray(value).dtype.kind != "f":
                    del tensors[name]
            self._checked = True
        work = [(tensors[name], value) for name, value in named if name in tensors]
        work.sort(key=lambda item: -item[1].size)  # largest first: the threads finish together
        if self._pool is None:
            for hist, value in work:
                hist.update(value)
        else:
            for future in [self._pool.submit(hist.update, value) for hist, value in work]:
                future.result()
        self.seconds["inference"] += ran - started
        self.seconds["histograms"] += time.perf_counter() - ran
        self.statistics.num_samples += len(batch.indices)
        self.statistics.fingerprint.add(batch.inputs)

    def _run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """All requested outputs of one batch, written into reused buffers when possible."""
        shapes = tuple((name, np.shape(value)) for name, value in sorted(inputs.items()))
        try:
            if self._buffers is not None and self._buffers[0] == shapes:
                binding = self.session.io_binding()
                feeds = {name: np.ascontiguousarray(value) for name, value in inputs.items()}  # alive until run
                for name, value in feeds.items():
                    binding.bind_cpu_input(name, value)
                for name, buffer in zip(self.output_names, self._buffers[1]):
                    binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(buffer))
                self.session.run_with_iobinding(binding)
                return self._buffers[1]
            # First batch of this shape: let ONNX Runtime allocate, then keep its arrays as
            # the buffers of the next batches (one shape at a time, so memory stays one batch).
            self._buffers = None
            outputs = self.session.run(self.output_names, inputs)
        except Exception as exc:  # ORT's InvalidArgument, Fail, ...
            message = str(exc).strip().splitlines()[-1]
            raise DataError(f"ONNX Runtime rejected a batch of the data: {message}") from exc
        if all(isinstance(o, np.ndarray) and o.flags.c_contiguous and o.flags.writeable for o in outputs):
            self._buffers = (shapes, outputs)
        return outputs

    def close(self) -> None:
        """Release the worker threads and the output buffers."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._buffers = None

    def collect(self, batches: Iterable[Batch], total: Optional[int] = None,
                progress: bool = True) -> Statistics:
        with tqdm(total=total, unit="sample", desc="collecting", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for batch in batches:
                self.update(batch)
                bar.update(len(batch.indices))
        self.close()
        return self.statistics


def available_cpus() -> int:
    """CPUs this process may run on (the container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
