"""trtexec's files: ``--exportOutput`` and ``--exportProfile`` JSON in, ``--loadInputs`` binaries out.

``--exportOutput`` writes ``[{"name": ..., "dimensions": "1x1000", "values": [...]}, ...]``, one
object per output, of the last inference run; TensorRT 7's implicit-batch engines leave the batch
out of ``dimensions`` (``"1000x1x1"`` with 4000 values is a batch of 4). ``--exportProfile`` writes
``[{"count": runs}, {"name", "timeMs", "averageMs", "medianMs" (TensorRT 8+), "percentage"}, ...]``.
Scripts that loop over batch sizes often append one document after another to the same file, so
every reader here takes a sequence of concatenated JSON documents, each an iteration.

``--loadInputs=name:file`` reads a file of raw bytes, the binding's size exactly: the array in C
order and in the binding's type, nothing else. :func:`write_raw_inputs` writes one per input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..atomic import write_bytes_atomic
from ..errors import DataError
from .documents import json_documents

PathLike = Union[str, Path]


def _dims(text: Any, where: str) -> tuple[int, ...]:
    if isinstance(text, list) and all(isinstance(d, int) for d in text):
        return tuple(text)
    if not isinstance(text, str) or not re.fullmatch(r"\d+(x\d+)*", text.strip()):
        raise DataError(f"{where}: dimensions {text!r} are not 'AxBxC'")
    return tuple(int(d) for d in text.strip().split("x"))


def is_export_output(doc: Any) -> bool:
    return (isinstance(doc, list) and bool(doc)
            and all(isinstance(o, dict) and {"name", "values"} <= set(o) for o in doc))


def read_export_output(path: PathLike) -> list[dict[str, np.ndarray]]:
    """The outputs of each document of a ``--exportOutput`` file, as ``{name: array}`` (float32)."""
    docs = json_documents(path, "trtexec --exportOutput JSON")
    parsed = []
    for k, doc in enumerate(docs, 1):
        where = f"{path} (document {k})"
        if not is_export_output(doc):
            raise DataError(f"{where} is not trtexec --exportOutput output: expected a list of "
                            "{name, dimensions, values} objects")
        entries = []
        for entry in doc:
            values = np.asarray(entry["values"], dtype=np.float64)
            dims = _dims(entry.get("dimensions", str(values.size)), where)
            size = int(np.prod(dims, dtype=np.int64))
            if values.size != size and not (size and values.size % size == 0):
                raise DataError(f"{where}: output {entry['name']!r} has {values.size} values for dimensions "
                                f"{entry.get('dimensions')!r}")
            entries.append((str(entry["name"]), values, dims, size))
        parsed.append(entries)
    # TensorRT 7's implicit batch leaves the batch out of the dimensions: one entry with more values
    # than its dimensions hold says so for the whole file (a batch of one looks like explicit dims).
    implicit = any(values.size != size for entries in parsed for _, values, _, size in entries)
    iterations = []
    for entries in parsed:
        iterations.append({name: values.reshape((values.size // size, *dims) if implicit else dims).astype(np.float32)
                           for name, values, dims, size in entries})
    return iterations


@dataclass
class LayerTime:
    name: str
    average_ms: float
    median_ms: float | None
    percentage: float | None


@dataclass
class EngineProfile:
    """One ``--exportProfile`` document: how many runs were timed and each layer's time."""

    runs: int
    layers: list[LayerTime] = field(default_factory=list)

    @property
    def total_ms(self) -> float:
        return sum(t.average_ms for t in self.layers)

    def by_name(self) -> dict[str, LayerTime]:
        return {t.name: t for t in self.layers}


def read_profile(path: PathLike) -> list[EngineProfile]:
    """Each document of a ``--exportProfile`` file (TensorRT 7: no ``medianMs``)."""
    profiles = []
    for k, doc in enumerate(json_documents(path, "trtexec --exportProfile JSON"), 1):
        if not (isinstance(doc, list) and doc and isinstance(doc[0], dict) and "count" in doc[0]):
            raise DataError(f"{path} (document {k}) is not trtexec --exportProfile output: expected "
                            "[{\"count\": runs}, {\"name\", \"averageMs\", ...}, ...]")
        layers = []
        for entry in doc[1:]:
            if not isinstance(entry, dict) or "name" not in entry or "averageMs" not in entry:
                raise DataError(f"{path} (document {k}): a profile entry without name/averageMs: {entry!r:.80}")
            layers.append(LayerTime(str(entry["name"]), float(entry["averageMs"]),
                                    _number(entry.get("medianMs")), _number(entry.get("percentage"))))
        profiles.append(EngineProfile(int(doc[0]["count"]), layers))
    return profiles


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def raw_input_name(stem: Path, name: str) -> Path:
    """``inputs.x.bin`` beside ``inputs.json`` for input ``x`` (characters a shell or trtexec's
    ``name:file`` syntax would trip on become ``_``)."""
    return stem.with_name(f"{stem.name}.{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.bin")


def write_raw_inputs(stem: Path, arrays: Mapping[str, np.ndarray]) -> dict[str, Path]:
    """One raw file per input for ``trtexec --loadInputs`` (C order, the array's own type)."""
    return {name: write_bytes_atomic(raw_input_name(stem, name), np.ascontiguousarray(array).tobytes())
            for name, array in arrays.items()}


def load_inputs_flag(files: Mapping[str, Path]) -> str:
    """The ``--loadInputs`` argument for ``files`` (input names quoted as trtexec wants)."""
    return "--loadInputs=" + ",".join(f"'{name}':{path}" for name, path in files.items())


def shapes_flag(shapes: Mapping[str, tuple]) -> str:
    """The ``--shapes`` argument for inputs of these shapes."""
    return "--shapes=" + ",".join(f"'{name}':{'x'.join(str(d) for d in shape)}" for name, shape in shapes.items())
