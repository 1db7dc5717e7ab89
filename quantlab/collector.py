"""Run the FP32 model in ONNX Runtime and stream every activation into its histogram.

Per batch, each measured tensor is folded into its :class:`~quantlab.histogram.TensorHistogram`
and dropped, so memory depends on the batch size and the model, never on the number of
samples (ONNX Runtime's own calibrator keeps every intermediate output of every batch).
"""

from __future__ import annotations

import heapq
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from . import histogram
from .device import device_of
from .errors import DataError, QuantlabError
from .graph import ModelGraph, add_outputs
from .histogram import DEFAULT_BINS, TensorHistogram, flat_values
from .preprocess import Batch
from .statistics import Statistics

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
CUDA_PROVIDER = "CUDAExecutionProvider"
# Activations one ONNX Runtime run may produce before a batch is run in slices. Past a few hundred
# MiB the values no longer come back from cache between the run and the histograms, and memory
# grows with --batch-size for nothing: the histograms do not depend on how samples are grouped.
ACTIVATION_BUDGET = 256 << 20
# The histograms of a run are cut into pieces of at least MIN_PIECE values (smaller ones cost more
# in Python than they save), about PIECES_PER_THREAD per thread, so that the threads finish together.
MIN_PIECE = 1 << 16
PIECES_PER_THREAD = 4
# Values to histogram (expected for the whole collection, or seen so far) from which the compiled
# kernel is loaded: numba's start-up (about a second, and about 130 MiB) buys nothing on less,
# which numpy bins in under a second. Until it is loaded, and below this, numpy fills the histograms.
KERNEL_MIN_VALUES = 200_000_000


def make_session(model_bytes: bytes, providers: Optional[Sequence[str]] = None,
                 threads: int = 0, spinning: bool = True,
                 config: Optional[dict[str, str]] = None, optimize: bool = True,
                 optimized_model_path: Optional[str] = None, arena: bool = True) -> ort.InferenceSession:
    """An ONNX Runtime session on the given providers (CPU by default), checked to exist;
    ``config``: session config entries (e.g. the INT8 arithmetic of quantlab.evaluation.engine);
    ``optimized_model_path``: where ONNX Runtime saves the graph it will actually run; ``arena=False``
    returns each run's buffers to the system instead of keeping them in the session's memory arena (for
    the many small sessions of a node-by-node run, whose arenas would each hold their largest run).
    Providers that name a torch device (``torch:cuda``, :mod:`quantlab.device`) give a session of the
    same shape that runs the graph in torch there, every op as written (no ONNX Runtime options apply)."""
    device = device_of(providers)
    if device is not None:  # the graph runs in torch on that device, every op as written
        from .device.session import TorchSession

        return TorchSession(onnx.ModelProto.FromString(model_bytes), device)
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
    if not spinning:  # idle ONNX Runtime threads sleep instead of spinning on cores others need
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    if not arena:
        options.enable_cpu_mem_arena = False
    if not optimize:  # the graph exactly as written (quantlab.evaluation.engine's INT8 arithmetic)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized_model_path:
        options.optimized_model_filepath = optimized_model_path
    try:
        return ort.InferenceSession(model_bytes, sess_options=options, providers=wanted)
    except Exception as exc:  # ORT raises its own exception types
        raise QuantlabError(f"ONNX Runtime cannot load the model: {exc}") from exc


def make_collector(graph: ModelGraph, tensors: Optional[Sequence[str]] = None, bins: int = DEFAULT_BINS,
                   providers: Optional[Sequence[str]] = None, threads: Optional[int] = None, ort_threads: int = 0):
    """The collector for ``providers``: :class:`ActivationCollector` (ONNX Runtime), or the device
    collector when they name a torch device (:mod:`quantlab.device`)."""
    device = device_of(providers)
    if device is None and CUDA_PROVIDER in (providers or ()) and _torch_sees_cuda():
        # ONNX Runtime on the GPU: activations bound to device memory and histogrammed there (not run on
        # these machines: onnxruntime-gpu is not installable here)
        from .device.collector import DeviceCollector

        names = list(tensors if tensors is not None else graph.activations)
        inputs = {spec.name for spec in graph.inputs}
        extended = add_outputs(graph.model, [n for n in names if n not in inputs])
        session = make_session(extended.SerializeToString(), providers, threads=ort_threads, spinning=False)
        return DeviceCollector(graph, names, bins=bins, device="cuda", session=session)
    if device is None:
        return ActivationCollector(graph, tensors, bins=bins, providers=providers, threads=threads,
                                   ort_threads=ort_threads)
    from .device.collector import DeviceCollector

    return DeviceCollector(graph, list(tensors) if tensors is not None else None, bins=bins, device=device)


def _torch_sees_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class ActivationCollector:
    """Streams batches through the FP32 model and accumulates per-tensor statistics.

    Usable piecewise (``update`` per batch) or in one go (``collect``); ``statistics`` holds
    the result at any time.

    Five things keep collection close to the cost of inference. A batch whose activations would
    exceed ``ACTIVATION_BUDGET`` is run in equal slices (an ImageNet-sized MobileNetV2 makes
    1.7 GB of activations per batch of 32: sliced, memory stays a few hundred MiB and the values
    are still in cache when the histograms read them). ONNX Runtime writes the activations into
    output buffers allocated once per input shape and reused (fresh buffers for each run cost
    more page faults than the convolutions cost time). The histograms are filled by the compiled
    kernel, which holds no GIL (:func:`quantlab.histogram.load_kernel`; loaded in the background
    when the work is large enough to repay its start-up). The histograms of a run are filled on
    ``threads`` threads: small tensors whole, large ones cut into pieces whose histograms are
    merged into the tensor's (an exact sum, so the split changes no count). And the next run's
    inference proceeds on its own thread while those histograms are filled (see ``_process``).
    """

    def __init__(self, graph: ModelGraph, tensors: Optional[Sequence[str]] = None,
                 bins: int = DEFAULT_BINS, providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None, activation_budget: int = ACTIVATION_BUDGET,
                 ort_threads: int = 0):
        self.graph = graph
        self.activation_budget = activation_budget
        names = list(tensors if tensors is not None else graph.activations)
        # Model inputs are histogrammed straight from the feeds, not echoed back by the session.
        self.input_names = [n for n in names if n in {spec.name for spec in graph.inputs}]
        extended = add_outputs(graph.model, [n for n in names if n not in self.input_names])
        # ort_threads: ONNX Runtime's intra-op threads (0: one per core); workers sharing a machine split it.
        self.session = make_session(extended.SerializeToString(), providers, threads=ort_threads, spinning=False)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.statistics = Statistics.empty(graph.sha256, names, bins)
        self.threads = max(1, threads if threads is not None else available_cpus())
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self.seconds = {"inference": 0.0, "histograms": 0.0}  # where collection time went
        self.runs = 0  # ONNX Runtime runs so far
        self._merge_lock = threading.Lock()  # merges of pieces into one run's histograms
        self._values = 0  # values histogrammed so far
        self._expected_samples: Optional[int] = None  # samples the whole collection will see, if known
        self._per_sample_values = 0.0  # measured values a sample makes (after the probe)
        self._checked = False
        # Two slots of reused output buffers (input shapes -> outputs), one shape each.
        self._buffers: list[dict[tuple, list[np.ndarray]]] = [{}, {}]
        self._runner = ThreadPoolExecutor(1, thread_name_prefix="quantlab-inference")
        # Samples per run, once the first run told how many bytes of activations a sample makes.
        # A model with a fixed batch dimension is always run whole.
        self._slice: Optional[int] = None
        self._fixed_batch = any(spec.fixed_batch is not None for spec in graph.inputs)

    def update(self, batch: Batch) -> None:
        """Run one batch (in slices if its activations would exceed the budget) and fold it in."""
        self._process([batch])

    def _process(self, batches: Iterable[Batch], done: Optional[Callable[[int], object]] = None) -> None:
        """Run and fold ``batches``; the inference of one run overlaps the histograms of the one before.

        ONNX Runtime and the compiled histogram kernel both release the GIL, so the next run's
        inference and this run's histograms share the cores (with the numpy path, ``bincount``
        holds the GIL and the histogram threads queue on it while the inference runs).
        Runs alternate between two sets of output buffers (slot = run number % 2), so a run
        never writes into buffers whose histograms are still being filled.
        """
        pending = None  # (future, inputs) of the run whose histograms come next
        for batch in batches:
            for inputs in self._runs_of(batch):
                slot, self.runs = self.runs % 2, self.runs + 1
                future = self._runner.submit(self._run, inputs, slot)
                if self._slice is None:  # the probe: its size decides how the rest is sliced
                    self._fold(future, inputs)
                    continue
                if pending is not None:
                    self._fold(*pending)
                pending = (future, inputs)
            self.statistics.num_samples += len(batch.indices)
            self.statistics.fingerprint.add(batch.inputs)
            if done is not None:
                done(len(batch.indices))
        if pending is not None:
            self._fold(*pending)

    def _runs_of(self, batch: Batch) -> Iterator[dict[str, np.ndarray]]:
        """The inputs of each ONNX Runtime run of ``batch``: a one-sample probe first (once, to
        learn a sample's activation bytes; it is folded before this generator resumes), then
        equal slices that fit the budget, or the whole batch."""
        inputs, count = batch.inputs, len(batch.indices)
        if self._slice is None and count > 1 and not self._fixed_batch:
            yield {name: value[:1] for name, value in inputs.items()}
            inputs, count = {name: value[1:] for name, value in inputs.items()}, count - 1
        if self._slice is None or self._fixed_batch or self._slice >= count:
            yield inputs
            return
        # Slices of one size (a divisor of the count): each buffer slot keeps a single shape.
        size = max(d for d in range(1, self._slice + 1) if count % d == 0)
        for start in range(0, count, size):
            yield {name: value[start:start + size] for name, value in inputs.items()}

    def _fold(self, future: Future, inputs: dict[str, np.ndarray]) -> None:
        """Wait for one run's activations and fill the histograms with them."""
        outputs = future.result()
        started = time.perf_counter()
        probe = self._slice is None
        if probe:
            count = len(next(iter(inputs.values())))
            per_sample = sum(getattr(o, "nbytes", 0) for o in outputs) / max(count, 1)
            self._slice = max(1, int(self.activation_budget // max(per_sample, 1)))
        named = list(zip(self.output_names, outputs))
        named += [(name, np.asarray(inputs[name])) for name in self.input_names]
        tensors = self.statistics.tensors
        if not self._checked:
            # Tensors whose type the graph did not state: keep the floating-point ones only.
            for name, value in named:
                if name in tensors and np.asarray(value).dtype.kind != "f":
                    del tensors[name]
            self._checked = True
        work = [(name, tensors[name], flat_values(value)) for name, value in named if name in tensors]
        values = sum(flat.size for _, _, flat in work)
        if probe:
            self._per_sample_values = values / max(count, 1)
        self._ask_for_kernel(values)
        if self._pool is None:
            for _, hist, flat in work:
                hist.update(flat)
        else:
            tasks = [self._pool.submit(self._fold_pieces, group) for group in self._pieces(work, values)]
            for task in tasks:
                task.result()
        self.seconds["histograms"] += time.perf_counter() - started

    def _pieces(self, work: list, values: int) -> list[list[tuple[TensorHistogram, np.ndarray, bool]]]:
        """(histogram, piece of its tensor's values, whether the piece is the whole tensor) for one
        run, in ``threads * PIECES_PER_THREAD`` groups of about equal size: pieces of at most
        ``values / groups`` values (at least MIN_PIECE), largest first, each into the group that
        has least so far."""
        groups = self.threads * PIECES_PER_THREAD
        size = max(MIN_PIECE, -(-values // groups))
        pieces = [(hist, flat[start:start + size], flat.size <= size)
                  for _, hist, flat in work for start in range(0, flat.size, size)]
        pieces.sort(key=lambda piece: -piece[1].size)
        heap = [(0, index) for index in range(min(groups, len(pieces)))]
        out: list[list[tuple[TensorHistogram, np.ndarray, bool]]] = [[] for _ in heap]
        for piece in pieces:
            load, index = heapq.heappop(heap)
            out[index].append(piece)
            heapq.heappush(heap, (load + piece[1].size, index))
        return out

    def _fold_pieces(self, group: list[tuple[TensorHistogram, np.ndarray, bool]]) -> None:
        """On a worker thread: fold each piece into its histogram. A whole tensor is folded in
        directly (no other thread touches that histogram in this run); a piece of a larger one
        is folded into a histogram of its own, then merged under a lock (exact, in any order)."""
        for hist, piece, whole in group:
            if whole:
                hist.update(piece)
                continue
            part = TensorHistogram(hist.bins)
            part.update(piece)
            with self._merge_lock:
                hist.merge(part)

    def _ask_for_kernel(self, values: int) -> None:
        """Start loading the compiled kernel once the work is known to be large enough."""
        self._values += values
        expected = max(self._values, self._per_sample_values * (self._expected_samples or 0))
        if expected >= KERNEL_MIN_VALUES and histogram.kernel_info()["state"] == "unloaded":
            histogram.load_kernel(wait=False)

    def _run(self, inputs: dict[str, np.ndarray], slot: int) -> list[np.ndarray]:
        """All requested outputs of one run, written into the reused buffers of ``slot``."""
        started = time.perf_counter()
        shapes = tuple((name, np.shape(value)) for name, value in sorted(inputs.items()))
        try:
            buffers = self._buffers[slot].get(shapes)
            if buffers is not None:
                binding = self.session.io_binding()
                feeds = {name: np.ascontiguousarray(value) for name, value in inputs.items()}  # alive until run
                for name, value in feeds.items():
                    binding.bind_cpu_input(name, value)
                for name, buffer in zip(self.output_names, buffers):
                    binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(buffer))
                self.session.run_with_iobinding(binding)
                outputs = buffers
            else:
                # First run of this shape in this slot: drop the slot's old buffers, let ONNX
                # Runtime allocate, and keep its arrays as the slot's buffers from now on.
                self._buffers[slot] = {}
                outputs = self.session.run(self.output_names,
                                           {k: np.ascontiguousarray(v) for k, v in inputs.items()})
                if all(isinstance(o, np.ndarray) and o.flags.c_contiguous and o.flags.writeable for o in outputs):
                    self._buffers[slot][shapes] = outputs
        except Exception as exc:  # ORT's InvalidArgument, Fail, ...
            message = str(exc).strip().splitlines()[-1]
            raise DataError(f"ONNX Runtime rejected a batch of the data: {message}") from exc
        self.seconds["inference"] += time.perf_counter() - started
        return outputs

    def close(self) -> None:
        """Release the worker threads and the output buffers."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._runner.shutdown()
        self._buffers = [{}, {}]

    def collect(self, batches: Iterable[Batch], total: Optional[int] = None,
                progress: bool = True) -> Statistics:
        self._expected_samples = total
        with tqdm(total=total, unit="sample", desc="collecting", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            self._process(batches, bar.update)
        self.close()
        return self.statistics


def available_cpus() -> int:
    """CPUs this process may run on (the container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
