"""Every range file quantlab reads or writes, behind one interface, detected by content.

Formats: ``trt`` (TensorRT calibration cache, any vintage), ``ort-flatbuffers``,
``ort-cache`` and ``ort-json`` (ONNX Runtime's TensorRT-EP tables) and ``quantlab`` (the JSON
table). All carry an amax per tensor; TensorRT caches store float32 scales (amax / 127), so
a TensorRT scale survives every conversion bit for bit (the float32 scale of ``scale * 127``
is ``scale`` again), and an amax converted through a TensorRT cache keeps its float32 scale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..atomic import write_bytes_atomic, write_text_atomic
from ..errors import CacheFormatError
from .ortables import (
    format_ort_cache,
    format_ort_flatbuffers,
    format_ort_json,
    parse_ort_cache,
    parse_ort_flatbuffers,
    parse_ort_json,
)
from .trtcache import TrtCache, make_header, parse_trt_cache, read_cache_bytes, write_trt_cache

FORMATS = ("trt", "ort-flatbuffers", "ort-cache", "ort-json", "quantlab")
DESCRIPTIONS = {
    "trt": "TensorRT calibration cache",
    "ort-flatbuffers": "ONNX Runtime TensorRT-EP table (calibration.flatbuffers)",
    "ort-cache": "ONNX Runtime TensorRT-EP table (calibration.cache, name amax lines)",
    "ort-json": "ONNX Runtime TensorRT-EP table (calibration.json)",
    "quantlab": "quantlab calibration table (JSON)",
}


@dataclass
class RangeFile:
    """The ranges of one file, whatever its format."""

    format: str
    amax: dict[str, float]
    source: str = ""
    trt: Optional[TrtCache] = None  # the parsed cache, for TensorRT files
    extra: dict = field(default_factory=dict)  # e.g. the quantlab table's method and provenance

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.format]


def parse_ranges(data: bytes, source: str = "file") -> RangeFile:
    """Detect the format of ``data`` from its content and parse it."""
    if not data.strip():
        raise CacheFormatError(f"{source} is empty: not a calibration cache or table")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return RangeFile("ort-flatbuffers", parse_ort_flatbuffers(data, source), source)
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise CacheFormatError(f"{source} looks like JSON but does not parse: {exc}") from exc
        if isinstance(obj, dict) and obj.get("format") == "quantlab-calibration-table":
            from ..table import CalibrationTable

            table = CalibrationTable.from_dict(obj, source)
            return RangeFile("quantlab", dict(table.activations), source,
                             extra={"method": table.method, "params": table.params,
                                    "provenance": table.provenance, "table": table})
        return RangeFile("ort-json", parse_ort_json(obj, source), source)
    first = text.splitlines()[0] if text.splitlines() else ""
    if first.startswith("TRT-") or first.strip() == "1":
        cache = parse_trt_cache(text, source)
        return RangeFile("trt", cache.amax(), source, trt=cache)
    if "\x00" in text:
        return RangeFile("ort-flatbuffers", parse_ort_flatbuffers(data, source), source)
    if ": " in first and " " not in first.rpartition(": ")[2]:
        raise CacheFormatError(
            f"{source} line 1: {first[:60]!r} looks like a TensorRT cache entry but the "
            "TRT-<version>-<Algorithm> header line is missing"
        )
    return RangeFile("ort-cache", parse_ort_cache(text, source), source)


def read_ranges(path: str | Path) -> RangeFile:
    return parse_ranges(read_cache_bytes(path), str(path))


def write_ranges(path: str | Path, fmt: str, amax: dict[str, float], *,
                 trt_header: Optional[str] = None, provenance: Optional[dict] = None) -> Path:
    """Write ``amax`` in format ``fmt`` (atomically)."""
    if fmt == "trt":
        return write_trt_cache(path, amax, trt_header or make_header())
    if fmt == "ort-flatbuffers":
        return write_bytes_atomic(path, format_ort_flatbuffers(amax))
    if fmt == "ort-cache":
        return write_text_atomic(path, format_ort_cache(amax))
    if fmt == "ort-json":
        return write_text_atomic(path, format_ort_json(amax))
    if fmt == "quantlab":
        from ..table import CalibrationTable, timestamp, versions

        prov = {"imported_from": provenance or {}, "versions": versions(), "created": timestamp()}
        return CalibrationTable("imported", {}, dict(amax), provenance=prov).save(path)
    raise CacheFormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
