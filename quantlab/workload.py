"""What a command works on: the model, the data, and where a cache's files go.

Every command - calibrate, collect, compare, sweep, tune - starts from the same two questions,
answered here and nowhere else:

* **which model**: a path, a loaded :class:`~quantlab.graph.ModelGraph`, or ``None`` for the
  embedded default (:mod:`quantlab.defaults`), whose calibration and held-out data stand in for
  the data a user did not give (:func:`resolve_model`, :func:`is_default_model`,
  :func:`data_source`);
* **which samples**: a :class:`DataSpec` (source, adapter, preprocessing, the seeded subset and
  the batch size), opened by the adapter the source calls for (:func:`open_dataset`), in this
  process or on a worker (:class:`DataTask`).

It sits just above the ground (graph, dataset adapters, preprocessing, plugins) so that the
pipeline, the evaluation engine, the tuner and the CLI all take these from one place and none of
them reaches into another for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from . import defaults
from .errors import DataError, QuantlabError
from .executors.shipping import ModelRef, worker_cached
from .graph import ModelGraph, load_model
from .plugins import detect_dataset_adapter, get_dataset_adapter
from .preprocess import Preprocess, iterate_batches, model_layout, select_indices

ModelSource = Union[str, Path, ModelGraph]

# The embedded data that stands in for what a user did not give, by role.
DEFAULT_DATA = {"calibration": defaults.CALIBRATION_DATA, "held-out": defaults.HELDOUT_DATA}


@dataclass(frozen=True)
class DataSpec:
    """Where the samples come from and how they become model inputs.

    ``source``: a path, ``module:function``, or a data set object (``None``: the embedded default's
    data, for the embedded model only); ``data_format``: the adapter's name (``None``: detected);
    ``num_samples`` and ``seed`` pick a fixed subset; ``batch_size`` is samples per run (no result
    depends on it).
    """

    source: Any = None
    data_format: Optional[str] = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    num_samples: Optional[int] = None
    batch_size: int = 32
    seed: int = 0


def resolve_model(model: Optional[ModelSource]) -> ModelGraph:
    """The normalised graph of ``model`` (a path or a loaded graph); ``None`` is the embedded default."""
    if isinstance(model, ModelGraph):
        return model
    return load_model(model if model is not None else defaults.MODEL)


def is_default_model(graph: ModelGraph) -> bool:
    """Whether ``graph`` is the embedded default model (whose data may be left out)."""
    return graph.path is not None and graph.path.resolve() == Path(defaults.MODEL).resolve()


def data_source(graph: ModelGraph, data: DataSpec, role: str = "calibration") -> Any:
    """The source to read for ``data``: its own, or for the embedded model the embedded data of
    ``role`` (``calibration`` or ``held-out``). Any other model without data is an error that says so."""
    if data.source is not None:
        return data.source
    if not is_default_model(graph):
        raise DataError(f"no {role} data given for this model: set `data` (a path or a dataset)", params=("data",))
    return DEFAULT_DATA[role]


def open_dataset(source: Any, data_format: Optional[str], graph: ModelGraph):
    """Instantiate the dataset adapter for ``source`` (an adapter object passes through)."""
    if hasattr(source, "__getitem__") and hasattr(source, "__len__") and not isinstance(source, (str, Path)):
        return source
    source = str(source)
    cls = get_dataset_adapter(data_format) if data_format else detect_dataset_adapter(source)
    if getattr(cls, "name", "") == "images":
        return cls(source, channels=_channels(graph))
    if getattr(cls, "name", "") == "npy":
        return cls(source, input_names=[s.name for s in graph.inputs])
    return cls(source)


def _channels(graph: ModelGraph) -> int:
    """The channels an image folder should be read with: the model input's, else 3."""
    spec = graph.inputs[0]
    shape = spec.sample_shape
    if len(shape) != 3:
        return 3
    channels = shape[0] if model_layout(spec) == "NCHW" else shape[-1]
    return channels if isinstance(channels, int) else 3


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


def select_outputs(graph: ModelGraph, wanted: Sequence[str]) -> list[str]:
    """The model outputs a command reads: ``wanted`` (each checked to be one), or all of them."""
    names = graph.output_names
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise QuantlabError(f"{unknown[0]!r} (`outputs`) is not a model output; outputs: {', '.join(names)}",
                            params=("outputs",))
    return list(wanted) or names


def table_path_for(cache_path: Union[str, Path]) -> Path:
    """The quantlab table written beside a TensorRT cache: ``<cache stem>.quantlab.json``."""
    path = Path(cache_path)
    return path.with_name(path.stem + ".quantlab.json")


def sample_inputs(graph: ModelGraph, data: DataSpec, samples: int) -> dict[str, np.ndarray]:
    """The first ``samples`` of the calibration selection, preprocessed, as one array per input
    (what ``auto`` and bias correction run the graph node by node on)."""
    dataset = open_dataset(data_source(graph, data), data.data_format, graph)
    indices = select_indices(len(dataset), data.num_samples, data.seed)[:samples]
    fixed = graph.inputs[0].fixed_batch if graph.inputs else None
    if fixed:
        indices = indices[:len(indices) - len(indices) % fixed]
        if not len(indices):
            raise DataError(f"the model's batch size is fixed at {fixed}; this needs at least {fixed} calibration "
                            "samples", params=("num_samples",))
    batches = list(iterate_batches(dataset, indices, graph.inputs, data.preprocess, fixed or data.batch_size))
    return {name: np.concatenate([b.inputs[name] for b in batches]) for name in batches[0].inputs}
