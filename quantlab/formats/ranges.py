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
from ..errors import CacheFormatError, QuantlabError
from .ortables import (
    format_ort_cache,
    format_ort_flatbuffers,
    format_ort_json,
    parse_ort_cache,
    parse_ort_flatbuffers,
    parse_ort_json,
)
from .trtcache import (
    DEFAULT_ALGORITHM,
    DEFAULT_TRT_VERSION,
    TRT4_HEADER,
    TrtCache,
    check_header,
    decode_cache_text,
    looks_like_trt_cache,
    make_header,
    parse_trt_cache,
    parse_version,
    read_cache_bytes,
    write_trt_cache,
)

QUANTLAB_FORMAT = "quantlab-calibration-table"  # the 'format' field of quantlab's tables
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
    """Detect the format of ``data`` from its content and parse it.

    Detection goes by the strongest sign first, and a file is then judged as the format it
    looks like: its errors name that format and what is wrong (the line, the entry, the byte),
    instead of falling through to another reader. In order:

    * ``TRT-`` or a bare ``1`` line at the start: a TensorRT cache (bytes that are not text
      are reported with their line);
    * NUL bytes and a binary start (a first uint32, the root table offset, that lies inside
      the file, or a first byte that is not text): an ONNX Runtime ``calibration.flatbuffers``
      table, whose reader checks every offset against the file size (every flatbuffers file
      holds NULs, text formats never do: a text file with a NUL is reported as corrupt text);
    * ``{`` or ``[`` first: JSON, a quantlab table or ONNX Runtime's ``calibration.json``;
    * ``<name>: <hex>`` lines with no header: a TensorRT cache that lost its header line;
    * anything else: ONNX Runtime's plain ``calibration.cache`` (``<name> <amax>`` lines).
    """
    if not data.strip():
        raise CacheFormatError(f"{source} is empty: not a calibration cache or table")
    if looks_like_trt_cache(data):
        cache = parse_trt_cache(decode_cache_text(data, source), source)
        return RangeFile("trt", cache.amax(), source, trt=cache)
    stripped = data.lstrip()
    looks_json = stripped.startswith((b"{", b"["))
    if b"\x00" in data:
        if _binary_start(data):
            return RangeFile("ort-flatbuffers", parse_ort_flatbuffers(data, source), source)
        at = data.index(b"\x00")
        line = data.count(b"\n", 0, at) + 1
        kind = ("a JSON table (quantlab or ONNX Runtime calibration.json)" if looks_json
                else "a text table (ONNX Runtime calibration.cache)")
        raise CacheFormatError(
            f"{source} looks like {kind} but line {line} holds a NUL byte "
            f"(byte {at}): the file is corrupt"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        kind = ("a JSON table (quantlab or ONNX Runtime calibration.json)" if looks_json
                else "a text table (ONNX Runtime calibration.cache)")
        raise CacheFormatError(
            f"{source} looks like {kind} but byte {exc.start} (line {line}) is not UTF-8 text: "
            "the file is corrupt, or not a calibration cache or table"
        ) from exc
    if looks_json:
        return _parse_json(text, source)
    lines = text.splitlines()
    first = lines[0] if lines else ""
    if ": " in first and " " not in first.rpartition(": ")[2]:
        raise CacheFormatError(
            f"{source} line 1: {first[:60]!r} looks like a TensorRT cache entry but the "
            "TRT-<version>-<Algorithm> header line is missing"
        )
    return RangeFile("ort-cache", parse_ort_cache(text, source), source)


def _binary_start(data: bytes) -> bool:
    """Does ``data`` start like a flatbuffers file rather than like text?

    A flatbuffers file starts with the offset of its root table, a little-endian uint32 that
    lies inside the file; text starts with a printable character. A text file with a stray NUL
    further on (a corrupt download, say) is still judged as text.
    """
    if len(data) >= 4 and int.from_bytes(data[:4], "little") < len(data):
        return True
    return not (data[0] >= 0x20 or data[:1] in (b"\t", b"\n", b"\r"))


def _parse_json(text: str, source: str) -> RangeFile:
    quantlab = QUANTLAB_FORMAT in text
    kind = ("a quantlab calibration table (JSON)" if quantlab
            else "a JSON calibration table (ONNX Runtime calibration.json or quantlab)")
    try:
        obj = json.loads(text)
    except ValueError as exc:
        at_end = getattr(exc, "pos", 0) >= len(text.rstrip()) or str(exc).startswith("Unterminated string")
        truncated = " (truncated?)" if at_end else ""
        raise CacheFormatError(f"{source} looks like {kind} but does not parse as JSON{truncated}: {exc}") from exc
    if isinstance(obj, dict) and (obj.get("format") == QUANTLAB_FORMAT or {"activations", "provenance"} <= set(obj)):
        return _parse_quantlab(obj, source)
    return RangeFile("ort-json", parse_ort_json(obj, source), source)


def _parse_quantlab(obj: dict, source: str) -> RangeFile:
    from ..table import VERSION, CalibrationTable

    where = f"{source} (quantlab calibration table)"
    if obj.get("format") != QUANTLAB_FORMAT:
        raise CacheFormatError(
            f"{where}: its 'format' is {str(obj.get('format'))[:40]!r}, not {QUANTLAB_FORMAT!r}; the "
            "file is corrupt or was written by another tool"
        )
    if obj.get("version") != VERSION:
        raise CacheFormatError(
            f"{where}: table version {str(obj.get('version'))[:20]!r}, but this quantlab reads version "
            f"{VERSION}; rewrite it with this quantlab or use a matching release"
        )
    activations = obj.get("activations")
    if not isinstance(activations, dict):
        raise CacheFormatError(f"{where}: 'activations' is not an object of {{tensor: {{\"amax\": ...}}}}")
    for name, entry in activations.items():
        amax = entry.get("amax") if isinstance(entry, dict) else None
        if isinstance(amax, bool) or not isinstance(amax, (int, float)):
            raise CacheFormatError(
                f"{where}: activation {name[:60]!r} has no numeric 'amax' (got {json.dumps(entry)[:40]})"
            )
    try:
        table = CalibrationTable.from_dict(obj, source)
    except (CacheFormatError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CacheFormatError(f"{where} is malformed: {exc}") from exc
    return RangeFile("quantlab", dict(table.activations), source,
                     extra={"method": table.method, "params": table.params,
                            "provenance": table.provenance, "table": table})


def header_for_conversion(source: RangeFile, trt_version=None, trt_algorithm: Optional[str] = None) -> str:
    """The TensorRT cache header to write when ``source`` is converted to a TensorRT cache.

    Pure: reads nothing but its arguments.

    * Neither ``trt_version`` nor ``trt_algorithm`` given: the source's own header, exactly (a
      TensorRT 4 bare ``1`` included), so a TensorRT cache converts to itself byte for byte; a
      quantlab table gives the header its cache was written with (``trt_cache_header`` in its
      provenance); any other source ``TRT-8601-EntropyCalibration2``.
    * Only one given: the other comes from the source where it has one (else the defaults,
      8.6.1 and EntropyCalibration2). A 4.x ``trt_version`` gives the bare ``1`` header, which
      records no algorithm.
    * Asking for an algorithm for a TensorRT 4 source without a version is refused: its header
      holds no version number to keep (say which TensorRT should read the cache).

    ``trt_version`` is text (``"10.3.0"``, ``"8601"``) or a tuple. Errors are QuantlabErrors
    naming ``trt_version`` / ``trt_algorithm``.
    """
    old = _source_header(source)
    if trt_version is None and trt_algorithm is None:
        return old if old is not None else make_header(DEFAULT_TRT_VERSION, DEFAULT_ALGORITHM)
    if isinstance(trt_version, str):
        trt_version = parse_version(trt_version)
    old_cache = TrtCache(old) if old is not None else None
    if trt_version is None:
        if old == TRT4_HEADER:
            raise QuantlabError(
                f"{source.source or 'the source'} has a TensorRT 4 header ('1'), which records no "
                f"algorithm and no version number: pass `trt_version` too to write a "
                f"TRT-<version>-{trt_algorithm} header",
                params=("trt_version",),
            )
        trt_version = old_cache.version if old_cache is not None else DEFAULT_TRT_VERSION
    if trt_algorithm is None:
        trt_algorithm = (old_cache.algorithm if old_cache is not None else None) or DEFAULT_ALGORITHM
    return make_header(trt_version, trt_algorithm)


def _source_header(source: RangeFile) -> Optional[str]:
    """The TensorRT header a range file carries or records (None: none)."""
    if source.trt is not None:
        return source.trt.header
    recorded = (source.extra.get("provenance") or {}).get("trt_cache_header")
    if isinstance(recorded, str):
        try:
            return check_header(recorded)
        except CacheFormatError:
            return None
    return None


def read_ranges(path: str | Path) -> RangeFile:
    return parse_ranges(read_cache_bytes(path), str(path))


def write_ranges(path: str | Path, fmt: str, amax: dict[str, float], *,
                 trt_header: Optional[str] = None, provenance: Optional[dict] = None,
                 like: Optional[RangeFile] = None) -> Path:
    """Write ``amax`` in format ``fmt`` (atomically).

    ``like``: the range file being converted; a TensorRT cache written from a TensorRT source
    keeps the source's line endings, so with ``trt_header=header_for_conversion(source)`` and
    ``source.amax`` the output is the source, byte for byte.
    """
    if fmt == "trt":
        layout = like.trt if like is not None and like.trt is not None else TrtCache("")
        return write_trt_cache(path, amax, trt_header or make_header(),
                               newline=layout.newline, final_newline=layout.final_newline)
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
