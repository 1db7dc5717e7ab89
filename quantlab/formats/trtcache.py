"""The TensorRT calibration cache: a text file TensorRT 4 to 10 reads for implicit INT8 builds.

Layout::

    TRT-<version>-<Algorithm>          (TensorRT 4: a bare "1")
    <tensor name>: <hex>               (one line per tensor)

``<version>`` is ``major*1000 + minor*100 + patch`` up to TensorRT 9 and
``major*10000 + minor*100 + patch`` from TensorRT 10 (8601 = 8.6.1, 100300 = 10.3.0).
``<hex>`` is the IEEE-754 float32 bit pattern of the *scale* (amax / 127) printed as an
unsigned integer: lowercase, no ``0x``, no zero padding, ``0`` for 0.0. Tensor names may hold
spaces, colons, slashes and parentheses, so a line splits on its *last* ``": "``.

TensorRT ignores a cache whose header does not match the calibrator it is given (an
EntropyCalibration2 cache handed to a MinMax calibrator is recalibrated from scratch), so the
writer lets the caller choose both parts of the header. Parsing then formatting a cache gives
back the same bytes (line endings included).
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..atomic import write_bytes_atomic
from ..errors import CacheFormatError

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
DEFAULT_TRT_VERSION = (8, 6, 1)
_HEADER = re.compile(r"^TRT-(\d+)-(\S+)$")
_HEX = re.compile(r"^[0-9a-fA-F]{1,8}$")


def encode_version(major: int, minor: int, patch: int) -> int:
    """TensorRT's integer version as written in cache headers."""
    if not (0 <= minor <= 99 and 0 <= patch <= 99) or major < 1:
        raise ValueError(f"not a TensorRT version: {major}.{minor}.{patch}")
    if major >= 10:
        return major * 10000 + minor * 100 + patch
    if minor > 9:
        raise ValueError(f"TensorRT {major}.x versions have a one-digit minor, got {minor}")
    return major * 1000 + minor * 100 + patch


def decode_version(number: int) -> tuple[int, int, int]:
    """Inverse of :func:`encode_version` (6-digit numbers are TensorRT 10 and later)."""
    if number >= 100000:
        return number // 10000, number // 100 % 100, number % 100
    return number // 1000, number // 100 % 10, number % 100


def parse_version(text: str) -> tuple[int, int, int]:
    """'10.3.0' / '8.6' / '8601' / '100300' -> (major, minor, patch)."""
    text = text.strip()
    if re.fullmatch(r"\d{4,6}", text):
        return decode_version(int(text))
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a TensorRT version: {text!r} (expected e.g. 8.6.1 or 10.3.0)")
    major, minor, patch = (int(p) for p in (parts + ["0", "0"])[:3])
    encode_version(major, minor, patch)
    return major, minor, patch


def make_header(version: tuple[int, int, int] = DEFAULT_TRT_VERSION,
                algorithm: str = "EntropyCalibration2") -> str:
    if not re.fullmatch(r"[A-Za-z0-9_]+", algorithm):
        raise ValueError(f"not a calibration algorithm name: {algorithm!r}")
    return f"TRT-{encode_version(*version)}-{algorithm}"


def scale_to_hex(scale: float) -> str:
    """float32 bit pattern of ``scale`` as TensorRT prints it."""
    return format(int(np.array(scale, dtype=np.float32).view(np.uint32)), "x")


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", struct.pack(">I", int(text, 16)))[0]


@dataclass
class TrtCache:
    """A parsed TensorRT calibration cache; ``scales`` keeps the file's order."""

    header: str
    scales: dict[str, float] = field(default_factory=dict)
    newline: str = "\n"
    final_newline: bool = True

    @property
    def version(self) -> Optional[tuple[int, int, int]]:
        match = _HEADER.match(self.header)
        return decode_version(int(match.group(1))) if match else None

    @property
    def version_number(self) -> Optional[int]:
        match = _HEADER.match(self.header)
        return int(match.group(1)) if match else None

    @property
    def algorithm(self) -> Optional[str]:
        match = _HEADER.match(self.header)
        return match.group(2) if match else None

    def amax(self) -> dict[str, float]:
        """amax per tensor (scale * 127, in float64)."""
        return {name: scale * 127.0 for name, scale in self.scales.items()}

    def to_text(self) -> str:
        lines = [self.header] + [f"{name}: {scale_to_hex(s)}" for name, s in self.scales.items()]
        text = self.newline.join(lines)
        return text + self.newline if self.final_newline else text

    def save(self, path: str | Path) -> Path:
        return write_bytes_atomic(path, self.to_text().encode("utf-8"))


def parse_trt_cache(text: str, source: str = "cache") -> TrtCache:
    """Parse TensorRT cache text; any problem names the line it is on."""
    if not text.strip():
        raise CacheFormatError(f"{source} is empty: not a TensorRT calibration cache")
    newline = "\r\n" if "\r\n" in text else "\n"
    final_newline = text.endswith(newline)
    body = text[: -len(newline)] if final_newline else text
    lines = body.split(newline)
    header = lines[0]
    if header != "1" and not _HEADER.match(header):
        raise CacheFormatError(
            f"{source} line 1: {header[:60]!r} is not a TensorRT cache header "
            "(expected TRT-<version>-<Algorithm>, e.g. TRT-8601-EntropyCalibration2)"
        )
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(": ")
        if not sep or not name:
            raise CacheFormatError(
                f"{source} line {number}: {line[:60]!r} is not '<tensor name>: <hex scale>'"
            )
        if not _HEX.match(value):
            raise CacheFormatError(
                f"{source} line {number}: {value[:20]!r} is not a float32 in hex "
                "(1 to 8 hex digits expected)"
            )
        if name in scales:
            raise CacheFormatError(f"{source} line {number}: tensor {name!r} appears twice")
        scales[name] = hex_to_scale(value)
    return TrtCache(header, scales, newline, final_newline)


def read_cache_bytes(path: str | Path) -> bytes:
    """The bytes of a cache file; a missing or unreadable file is a CacheFormatError."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise CacheFormatError(f"{path} does not exist") from exc
    except OSError as exc:
        raise CacheFormatError(f"cannot read {path}: {exc.strerror}") from exc


def read_trt_cache(path: str | Path) -> TrtCache:
    raw = read_cache_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CacheFormatError(
            f"{path} is binary (byte {exc.start} is not text): not a TensorRT text cache"
        ) from exc
    return parse_trt_cache(text, str(path))


def write_trt_cache(path: str | Path, amax: dict[str, float], header: str) -> Path:
    """Write amax values as a TensorRT cache (scale = amax / 127, float32), atomically.

    Refuses zero, negative, NaN and infinite scales: TensorRT would build a silently broken
    engine from them.
    """
    scales = {}
    for name, value in amax.items():
        scale = float(_float32(value / 127.0))
        if not math.isfinite(scale) or scale <= 0:
            raise CacheFormatError(
                f"refusing to write scale {scale} for tensor {name!r} (amax {value}): "
                "TensorRT needs a finite positive scale"
            )
        scales[name] = scale
    return TrtCache(header, scales).save(path)


def _float32(value: float) -> float:
    with np.errstate(over="ignore"):
        return float(np.float32(value))
