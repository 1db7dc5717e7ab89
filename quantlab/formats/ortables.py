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

FLATBUFFERS = "ONNX Runtime calibration.flatbuffers table"
PLAIN = "ONNX Runtime calibration.cache table"
JSON_TABLE = "ONNX Runtime calibration.json table"


def parse_ort_flatbuffers(data: bytes, source: str = "table") -> dict[str, float]:
    """Read a ``calibration.flatbuffers`` table.

    The FlatBuffers reader does no bounds checks, so a truncated or corrupt file would fail
    with offsets that mean nothing to a user; here every offset is checked against the file
    size first and a problem is reported as what it is (truncated, an entry past the end...).
    """
    size = len(data)
    where = f"{source} ({FLATBUFFERS}, {size} bytes)"
    if size < 12:
        raise CacheFormatError(f"{source} is too short ({size} bytes) to be an {FLATBUFFERS}")
    try:
        _check_flatbuffers_layout(data)
        table = TrtTable.TrtTable.GetRootAsTrtTable(bytearray(data), 0)
        entries = {}
        for index in range(table.DictLength()):
            item = table.Dict(index)
            key, value = item.Key(), item.Value()
            if key is None or value is None:
                raise _Corrupt(f"entry {index} has no {'key' if key is None else 'value'}")
            try:
                name = key.decode("utf-8")
                text = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _Corrupt(f"entry {index} holds bytes that are not UTF-8 text") from exc
            if name in entries:
                raise CacheFormatError(f"{where}: tensor {name!r} appears twice (entry {index})")
            entries[name] = _parse_float(text, f"{where}: entry {index} ({name[:40]!r})")
        return entries
    except CacheFormatError:
        raise
    except _Corrupt as exc:
        raise CacheFormatError(f"{where} is corrupt or truncated: {exc}") from exc
    except Exception as exc:  # a case the layout check missed: still a format error, never a traceback
        raise CacheFormatError(
            f"{where} is corrupt or truncated ({type(exc).__name__} while reading it)"
        ) from exc


class _Corrupt(Exception):
    """A structural problem in a flatbuffers table, said in words."""


def _check_flatbuffers_layout(data: bytes) -> None:
    """Bounds-check the TrtTable layout (root table, vtables, the vector of KeyValue tables, strings)."""
    size = len(data)

    def u32(at: int, what: str) -> int:
        if not 0 <= at <= size - 4:
            raise _Corrupt(f"{what} lies past the end of the file")
        return int.from_bytes(data[at:at + 4], "little")

    def table_field(table: int, slot: int, what: str):
        """Position of field ``slot`` of the table at ``table`` (None: absent)."""
        vtable = table - int.from_bytes(data[table:table + 4], "little", signed=True)
        if not 0 <= vtable <= size - 4:
            raise _Corrupt(f"the field table of {what} points past the end of the file")
        vsize = int.from_bytes(data[vtable:vtable + 2], "little")
        if vsize < 4 or vtable + vsize > size:
            raise _Corrupt(f"the field table of {what} runs past the end of the file")
        entry = 4 + 2 * slot
        if entry + 2 > vsize:
            return None
        offset = int.from_bytes(data[vtable + entry:vtable + entry + 2], "little")
        return table + offset if offset else None

    def string(at: int, what: str) -> None:
        start = at + u32(at, what)
        length = u32(start, what)
        if start + 4 + length > size:
            raise _Corrupt(f"{what} runs past the end of the file")

    root = u32(0, "the root table offset")
    if root > size - 4:
        raise _Corrupt("the root table offset at its start points past the end of the file "
                       "(is this a calibration.flatbuffers table?)")
    field = table_field(root, 0, "the root table")
    if field is None:
        return  # a table without entries
    vector = field + u32(field, "the entry list")
    count = u32(vector, "the entry count")
    if vector + 4 + 4 * count > size:
        raise _Corrupt(f"it lists {count} entries, more than the file has room for" if count <= size
                       else "its entry count is larger than the whole file")
    for index in range(count):
        slot = vector + 4 + 4 * index
        item = slot + u32(slot, f"entry {index}")
        if item > size - 4:
            raise _Corrupt(f"entry {index} points past the end of the file")
        for number, part in ((0, "key"), (1, "value")):
            at = table_field(item, number, f"entry {index}")
            if at is not None:
                string(at, f"the {part} of entry {index}")


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
    first_line: dict[str, int] = {}
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise CacheFormatError(f"{source} is empty: not a calibration table")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        name, sep, value = line.rstrip("\r").rpartition(" ")
        if not sep or not name or not _is_number(value):
            if not entries:
                raise CacheFormatError(
                    f"{source} is not a calibration cache or table: line {number} {line[:60]!r} is "
                    "neither a TensorRT cache header (TRT-<version>-<Algorithm>) nor an entry "
                    f"'<tensor name> <amax>' of an {PLAIN}"
                )
            raise CacheFormatError(
                f"{source} ({PLAIN}) line {number}: {line[:60]!r} is not '<tensor name> <amax>'"
            )
        if name in entries:
            raise CacheFormatError(
                f"{source} ({PLAIN}) line {number}: tensor {name[:60]!r} appears twice "
                f"(first on line {first_line[name]})"
            )
        entries[name] = _parse_float(value, f"{source} ({PLAIN}) line {number}")
        first_line[name] = number
    return entries


def format_ort_cache(amax: dict[str, float]) -> str:
    return "".join(f"{name} {float(amax[name])!s}\n" for name in sorted(amax))


def parse_ort_json(data: Any, source: str = "table") -> dict[str, float]:
    """Read ``calibration.json`` in the old ([min, max]) or new (TensorData dict) layout."""
    if not isinstance(data, dict) or not data:
        raise CacheFormatError(
            f"{source} is not an {JSON_TABLE} (expected a non-empty object of "
            "{tensor: [min, max]}, got " + ("an empty object" if data == {} else type(data).__name__) + ")"
        )
    entries = {}
    for name, value in data.items():
        if isinstance(value, (list, tuple)) and len(value) == 2:
            low, high = value
        elif isinstance(value, dict) and "highest" in value and "lowest" in value:
            low, high = _unwrap(value["lowest"]), _unwrap(value["highest"])
        else:
            raise CacheFormatError(
                f"{source} ({JSON_TABLE}): entry {name[:60]!r} is neither [min, max] nor a TensorData "
                f"object (got {json.dumps(value)[:40]})"
            )
        if any(isinstance(v, bool) or not isinstance(v, (int, float, str)) for v in (low, high)):
            raise CacheFormatError(
                f"{source} ({JSON_TABLE}): entry {name[:60]!r} holds a non-number "
                f"({json.dumps([low, high])[:40]})"
            )
        try:
            entries[name] = max(abs(float(high)), abs(float(low)))
        except (TypeError, ValueError) as exc:
            raise CacheFormatError(
                f"{source} ({JSON_TABLE}): entry {name[:60]!r} holds a non-number ({exc})"
            ) from exc
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
