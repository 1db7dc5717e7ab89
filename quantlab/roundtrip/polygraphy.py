"""Polygraphy's JSON: the feed dicts of ``--save-inputs``/``--load-inputs`` and the RunResults of
``--save-outputs``.

The format is small and documented by Polygraphy's own encoder (``polygraphy/json/serde.py``): a
custom object is a JSON object with a ``"polygraphy_class"`` key (older files: a
``"__polygraphy_encoded_<Type>"`` key instead); an array is ``{"array": base64 of np.save bytes,
"polygraphy_class": "ndarray"}``, a lazily loaded one wraps it as ``{"values": <ndarray>,
"polygraphy_class": "LazyArray"}`` (``"LazyNumpyArray"`` in older files); RunResults are
``{"lst": [[runner, [IterationResult ...]]]}`` and an IterationResult holds
``{"outputs": {name: array}, "runner_name": ..., "runtime": ...}``.

It is read and written here rather than through the ``polygraphy`` package so that a CPU box
without it can write what the GPU host loads, and so that nothing in a file received from elsewhere
is unpickled (arrays load with ``allow_pickle=False``; torch-encoded tensors, which would need
``torch.load``, are refused with a way out). tests/test_roundtrip.py holds both directions against
Polygraphy's own loader and saver.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..atomic import write_text_atomic
from ..errors import DataError
from .documents import json_document

MARKER = "polygraphy_class"
LEGACY_PREFIX = "__polygraphy_encoded_"
LEGACY_MARKER = "polygraphy_encoded"

PathLike = Union[str, Path]


def _class_of(obj: Mapping) -> Optional[str]:
    if MARKER in obj:
        return obj[MARKER]
    for key in obj:
        if isinstance(key, str) and key.startswith(LEGACY_PREFIX):
            return key[len(LEGACY_PREFIX):]
    return None


def _array(obj: Mapping, where: str) -> np.ndarray:
    try:
        raw = base64.b64decode(obj["array"].encode(), validate=True)
    except (KeyError, AttributeError, binascii.Error, ValueError):
        try:  # Polygraphy's oldest files stored the .npy bytes as latin-1 text
            raw = obj["array"].encode("latin-1")
        except (KeyError, AttributeError, UnicodeEncodeError):
            raise DataError(f"{where}: an ndarray entry without a readable 'array' payload") from None
    try:
        value = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{where}: an array payload that is not .npy data ({exc})") from None
    if isinstance(value, np.lib.npyio.NpzFile):  # Polygraphy's older files: a one-array .npz
        with value:
            if not value.files:
                raise DataError(f"{where}: an empty array archive")
            value = value[value.files[0]]
    return value


def decode(obj: Any, where: str) -> Any:
    """The Python value of one decoded JSON value: arrays for ndarray/LazyNumpyArray objects, dicts
    for IterationResult (its ``outputs``), lists of ``(runner, iterations)`` for RunResults."""
    if isinstance(obj, list):
        return [decode(item, where) for item in obj]
    if not isinstance(obj, dict):
        return obj
    kind = _class_of(obj)
    if kind is None:
        return {key: decode(value, where) for key, value in obj.items()}
    if kind == "ndarray":
        return _array(obj, where)
    if kind in ("LazyArray", "LazyNumpyArray"):  # the name since Polygraphy 0.50, and the older one
        return decode(obj.get("values", obj.get("arr")), where)
    if kind == "IterationResult":
        outputs = obj.get("outputs", obj.get("data"))
        if not isinstance(outputs, dict):
            raise DataError(f"{where}: an IterationResult without outputs")
        return {name: decode(value, where) for name, value in outputs.items()}
    if kind == "RunResults":
        entries = obj.get("lst")
        if not isinstance(entries, list):
            raise DataError(f"{where}: RunResults without their list of runners")
        return [(str(runner), decode(iterations, where)) for runner, iterations in entries]
    if kind == "Tensor":
        raise DataError(f"{where} holds torch tensors (saved from torch arrays), which quantlab does not unpickle; "
                        "save NumPy arrays (Polygraphy's --save-outputs of an ONNX Runtime or TensorRT runner does)")
    raise DataError(f"{where}: Polygraphy object of kind {kind!r}, not inputs or outputs of a run")


def load(path: PathLike, what: str) -> Any:
    """A Polygraphy JSON file decoded (arrays as NumPy arrays), with one clear error for every way it
    can be unreadable."""
    raw = json_document(path, f"Polygraphy's {what}")
    return decode(raw, str(path))


def is_feed_list(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(d, dict) and all(isinstance(a, np.ndarray) for a in d.values()) for d in value))


def read_inputs(path: PathLike) -> list[dict[str, np.ndarray]]:
    """The feed dicts of a ``--save-inputs`` file (one per iteration), in order."""
    value = load(path, "inputs (--save-inputs)")
    if not is_feed_list(value):
        raise DataError(f"{path} is not Polygraphy's inputs: expected a list of {{input name: array}} dicts, one per "
                        "iteration (polygraphy run --save-inputs, or quantlab export-inputs)")
    return value


def write_inputs(path: PathLike, feeds: Sequence[Mapping[str, np.ndarray]]) -> Path:
    """Write feed dicts the way ``polygraphy run --save-inputs`` does (atomically)."""
    doc = [{name: encode_array(np.asarray(array)) for name, array in feed.items()} for feed in feeds]
    return write_text_atomic(path, json.dumps(doc, indent=4))


def encode_array(array: np.ndarray) -> dict:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return {"array": base64.b64encode(buffer.getvalue()).decode(), MARKER: "ndarray"}


@dataclass
class RunOutputs:
    """The outputs of one runner: one ``{name: array}`` per iteration, in order."""

    runner: str
    iterations: list[dict[str, np.ndarray]] = field(default_factory=list)


def read_outputs(path: PathLike) -> list[RunOutputs]:
    """Every runner's outputs in a ``--save-outputs`` (RunResults) file."""
    value = load(path, "outputs (--save-outputs)")
    if is_feed_list(value):
        raise DataError(f"{path} holds inputs (a list of feed dicts, --save-inputs), not a run's outputs; pass the "
                        "file of --save-outputs")
    if not (isinstance(value, list) and value and all(isinstance(e, tuple) for e in value)):
        raise DataError(f"{path} is not Polygraphy's RunResults (polygraphy run --save-outputs)")
    runs = []
    for runner, iterations in value:
        if not isinstance(iterations, list) or not all(isinstance(i, dict) for i in iterations):
            raise DataError(f"{path}: runner {runner!r} has no list of iteration results")
        runs.append(RunOutputs(runner, iterations))
    return runs



_FEED_HEAD = re.compile(rb'^\s*\[\s*\{\s*"[^"]*"\s*:\s*\{\s*"(array|values|polygraphy_class|__polygraphy_encoded_)')


class PolygraphyInputs:
    """A ``--save-inputs`` file (what ``quantlab export-inputs`` writes) as a data set: the samples
    the engine saw, already preprocessed, one per row of each iteration's batch, in order. Feeding
    it to ``compare --data`` evaluates exactly the arrays the engine ran on; it has no labels (pass
    the original data instead, in the same selection, for accuracy against labels)."""

    name = "polygraphy"

    def __init__(self, source: PathLike):
        self.source = str(source)
        feeds = read_inputs(source)
        names = list(feeds[0])
        for k, feed in enumerate(feeds[1:], 2):
            if list(feed) != names:
                raise DataError(f"{source}: iteration {k} feeds {sorted(feed)}, the first {sorted(names)}")
        self.inputs = {name: np.concatenate([np.asarray(f[name]).reshape((-1, *f[name].shape[1:]))
                                             for f in feeds]) for name in names}
        counts = {name: len(a) for name, a in self.inputs.items()}
        if len(set(counts.values())) != 1:
            raise DataError(f"{source}: the inputs hold different sample counts {counts}")
        self.length = next(iter(counts.values()))
        self.labels = None

    @classmethod
    def detect(cls, source: str) -> bool:
        path = Path(source)
        if path.suffix.lower() != ".json" or not path.is_file():
            return False
        with open(path, "rb") as handle:
            return bool(_FEED_HEAD.match(handle.read(4096)))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple:
        if len(self.inputs) == 1:
            return next(iter(self.inputs.values()))[index], None
        return {name: array[index] for name, array in self.inputs.items()}, None
