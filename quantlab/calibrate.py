"""The calibration pipeline as a Python API: data -> statistics -> ranges -> files.

    from quantlab import DataSpec, Method, calibrate
    result = calibrate("model.onnx", DataSpec("calib/"), Method("percentile", {"p": 99.99}), output="model.cache")

Three stages, each a function of its own so that any of them can be run alone: collection
(:func:`collect_statistics`: the FP32 model over the samples, on any executor), ranges
(:func:`calibrate_statistics`: a range chooser over the statistics) and files
(:func:`stage_cache_and_table`). What they are told comes in small option objects
(:class:`CollectOptions`, :class:`RangePolicy`, :class:`CalibrationOutput`) that the CLI fills from
its flags and a Python user builds directly.

Range choosers are plugins of the ``quantlab.calibrators`` entry-point group. A per-tensor
calibrator (histogram in, amax out) is wrapped here; a chooser that decides every range at once
(``auto``, in :mod:`quantlab.tune.auto`) implements :class:`RangeChooser` and is handed a
:class:`RangeJob`. The pipeline calls both the same way and imports neither: the layers above it
(evaluation, tune) plug into it, never the other way round.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Protocol, Union, runtime_checkable

from tqdm import tqdm

from .atomic import OutputSet, check_outputs
from .collector import make_collector
from .corrections import BiasCorrection, correct_biases
from .errors import CalibratorError, DataError, QuantlabError, StatisticsError
from .executors import Executor, executor_scope, plan_shards, report_progress
from .executors.shipping import ModelRef, portable_source
from .formats.trtcache import DEFAULT_TRT_VERSION, format_trt_cache, make_header
from .graph import ModelGraph
from .histogram import DEFAULT_BINS, check_bins
from .plugins import get_calibrator
from .preprocess import check_batch_size, describe_scaling, first_sample_dtype, iterate_batches
from .qdq import QdqOptions, QdqReport, export_qdq, measured_ranges, quantized_layers
from .statistics import Statistics, merge_files
from .table import CalibrationTable, timestamp, versions
from .weights import weight_ranges
from .workload import DataSpec, DataTask, ModelSource, data_source, resolve_model, table_path_for

TENSOR_SCOPES = ("all", "qdq")
PathLike = Union[str, Path]


def method_label(method: str, params: Mapping) -> str:
    """How a method and its parameters are named in tables, sweeps and reports: ``percentile(p=99.9)``."""
    return f"{method}({', '.join(f'{k}={v}' for k, v in params.items())})" if params else method


@dataclass(frozen=True)
class Method:
    """A range chooser by name, with its parameters: ``Method("percentile", {"p": 99.9})``."""

    name: str = "entropy"
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:  # a copy: the caller's dict may change later; None means none
        object.__setattr__(self, "params", dict(self.params or {}))

    @classmethod
    def of(cls, method: Union[str, tuple, Method]) -> Method:
        """A method from its name, a ``(name, params)`` pair, or a Method."""
        if isinstance(method, Method):
            return method
        if isinstance(method, str):
            return cls(method)
        return cls(*method)

    @property
    def label(self) -> str:
        return method_label(self.name, self.params)


@dataclass(frozen=True)
class CollectOptions:
    """How statistics are collected: histogram ``bins`` (a power of two), which ``tensors`` (``all``
    for an implicit TensorRT build, ``qdq`` for the inputs a Q/DQ model quantizes), ONNX Runtime
    ``providers``, and histogram ``threads`` per worker (None: its share of the CPUs). No result
    depends on ``threads``."""

    bins: int = DEFAULT_BINS
    tensors: str = "all"
    providers: Optional[tuple[str, ...]] = None
    threads: Optional[int] = None

    def __post_init__(self) -> None:  # a list from a caller becomes a tuple: the options stay immutable
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers) or None)  # none given: the default


@dataclass(frozen=True)
class RangePolicy:
    """What to do with degenerate tensors instead of writing a bad scale: NaN/Inf seen
    (``allow_nonfinite`` calibrates from the finite values, else an error), all zeros (``zero_amax``
    gives them that range, else an error)."""

    allow_nonfinite: bool = False
    zero_amax: Optional[float] = None


@dataclass(frozen=True)
class CalibrationOutput:
    """The files of a calibration: the TensorRT ``cache`` (TensorRT <= 10), the typed Q/DQ model
    ``qdq`` (TensorRT 10/11; placed and typed as ``qdq_options`` say), at least one of the two; the
    quantlab ``table`` (default beside the cache, or the Q/DQ model:
    :func:`~quantlab.workload.table_path_for`), the collected ``stats`` (optional), and the cache
    header's TensorRT version and algorithm (default: the method's)."""

    cache: Optional[PathLike] = None
    table: Optional[PathLike] = None
    stats: Optional[PathLike] = None
    trt_version: tuple = DEFAULT_TRT_VERSION
    trt_algorithm: Optional[str] = None
    qdq: Optional[PathLike] = None
    qdq_options: QdqOptions = QdqOptions()

    def __post_init__(self) -> None:
        if self.cache is None and self.qdq is None:
            raise QuantlabError("a calibration output needs a cache path, a Q/DQ model path or both",
                                params=("output",))

    @classmethod
    def of(cls, output: Union[PathLike, CalibrationOutput, None]) -> Optional[CalibrationOutput]:
        """An output from a cache path (the rest default) or a CalibrationOutput; None stays None."""
        if output is None or isinstance(output, CalibrationOutput):
            return output
        return cls(output)

    @property
    def table_path(self) -> Path:
        if self.table is not None:
            return Path(self.table)
        return table_path_for(self.cache if self.cache is not None else self.qdq)


@dataclass(frozen=True)
class RangeJob:
    """What a whole-table range chooser is handed: the model, its statistics, the degenerate-tensor
    policy, the calibration data the statistics came from (``auto`` reads samples again)."""

    graph: ModelGraph
    stats: Statistics
    policy: RangePolicy
    data: Optional[DataSpec]
    progress: bool = False
    providers: Optional[tuple] = None  # where the chooser runs the graph (ONNX Runtime's, or a torch device)


@runtime_checkable
class RangeChooser(Protocol):
    """A range chooser that decides every activation's range at once (``auto``), registered in the
    ``quantlab.calibrators`` group like any per-tensor calibrator."""

    name: str

    def choose(self, job: RangeJob) -> CalibrationTable:
        """The table of ``job``'s model: amax per activation, per weight channel, provenance."""


def collect_statistics(model: Optional[ModelSource], data: DataSpec, options: CollectOptions = CollectOptions(), *,
                       progress: bool = True, executor: Union[Executor, str, None] = None) -> Statistics:
    """Run the FP32 model over the selected samples and return statistics of ``options.tensors``
    (a scope of :func:`select_tensors`).

    The samples are cut into shards of whole batches (:func:`~quantlab.executors.plan_shards`),
    each shard -> :class:`Statistics` on a worker of ``executor`` (``local``, the default: this
    process; ``processes``; ``ray``; a name or an :class:`~quantlab.executors.Executor`), merged in
    shard order. Histograms on the power-of-two grid and the sample fingerprint merge exactly, so
    the result is the same, byte for byte, for every executor and worker count. Workers open the
    data themselves (:class:`CollectShard`).
    """
    graph = resolve_model(model)
    bins, threads = options.bins, options.threads
    check_bins(bins)
    check_batch_size(data.batch_size)
    data.preprocess.check_against(graph.inputs)
    source = data_source(graph, data)
    select_tensors(graph, options.tensors)  # an unknown scope is refused before any work
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
        tasks = [CollectShard(ref, spec, start, stop, batch_size, bins, options.providers,
                              options.tensors,
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
    collector = make_collector(graph, select_tensors(graph, task.tensors), bins=task.bins,
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


def calibrate_statistics(model: Optional[ModelSource], stats: Statistics, method: Union[str, Method] = "entropy", *,
                         policy: RangePolicy = RangePolicy(), data: Optional[DataSpec] = None,
                         progress: bool = False, providers: Optional[tuple] = None) -> CalibrationTable:
    """Turn statistics into a table: amax per activation (by ``method``) and per weight channel.

    ``method`` names a range chooser (a :class:`Method` for one with parameters). A per-tensor
    calibrator sees each histogram; a whole-table chooser (:class:`RangeChooser`, e.g. ``auto``,
    which judges every method's range by the error it causes downstream) is handed a
    :class:`RangeJob` and may read ``data`` again: the calibration data the statistics came from,
    running the graph on ``providers`` (ONNX Runtime's, or a torch device: :mod:`quantlab.device`).

    Degenerate tensors are decided here by ``policy``, never written silently:
    * NaN/Inf seen in a tensor: an error unless ``allow_nonfinite``, which calibrates it from
      its finite values and records a note;
    * a tensor that was all zeros: an error unless ``zero_amax`` is given, which it then gets
      (any scale represents 0 exactly; the note says so).
    """
    graph = resolve_model(model)
    method = Method.of(method)
    if stats.model_sha256 != graph.sha256:
        raise StatisticsError(
            f"the statistics were collected on another model (sha256 {stats.model_sha256[:12]}..., "
            f"this model {graph.sha256[:12]}...); collect them again for this model"
        )
    chooser = get_calibrator(method.name, **method.params)
    if isinstance(chooser, RangeChooser):
        return chooser.choose(RangeJob(graph, stats, policy, data, progress, providers))
    return _per_tensor_table(graph, stats, chooser, method, policy)


def _per_tensor_table(graph: ModelGraph, stats: Statistics, calibrator: Any, method: Method,
                      policy: RangePolicy) -> CalibrationTable:
    """The table of a per-tensor calibrator: each histogram -> amax, degenerate tensors by ``policy``."""
    allow_nonfinite, zero_amax = policy.allow_nonfinite, policy.zero_amax
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
            raise CalibratorError(f"method {method.name!r} cannot calibrate {name!r}: {exc}") from exc
        if not (math.isfinite(amax) and amax > 0):
            raise StatisticsError(
                f"method {method.name!r} returned amax {amax} for {name!r} (max |x| {hist.max_abs}); "
                "this is a bug in the calibrator, try another --method"
            )
        activations[name] = amax
        if name in bad:
            notes[name] = f"{hist.nan_count} NaN and {hist.inf_count} Inf values ignored"
    used_params = calibrator.params() if hasattr(calibrator, "params") else dict(method.params)
    return CalibrationTable(method.name, used_params, activations, weight_ranges(graph),
                            table_provenance(graph, stats), notes)


def table_provenance(graph: ModelGraph, stats: Statistics) -> dict:
    """Where a table's ranges came from: the model, the samples (fingerprint, digests, scaling,
    shapes), the versions and the time; every range chooser records it the same way."""
    return {
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


def default_trt_algorithm(method: Union[str, Method]) -> str:
    """The cache header's algorithm for ``method``: the calibrator's own (``MinMaxCalibration`` for
    max), else ``EntropyCalibration2`` (TensorRT reads any ranges alike under it). Making the
    calibrator checks its parameters, so a bad one is refused before any model runs."""
    method = Method.of(method)
    return getattr(get_calibrator(method.name, **method.params), "trt_algorithm", "EntropyCalibration2")


@dataclass
class CalibrationResult:
    table: CalibrationTable
    statistics: Statistics
    cache_path: Optional[Path]
    table_path: Optional[Path]
    seconds: float
    qdq_path: Optional[Path] = None
    qdq_report: Optional[QdqReport] = None


def calibrate(model: Optional[ModelSource] = None, data: Optional[DataSpec] = None,
              method: Union[str, Method] = "entropy", *,
              output: Union[PathLike, CalibrationOutput, None] = None, collect: CollectOptions = CollectOptions(),
              policy: RangePolicy = RangePolicy(), stats: Optional[Sequence[PathLike]] = None,
              progress: bool = True, executor: Union[Executor, str, None] = None,
              bias_correction: Optional[BiasCorrection] = None) -> CalibrationResult:
    """Calibrate ``model`` (the embedded default when None) on ``data`` and write the cache and table.

    ``output``: a cache path, or a :class:`CalibrationOutput` (table path, statistics file, cache
    header); ``None`` writes no file. ``stats`` skips collection and calibrates from statistics
    files (merged when several). ``executor`` runs the collection (:func:`collect_statistics`; the
    cache is the same, byte for byte, whichever runs it). ``bias_correction``: also fold the mean
    INT8 error of each layer into its float bias (:mod:`quantlab.corrections`), for the table and
    the Q/DQ model (a TensorRT cache cannot carry it).
    """
    started = time.perf_counter()
    graph = resolve_model(model)
    data = data or DataSpec()
    method = Method.of(method)
    files = CalibrationOutput.of(output)
    algorithm = default_trt_algorithm(method)  # also refuses a bad method or parameter before any work
    header = make_header(files.trt_version if files else DEFAULT_TRT_VERSION,
                         (files.trt_algorithm if files else None) or algorithm)
    inputs = [graph.path, data.source, *(stats or ())]
    if files is not None:
        check_outputs({"output": files.cache, "table": files.table_path, "save_stats": files.stats,
                       "qdq": files.qdq}, inputs)
    if stats:
        statistics = merge_files(stats)
    else:
        statistics = collect_statistics(graph, data, collect, progress=progress, executor=executor)
    result_table = calibrate_statistics(graph, statistics, method, policy=policy, data=data, progress=progress,
                                        providers=collect.providers)
    if bias_correction is not None:
        if bias_correction.providers is None:
            bias_correction = replace(bias_correction, providers=collect.providers)
        layers = quantized_layers(graph, result_table.activations, files.qdq_options if files else QdqOptions())
        corrections = correct_biases(graph, result_table.activations, data, bias_correction, layers, progress)
        result_table.biases = corrections.biases
        result_table.provenance["bias_correction"] = corrections.to_dict()
    result_table.provenance["trt_cache_header"] = header
    measured = measured_ranges(statistics.tensors)
    result_table.provenance["measured"] = {name: measured[name].to_dict() for name in sorted(measured)}
    cache_path = table_path = qdq_path = qdq_report = None
    with OutputSet(inputs) as outputs:
        if files is not None:
            if files.stats is not None:
                outputs.add(files.stats, statistics.to_bytes())
            if files.qdq is not None:
                qdq_model, qdq_report = export_qdq(graph, result_table.activations, result_table.weights,
                                                   files.qdq_options, measured=measured, biases=result_table.biases)
                result_table.provenance["qdq"] = {"model": str(files.qdq), **qdq_report.to_dict()}
                qdq_path = outputs.add(files.qdq, qdq_model.SerializeToString())
            if files.cache is not None:
                cache_path, table_path = stage_cache_and_table(outputs, result_table, header, files.cache,
                                                               files.table_path)
            else:
                table_path = outputs.add_text(files.table_path, result_table.to_json())
        outputs.commit()
    return CalibrationResult(result_table, statistics, Path(cache_path) if cache_path else None,
                             Path(table_path) if table_path else None, time.perf_counter() - started,
                             Path(qdq_path) if qdq_path else None, qdq_report)


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
