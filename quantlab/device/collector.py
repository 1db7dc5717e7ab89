"""Collection on a torch device: the FP32 graph runs there, every measured activation is reduced
to its histogram there, and only histograms come back to the host.

Runs have one size whatever the batch size: samples are regrouped into runs of ``run_size``
(the last run takes what is left), so the activations of a sample, and with them the statistics,
do not depend on how the data was batched - a convolution algorithm may round differently at
another batch size. The run size is what fits the memory budget (``memory_fraction`` of the free
device memory, measured on a one-sample probe run that is not counted), at most ``MAX_RUN``. A run's
histograms come back while the next run computes (one copy per run, then merged on the host).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Optional

import numpy as np
from tqdm import tqdm

from ..errors import QuantlabError
from ..graph import ModelGraph
from ..histogram import DEFAULT_BINS
from ..preprocess import Batch
from ..statistics import Statistics
from . import histogram
from .graph import TorchGraph, load_torch, resolve_device

MEMORY_FRACTION = 0.5  # of the device memory free at the start
CPU_BUDGET = 1 << 30  # bytes of a run's tensors on a CPU device
MAX_RUN = 256  # samples per run at most: more runs let the host prepare one while the device computes another


class DeviceCollector:
    """The :class:`~quantlab.collector.ActivationCollector` of a torch device (same ``update``,
    ``collect``, ``statistics``, ``seconds``)."""

    def __init__(self, graph: ModelGraph, tensors: Optional[list[str]] = None, bins: int = DEFAULT_BINS,
                 device: str = "cuda", memory_fraction: float = MEMORY_FRACTION, run_size: Optional[int] = None,
                 session=None):
        """``session``: an ONNX Runtime session on its CUDA provider that returns every measured tensor
        (``--provider CUDAExecutionProvider``); it runs the graph instead of torch (:class:`OrtCudaGraph`)."""
        self.torch = load_torch()
        self.device = resolve_device(device)
        self.graph = graph
        self.torch_graph = TorchGraph(graph.model, self.device) if session is None else OrtCudaGraph(
            session, graph, self.device)
        names = list(tensors if tensors is not None else graph.activations)
        self.statistics = Statistics.empty(graph.sha256, names, bins)
        self.bins = bins
        self.memory_fraction = memory_fraction
        self.run_size = run_size
        self.fixed_batch = next((spec.fixed_batch for spec in graph.inputs if spec.fixed_batch is not None), None)
        self.seconds = {"inference": 0.0, "histograms": 0.0}  # device work; the copy back and merges
        self.runs = 0
        self.budget_bytes: Optional[int] = None
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_count = 0
        self._checked = False
        self._waiting: list = []  # (name, fold) of the run launched last, not yet merged

    def update(self, batch: Batch) -> None:
        """Take one batch; it runs once ``run_size`` samples are waiting (see :meth:`flush`)."""
        count = len(batch.indices)
        self.statistics.num_samples += count
        self.statistics.fingerprint.add(batch.inputs)
        if self.run_size is None:
            self.run_size = self._plan(batch.inputs)
        self._pending.append(batch.inputs)
        self._pending_count += count
        while self._pending_count >= self.run_size:
            self._run(self._take(self.run_size))

    def flush(self) -> None:
        """Run the samples still waiting (fewer than a run)."""
        if self._pending_count:
            self._run(self._take(self._pending_count))

    def _take(self, count: int) -> dict[str, np.ndarray]:
        joined = {name: np.concatenate([p[name] for p in self._pending]) for name in self._pending[0]}
        taken = {name: value[:count] for name, value in joined.items()}
        rest = {name: value[count:] for name, value in joined.items()}
        self._pending_count -= count
        self._pending = [rest] if self._pending_count else []
        return taken

    def _plan(self, inputs: dict[str, np.ndarray]) -> int:
        """Samples per run: the fixed batch of the model, or what fits the memory budget."""
        if self.fixed_batch is not None:
            return self.fixed_batch
        torch = self.torch
        probe = {name: value[:1] for name, value in inputs.items()}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            free, _ = torch.cuda.mem_get_info(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._execute(probe, fold=True)
            torch.cuda.synchronize(self.device)
            per_sample = max(1, torch.cuda.max_memory_allocated(self.device) - base)
            self.budget_bytes = int(free * self.memory_fraction)
        else:
            per_sample = max(1, self._activation_bytes(probe))
            self.budget_bytes = CPU_BUDGET
        return int(max(1, min(MAX_RUN, self.budget_bytes // per_sample)))

    def _activation_bytes(self, probe: dict[str, np.ndarray]) -> int:
        """Twice the bytes of every tensor one run of ``probe`` makes (inputs included): the tensors, and
        the fold's scratch of about the same size."""
        sizes = []
        self._execute(probe, fold=False, sizes=sizes)
        return 2 * sum(sizes)

    def _execute(self, inputs: dict[str, np.ndarray], fold: bool, sizes: Optional[list] = None) -> list:
        torch, tensors, bins = self.torch, self.statistics.tensors, self.bins
        feeds = {name: torch.from_numpy(np.ascontiguousarray(value)).to(self.device, non_blocking=True)
                 for name, value in inputs.items()}
        folds: list = []

        def tap(name: str, value) -> None:
            if sizes is not None:
                sizes.append(value.numel() * value.element_size())
            if fold and name in tensors:
                folds.append((name, value.dtype, histogram.fold(value, bins)))

        self.torch_graph.run(feeds, tap=tap)
        return folds

    def _run(self, inputs: dict[str, np.ndarray]) -> None:
        """Launch one run's graph and folds; then bring back the run before it. The device works
        through this run while the host merges the last one and prepares the next batch."""
        started = time.perf_counter()
        folds = self._execute(inputs, fold=True)
        tensors = self.statistics.tensors
        if not self._checked:  # tensors whose type the graph did not state: the floating-point ones only
            for name, dtype, _ in folds:
                if not dtype.is_floating_point:
                    tensors.pop(name, None)
            self._checked = True
        launched = [(name, f) for name, _, f in folds if name in tensors]
        self.seconds["inference"] += time.perf_counter() - started
        self._merge_waiting()
        self._waiting = launched
        self.runs += 1

    def _merge_waiting(self) -> None:
        """Bring back the histograms of the run launched last (waits for the device) and merge them."""
        if not self._waiting:
            return
        started = time.perf_counter()
        host = histogram.to_host([f for _, f in self._waiting], self.bins)
        copied = time.perf_counter()
        for (name, _), hist in zip(self._waiting, host):
            self.statistics.tensors[name].merge(hist)
        self._waiting = []
        self.seconds["inference"] += copied - started
        self.seconds["histograms"] += time.perf_counter() - copied

    def close(self) -> None:
        """Run what is still waiting and merge every histogram: the statistics are complete after this."""
        self.flush()
        self._merge_waiting()

    def collect(self, batches: Iterable[Batch], total: Optional[int] = None, progress: bool = True) -> Statistics:
        with tqdm(total=total, unit="sample", desc=f"collecting on {self.device}", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for batch in batches:
                self.update(batch)
                bar.update(len(batch.indices))
            self.close()
        return self.statistics


class OrtCudaGraph:
    """ONNX Runtime's CUDA execution provider as the graph runner of the device collector.

    Inputs and outputs are bound to device memory (I/O binding), so activations stay on the GPU; each
    one reaches torch through DLPack, without a copy, and is folded there as torch's own are. Written
    against ONNX Runtime's documented API and not run on these machines: onnxruntime-gpu is not
    installable here (tests/test_device.py skips its test, saying so)."""

    def __init__(self, session, graph: ModelGraph, device):
        self.session, self.device = session, device
        self.input_names = [spec.name for spec in graph.inputs]
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, feeds: dict, keep=(), tap=None) -> dict:
        torch = load_torch()
        binding = self.session.io_binding()
        index = self.device.index or 0
        for name, tensor in feeds.items():
            tensor = tensor.contiguous()
            binding.bind_input(name, "cuda", index, np.dtype(str(tensor.dtype).removeprefix("torch.")),
                               list(tensor.shape), tensor.data_ptr())
            if tap is not None:
                tap(name, tensor)
        for name in self.output_names:
            binding.bind_output(name, "cuda", index)
        self.session.run_with_iobinding(binding)
        outputs = {}
        for name, value in zip(self.output_names, binding.get_outputs()):
            if not hasattr(value, "to_dlpack"):
                raise QuantlabError("this onnxruntime cannot hand its device outputs to torch (OrtValue.to_dlpack is "
                                    "missing); use `device` cuda (torch runs the graph) instead of the CUDA provider",
                                    params=("device",))
            outputs[name] = torch.from_dlpack(value.to_dlpack())
            if tap is not None:
                tap(name, outputs[name])
        return outputs
