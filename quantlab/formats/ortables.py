"""ONNX Runtime's TensorRT-EP calibration tables (``quant_utils.write_calibration_table``).

ONNX Runtime writes three files from one calibration, all keyed by tensor name:

* ``calibration.flatbuffers`` - a FlatBuffers ``TrtTable`` of ``KeyValue`` string pairs, the
  value being the amax in decimal (what the TensorRT execution provider reads);
* ``calibration.cache`` - plain ``<name> <amax>`` lines (*not* the TensorRT cache format);
* ``calibration.json`` - ``{name: [min, max]}`` in older releases, ``{name: {"lowest": ...,
  "highest": ..., "CLS": "TensorData"}}`` in newer ones.

The amax of a tensor is its symmetric range, ``max(|lowest|, |highest|)``: that is what the
flatbuffers and plain tables hold for the JSON's [min, max] pairs in real ONNX Runtime output
(see ../shared/caches). Values are Python floats printed with ``str``; these readers return
float64 and the writers print the same way, so a value survives a round trip exactly.
"""

from __future__ import annotations

import json
from typing import Any

import flatbuffers
from onnxruntime.quantization.CalTableFlatBuffers import KeyValue, TrtTable

from ..errors import CacheFormatError


def parse_ort_flatbuffers(data: bytes, source: str = "table") -> dict[str, float]:
    """Read a ``calibration.flatbuffers`` table."""
    if len(data) < 12:
        raise CacheFormatError(f"{source} is too short to be an ONNX Runtime flatbuffers table")
    try:
        table = TrtTable.TrtTable.GetRootAsTrtTable(bytearray(data), 0)
        entries = {}
        for index in range(table.DictLength()):
            item = table.Dict(index)
            key, value = item.Key(), item.Value()
            if key is None or value is None:
                raise ValueError(f"entry {index} has no key or value")
            name = key.decode("utf-8")
            if name in entries:
                raise CacheFormatError(f"{source}: tensor {name!r} appears twice (entry {index})")
            entries[name] = _parse_float(value.decode("utf-8"), f"{source} entry {index}")
        return entries
    except CacheFormatError:
        raise
    except Exception as exc:  # flatbuffers raises struct.error, IndexError, UnicodeDecodeError...
        raise CacheFormatError(
            f"{source} is not a valid ONNX Runtime calibration.flatbuffers table ({type(exc).__name__}: {exc})"
        ) from exc


def format_ort_flatbuffers(amax: dict[str, float]) -> bytes:
    builder = flatbuffers.Builder(1024)
    items = []
    for name in sorted(amax):
        key = builder.CreateString(name)
        value = builder.CreateString(str(float(amax[name])))
        KeyValue.KeyValueStart(builder)
        KeyValue.KeyValueAddKey(builder, key)
        KeyValue.KeyValueAddValue(builder, value)
        items.append(KeyValue.KeyValueEnd(builder))
    TrtTable.TrtTableStartDictVector(builder, len(items))
    for item in items:
        builder.PrependUOffsetTRelative(item)
    vector = builder.EndVector()
    TrtTable.TrtTableStart(builder)
    TrtTable.TrtTableAddDict(builder, vector)
    builder.Finish(TrtTable.TrtTableEnd(builder))
    return bytes(builder.Output())


def parse_ort_cache(text: str, source: str = "table") -> dict[str, float]:
    """Read ONNX Runtime's plain ``calibration.cache`` (``<name> <amax>`` per line)."""
    entries: dict[str, float] = {}
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise CacheFormatError(f"{source} is empty: not a calibration table")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        name, sep, value = line.rstrip("\r").rpartition(" ")
        if not sep or not name or not _is_number(value):
            raise CacheFormatError(
                f"{source} line {number}: {line[:60]!r} is not '<tensor name> <amax>' "
                "(is this a calibration table?)"
            )
        if name in entries:
            raise CacheFormatError(f"{source} line {number}: tensor {name!r} appears twice")
        entries[name] = _parse_float(value, f"{source} line {number}")
    return entries


def format_ort_cache(amax: dict[str, float]) -> str:
    return "".join(f"{name} {float(amax[name])!s}\n" for name in sorted(amax))


def parse_ort_json(data: Any, source: str = "table") -> dict[str, float]:
    """Read ``calibration.json`` in the old ([min, max]) or new (TensorData dict) layout."""
    if not isinstance(data, dict) or not data:
        raise CacheFormatError(f"{source} is not an ONNX Runtime calibration.json (expected a non-empty object)")
    entries = {}
    for name, value in data.items():
        if isinstance(value, (list, tuple)) and len(value) == 2:
            low, high = value
        elif isinstance(value, dict) and "highest" in value and "lowest" in value:
            low, high = _unwrap(value["lowest"]), _unwrap(value["highest"])
        else:
            raise CacheFormatError(f"{source}: entry {name!r} is neither [min, max] nor a TensorData object")
        try:
            entries[name] = max(abs(float(high)), abs(float(low)))
        except (TypeError, ValueError) as exc:
            raise CacheFormatError(f"{source}: entry {name!r} holds a non-number ({exc})") from exc
    return entries


def format_ort_json(amax: dict[str, float]) -> str:
    """The newer layout, as current ONNX Runtime writes it (symmetric: lowest = -amax)."""
    data = {name: {"lowest": -float(amax[name]), "highest": float(amax[name]), "CLS": "TensorData"}
            for name in sorted(amax)}
    return json.dumps(data)


def _unwrap(value: Any) -> Any:
    if isinstance(value, dict) and "data" in value:  # a numpy array encoded by ORT
        data = value["data"]
        return data[0] if isinstance(data, list) and len(data) == 1 else data
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_float(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise CacheFormatError(f"{where}: {text[:30]!r} is not a number") from exc
