"""The calibration pipeline as a Python API: data -> statistics -> ranges -> files.

    from quantlab import calibrate
    result = calibrate("model.onnx", data="calib/", method="entropy", output="model.cache")

The CLI (:mod:`quantlab.cli`) is a thin layer over these functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from tqdm import tqdm

from . import defaults
from .atomic import OutputSet, check_outputs
from .collector import ActivationCollector
from .errors import CalibratorError, DataError, QuantlabError, StatisticsError
from .executors import Executor, executor_scope, plan_shards, report_progress
from .executors.shipping import ModelRef, portable_source, worker_cached
from .formats.trtcache import DEFAULT_TRT_VERSION, format_trt_cache, make_header
from .graph import ModelGraph, load_model
from .histogram import DEFAULT_BINS, check_bins
from .plugins import detect_dataset_adapter, get_calibrator, get_dataset_adapter
from .preprocess import (
    Preprocess,
    check_batch_size,
    describe_scaling,
    first_sample_dtype,
    iterate_batches,
    select_indices,
)
from .statistics import Statistics, merge_files
from .table import CalibrationTable, timestamp, versions
from .weights import weight_ranges

ModelSource = Union[str, Path, ModelGraph]


@dataclass
class DataSpec:
    """Where the samples come from and how they become model inputs."""

    source: Any = None  # path, "module:function", or a dataset object; None = embedded default
    data_format: Optional[str] = None  # adapter name; None = detect
    preprocess: Preprocess = field(default_factory=Preprocess)
    num_samples: Optional[int] = None
    batch_size: int = 32
    seed: int = 0


def open_dataset(source: Any, data_format: Optional[str], graph: ModelGraph):
    """Instantiate the dataset adapter for ``source`` (an adapter object passes through)."""
    if hasattr(source, "__getitem__") and hasattr(source, "__len__") and not isinstance(source, (str, Path)):
        return source
    source = str(source)
    cls = get_dataset_adapter(data_format) if data_format else detect_dataset_adapter(source)
    if getattr(cls, "name", "") == "images":
        channels = _channels(graph)
        return cls(source, channels=channels)
    if getattr(cls, "name", "") == "npy":
        return cls(source, input_names=[s.name for s in graph.inputs])
    return cls(source)


def _channels(graph: ModelGraph) -> int:
    from .preprocess import model_layout

    spec = graph.inputs[0]
    shape = spec.sample_shape
    if len(shape) != 3:
        return 3
    channels = shape[0] if model_layout(spec) == "NCHW" else shape[-1]
    return channels if isinstance(channels, int) else 3


def resolve_model(model: Optional[ModelSource]) -> ModelGraph:
    if isinstance(model, ModelGraph):
        return model
    return load_model(model if model is not None else defaults.MODEL)


def collect_statistics(model: Optional[ModelSource], data: DataSpec, *, bins: int = DEFAULT_BINS,
                       providers: Optional[Sequence[str]] = None, threads: Optional[int] = None,
                       tensors: str = "all", progress: bool = True,
                       executor: Union[Executor, str, None] = None) -> Statistics:
    """Run the FP32 model over the selected samples and return statistics of ``tensors``
    (a scope of :func:`select_tensors`).

    The samples are cut into shards of whole batches (:func:`~quantlab.executors.plan_shards`),
    each shard -> :class:`Statistics` on a worker of ``executor`` (``local``, the default: this
    process; ``processes``; ``ray``; a name or an :class:`~quantlab.executors.Executor`), merged in
    shard order. Histograms on the power-of-two grid and the sample fingerprint merge exactly, so
    the result is the same, byte for byte, for every executor and worker count. Workers open the
    data themselves (:class:`CollectShard`); ``threads``: histogram threads of each worker
    (default: its share of the CPUs).
    """
    graph = resolve_model(model)
    check_bins(bins)
    check_batch_size(data.batch_size)
    data.preprocess.check_against(graph.inputs)
    source = data.source if data.source is not None else defaults.CALIBRATION_DATA
    if data.source is None and model is not None and not _is_default_model(graph):
        raise DataError("no calibration data given for this model: set `data` (a path or a dataset)", params=("data",))
    select_tensors(graph, tensors)  # an unknown scope is refused before any work
    spec = replace(data, source=portable_source(source))
    ref = ModelRef.of(graph)
    with executor_scope(executor) as runner:
        described = runner.map(describe_samples, [DataTask(ref, spec)])[0]
        batch_size = data.batch_size
        fixed = graph.inputs[0].fixed_batch if graph.inputs else None
        if fixed is not None and fixed != batch_size:
            if described.count % fixed:
                raise DataError(
                    f"the model's batch size is fixed at {fixed}; use a sample count that is a "
                    f"multiple of it (num_samples), or export the model with a dynamic batch axis",
                    params=("num_samples",))
            batch_size = fixed
        if threads is not None and threads < 1:
            raise QuantlabError(f"threads must be at least 1, got {threads}", params=("threads",))
        shards = plan_shards(described.count, batch_size, runner.shards(-(-described.count // batch_size)))
        tasks = [CollectShard(ref, spec, start, stop, batch_size, bins, tuple(providers or ()) or None, tensors,
                              threads or runner.task_threads, runner.task_threads) for start, stop in shards]
        stats: Optional[Statistics] = None
        bar = tqdm(total=described.count, unit="sample", desc="collecting", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)
        with bar, contextlib.closing(runner.imap(collect_shard, tasks, bar.update)) as parts:
            for part in parts:  # in shard order, as they arrive: the driver holds one shard's histograms at a time
                if stats is None:
                    stats = part
                else:
                    stats.merge(part)
                    _merge_shapes(stats.input_shapes, part.input_shapes)
    if graph.inputs:
        stats.scaling = describe_scaling(described.first_dtype, graph.inputs[0], data.preprocess)
    return stats


@dataclass
class DataTask:
    """A data set as a worker opens it: the model (for the adapter's settings) and the data spec."""

    model: ModelRef
    data: DataSpec

    def open(self):
        """The data set opened in this process (kept for the next shard of the same data)."""
        graph = self.model.load()
        source, data_format = self.data.source, self.data.data_format
        if not isinstance(source, (str, Path)):  # a data set object travelled with the task
            return open_dataset(source, data_format, graph)
        return worker_cached("dataset", (str(source), data_format, graph.sha256),
                             lambda: open_dataset(source, data_format, graph))

    def selection(self, dataset) -> np.ndarray:
        """The seeded selection of sample indices, the same on every worker."""
        return select_indices(len(dataset), self.data.num_samples, self.data.seed)


@dataclass
class SampleCount:
    count: int  # samples selected (num_samples of the data set's length, by seed)
    first_dtype: Any  # dtype of the first selected sample's first input (how it is scaled)


@dataclass
class CollectShard:
    """The work unit of collection: samples ``[start, stop)`` of the seeded selection -> Statistics."""

    model: ModelRef
    data: DataSpec
    start: int
    stop: int
    batch_size: int
    bins: int
    providers: Optional[tuple]
    tensors: str
    threads: Optional[int]  # histogram threads (None: every CPU)
    ort_threads: Optional[int]  # ONNX Runtime intra-op threads (None: its default, every core)


def describe_samples(task: DataTask) -> SampleCount:
    """On a worker: how many samples the spec selects, and the first one's dtype (for the summary)."""
    dataset = task.open()
    indices = task.selection(dataset)
    graph = task.model.load()
    dtype = first_sample_dtype(dataset, indices, graph.inputs[0].name) if graph.inputs else None
    return SampleCount(len(indices), dtype)


def collect_shard(task: CollectShard) -> Statistics:
    """On a worker: the statistics of one shard (reports its samples with ``report_progress``)."""
    graph = task.model.load()
    data = DataTask(task.model, task.data)
    dataset = data.open()
    indices = data.selection(dataset)[task.start:task.stop]
    collector = ActivationCollector(graph, select_tensors(graph, task.tensors), bins=task.bins,
                                    providers=task.providers, threads=task.threads, ort_threads=task.ort_threads or 0)
    shapes: dict[str, list] = {}
    batches = _recording_shapes(iterate_batches(dataset, indices, graph.inputs, task.data.preprocess,
                                                task.batch_size), shapes)
    stats = collector.collect(_reported(batches), total=len(indices), progress=False)
    stats.input_shapes = shapes
    return stats


def _reported(batches: Iterable) -> Iterator:
    """Pass batches through, reporting each one's samples as progress once the next is asked for."""
    for batch in batches:
        yield batch
        report_progress(len(batch.indices))


def _merge_shapes(shapes: dict, other: dict) -> None:
    """Fold a later shard's input shapes in: the first 8 distinct shapes in sample order, as one
    process would have noted them (:func:`_recording_shapes`)."""
    for name, seen_there in other.items():
        seen = shapes.setdefault(name, [])
        for shape in seen_there:
            if shape not in seen and len(seen) < 8:
                seen.append(shape)


def _recording_shapes(batches: Iterable, shapes: dict) -> Iterator:
    """Pass batches through, noting each input's per-sample shapes (the calibrated sizes of a
    model with dynamic axes: what the engine's optimization profile should be built for)."""
    for batch in batches:
        for name, array in batch.inputs.items():
            seen = shapes.setdefault(name, [])
            shape = list(array.shape[1:])
            if shape not in seen and len(seen) < 8:
                seen.append(shape)
        yield batch


TENSOR_SCOPES = ("all", "qdq")


def select_tensors(graph: ModelGraph, scope: str = "all") -> list[str]:
    """The activations to measure: ``all`` of them, or only the ``qdq`` ones.

    ``all`` is what TensorRT's own calibrators write and what an implicit INT8 build (TensorRT
    8.x-10.x, ``trtexec --int8 --calib``) looks up. ``qdq`` is only the activations a Q/DQ model
    quantizes - the inputs of Conv, ConvTranspose, Gemm and MatMul - which is all an explicit
    build (TensorRT 10/11) needs. Skipping the rest (e.g. a Conv output that only feeds a Clip)
    lets ONNX Runtime fuse those ops again and leaves far fewer values to histogram.
    """
    if scope == "all":
        return list(graph.activations)
    if scope == "qdq":
        wanted = set(graph.quantizable)
        return [name for name in graph.activations if name in wanted]
    raise QuantlabError(f"unknown tensor scope {scope!r}; choose one of {', '.join(TENSOR_SCOPES)}")


def _is_default_model(graph: ModelGraph) -> bool:
    return graph.path is not None and graph.path.resolve() == Path(defaults.MODEL).resolve()


def calibrate_statistics(graph: ModelGraph, stats: Statistics, method: str = "entropy",
                         params: Optional[dict] = None, *, allow_nonfinite: bool = False,
                         zero_amax: Optional[float] = None, data: Optional[DataSpec] = None,
                         progress: bool = False) -> CalibrationTable:
    """Turn statistics into a table: amax per activation (by ``method``) and per weight channel.

    ``method="auto"`` chooses per tensor among every built-in method by the error each range
    causes downstream (:mod:`quantlab.tune.auto`); it reads samples again, so it needs ``data``,
    the calibration data the statistics came from (``params``: ``samples``, how many).

    Degenerate tensors are decided here, never written silently:
    * NaN/Inf seen in a tensor: an error unless ``allow_nonfinite``, which calibrates it from
      its finite values and records a note;
    * a tensor that was all zeros: an error unless ``zero_amax`` is given, which it then gets
      (any scale represents 0 exactly; the note says so).
    """
    if stats.model_sha256 != graph.sha256:
        raise StatisticsError(
            f"the statistics were collected on another model (sha256 {stats.model_sha256[:12]}..., "
            f"this model {graph.sha256[:12]}...); collect them again for this model"
        )
    if method == "auto":
        return _auto_table(graph, stats, params, data, allow_nonfinite, zero_amax, progress)
    calibrator = get_calibrator(method, **(params or {}))
    bad = {n: h for n, h in stats.tensors.items() if h.nan_count or h.inf_count}
    if bad and not allow_nonfinite:
        listed = ", ".join(f"{n!r} ({h.nan_count} NaN, {h.inf_count} Inf)" for n, h in list(bad.items())[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise StatisticsError(
            f"NaN/Inf activations in {len(bad)} tensor(s): {listed}{more}; check the input data "
            "and preprocessing, or set allow_nonfinite to calibrate from the finite values",
            params=("allow_nonfinite",))
    zeros = [n for n, h in stats.tensors.items() if h.max_abs == 0]
    if zeros and zero_amax is None:
        shown = ", ".join(repr(n) for n in zeros[:3]) + (f" and {len(zeros) - 3} more" if len(zeros) > 3 else "")
        raise StatisticsError(
            f"{len(zeros)} tensor(s) were all zero on the calibration data ({shown}), so they "
            "have no range; use more varied data, or set zero_amax to give them one",
            params=("zero_amax",))
    if zero_amax is not None and not (math.isfinite(zero_amax) and zero_amax > 0):
        raise StatisticsError(f"zero_amax must be finite and positive, got {zero_amax}", params=("zero_amax",))

    activations: dict[str, float] = {}
    notes: dict[str, str] = {}
    for name, hist in stats.tensors.items():
        if hist.max_abs == 0:
            activations[name] = float(zero_amax)
            notes[name] = "all zero on the calibration data; amax set by zero_amax"
            continue
        try:
            if hasattr(calibrator, "calibrate"):
                amax = float(calibrator.calibrate(hist))
            else:
                amax = float(calibrator.compute_amax(hist.counts, hist.edges))
        except (ValueError, TypeError) as exc:
            raise CalibratorError(f"method {method!r} cannot calibrate {name!r}: {exc}") from exc
        if not (math.isfinite(amax) and amax > 0):
            raise StatisticsError(
                f"method {method!r} returned amax {amax} for {name!r} (max |x| {hist.max_abs}); "
                "this is a bug in the calibrator, try another --method"
            )
        activations[name] = amax
        if name in bad:
            notes[name] = f"{hist.nan_count} NaN and {hist.inf_count} Inf values ignored"
    used_params = calibrator.params() if hasattr(calibrator, "params") else dict(params or {})
    provenance = {
        "model": {"sha256": graph.sha256, "path": str(graph.path) if graph.path else None,
                  **({"normalisation": graph.normalisation} if graph.normalisation else {}),
                  **({"data_independent_tensors": len(graph.data_independent)} if graph.data_independent else {})},
        "data": {"fingerprint": stats.fingerprint.hexdigest, "num_samples": stats.num_samples,
                 **({"scaling": stats.scaling} if stats.scaling else {}),
                 **({"input_shapes": stats.input_shapes} if stats.input_shapes else {}),
                 "histogram_bins": stats.bins, "sample_digests": stats.fingerprint.sample_digests()},
        "versions": versions(),
        "created": timestamp(),
    }
    return CalibrationTable(method, used_params, activations, weight_ranges(graph), provenance, notes)


def _auto_table(graph: ModelGraph, stats: Statistics, params: Optional[dict], data: Optional[DataSpec],
                allow_nonfinite: bool, zero_amax: Optional[float], progress: bool) -> CalibrationTable:
    from .tune.auto import DEFAULT_SAMPLES, choose_ranges

    if data is None or (data.source is None and not _is_default_model(graph)):
        raise DataError("method 'auto' judges ranges on calibration samples, so it needs the calibration data "
                        "the statistics came from: give `data` too", params=("data",))
    params = dict(params or {})
    samples = params.pop("samples", DEFAULT_SAMPLES)
    if params:
        raise CalibratorError(f"method 'auto' takes only the parameter samples, not {', '.join(sorted(params))}")
    try:
        samples = int(samples)
    except (TypeError, ValueError):
        raise CalibratorError(f"method 'auto': samples must be a positive integer, got {samples!r}") from None
    if samples < 1:
        raise CalibratorError(f"method 'auto': samples must be a positive integer, got {samples}")
    table, _ = choose_ranges(graph, stats, data, samples=samples, allow_nonfinite=allow_nonfinite,
                             zero_amax=zero_amax, progress=progress)
    return table


def default_trt_algorithm(method: str, params: Optional[dict] = None) -> str:
    if method == "auto":  # its ranges come from several methods; TensorRT reads any of them alike
        return "EntropyCalibration2"
    calibrator = get_calibrator(method, **(params or {}))
    return getattr(calibrator, "trt_algorithm", "EntropyCalibration2")


@dataclass
class CalibrationResult:
    table: CalibrationTable
    statistics: Statistics
    cache_path: Optional[Path]
    table_path: Optional[Path]
    seconds: float


def calibrate(model: Optional[ModelSource] = None, data: Optional[DataSpec] = None, *,
              method: str = "entropy", params: Optional[dict] = None,
              output: Optional[Union[str, Path]] = None, table: Optional[Union[str, Path]] = None,
              stats: Optional[Sequence[Union[str, Path]]] = None,
              save_stats: Optional[Union[str, Path]] = None,
              trt_version: tuple = DEFAULT_TRT_VERSION, trt_algorithm: Optional[str] = None,
              bins: int = DEFAULT_BINS, providers: Optional[Sequence[str]] = None,
              threads: Optional[int] = None, tensors: str = "all", allow_nonfinite: bool = False,
              zero_amax: Optional[float] = None, progress: bool = True,
              executor: Union[Executor, str, None] = None) -> CalibrationResult:
    """Calibrate ``model`` (the embedded default when None) and write the cache and table.

    ``output`` is the TensorRT cache path (``None``: no files); ``table`` the JSON table path
    (default: next to the cache, ``<stem>.quantlab.json``). ``stats`` skips collection and
    calibrates from statistics files (merged when several). ``executor`` runs the collection
    (:func:`collect_statistics`; the cache is the same, byte for byte, whichever runs it).
    """
    started = time.perf_counter()
    graph = resolve_model(model)
    data = data or DataSpec()
    header = make_header(trt_version, trt_algorithm or default_trt_algorithm(method, params))
    inputs = [graph.path, data.source, *(stats or ())]
    if output is None and table is not None:
        raise QuantlabError("a table is only written beside a cache: give `output` too", params=("table", "output"))
    if output is not None and table is None:
        table = table_path_for(output)
    check_outputs({"output": output, "table": table, "save_stats": save_stats}, inputs)
    if stats:
        statistics = merge_files(stats)
    else:
        statistics = collect_statistics(graph, data, bins=bins, providers=providers, threads=threads,
                                        tensors=tensors, progress=progress, executor=executor)
    result_table = calibrate_statistics(graph, statistics, method, params, allow_nonfinite=allow_nonfinite,
                                        zero_amax=zero_amax, data=data, progress=progress)
    result_table.provenance["trt_cache_header"] = header
    cache_path = table_path = None
    with OutputSet(inputs) as outputs:
        if save_stats is not None:
            outputs.add(save_stats, statistics.to_bytes())
        if output is not None:
            cache_path, table_path = stage_cache_and_table(outputs, result_table, header, output, table)
        outputs.commit()
    return CalibrationResult(result_table, statistics, Path(cache_path) if cache_path else None,
                             Path(table_path) if table_path else None, time.perf_counter() - started)


def stage_cache_and_table(outputs: OutputSet, table: CalibrationTable, header: str, cache_path: Union[str, Path],
                          table_path: Union[str, Path]) -> tuple[Path, Path]:
    """Stage a TensorRT cache with ``header`` and its table in ``outputs`` (committed by the caller).

    The table records the header and the cache's SHA-256, so a table that does not belong to the
    cache beside it (a run killed between the two renames) is recognisable.
    """
    cache_text = format_trt_cache(table.activations, header)
    table.provenance["trt_cache_header"] = header
    table.provenance["trt_cache_sha256"] = hashlib.sha256(cache_text.encode("utf-8")).hexdigest()
    table.check_writable_ranges()
    return outputs.add_text(cache_path, cache_text), outputs.add_text(table_path, table.to_json())


def table_path_for(cache_path: Union[str, Path]) -> Path:
    path = Path(cache_path)
    return path.with_name(path.stem + ".quantlab.json")
