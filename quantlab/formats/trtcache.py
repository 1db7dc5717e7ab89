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

A header is compared as text by TensorRT, so the writer only makes headers TensorRT itself
writes: ``TRT-<4 or 6 digits>-<name of letters, digits and underscores>``, or ``1`` for
TensorRT 4 (which records no algorithm). A version or algorithm that cannot be written is a
:class:`~quantlab.errors.QuantlabError` naming ``trt_version`` / ``trt_algorithm``.

Scales that are zero, negative, NaN, infinite or *subnormal* in float32 are never written: a
subnormal scale (below 2**-126, i.e. amax below about 1.5e-36) is flushed to zero by GPU
kernels, which makes it a zero scale in all but name.
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
from ..errors import CacheFormatError, QuantlabError

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
DEFAULT_TRT_VERSION = (8, 6, 1)
DEFAULT_ALGORITHM = "EntropyCalibration2"
TRT4_HEADER = "1"
TRT4_DESCRIPTION = "TensorRT 4, no algorithm recorded"
_HEADER = re.compile(r"^TRT-(\d+)-(\S+)$")
_HEX = re.compile(r"^[0-9a-fA-F]{1,8}$")
# What TensorRT's headers hold after the version: CalibrationAlgoType names such as
# EntropyCalibration2 (letters, digits, underscores; a letter first).
_ALGORITHM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# The smallest normal float32: a smaller positive scale is subnormal and flushes to zero on GPUs.
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
_VERSION_HINT = "use major.minor[.patch] such as 8.6.1 or 10.3.0, or a header number such as 8601 or 100300"


def _version_error(text: str, why: str) -> QuantlabError:
    return QuantlabError(f"`trt_version` {text!r} is not a TensorRT version ({why}); {_VERSION_HINT}",
                         params=("trt_version",))


def encode_version(major: int, minor: int, patch: int) -> int:
    """TensorRT's integer version as written in cache headers (TensorRT 5 and later).

    ``major*1000 + minor*100 + patch`` through TensorRT 9 (a one-digit minor), and
    ``major*10000 + minor*100 + patch`` from TensorRT 10. TensorRT 4 wrote no number (its
    header is a bare ``1``: see :func:`make_header`).
    """
    return _encode_version(major, minor, patch, f"{major}.{minor}.{patch}")


def _encode_version(major: int, minor: int, patch: int, text: str) -> int:
    """:func:`encode_version`; errors quote ``text``, the version as the user wrote it."""
    numbers = []
    for part in (major, minor, patch):
        if isinstance(part, bool) or not isinstance(part, (int, np.integer)):
            raise _version_error(text, "the parts must be whole numbers")
        numbers.append(int(part))
    major, minor, patch = numbers
    if major == 4:
        raise _version_error(text, "TensorRT 4 headers carry no number: they are a bare '1'")
    if major < 4:
        raise _version_error(text, "quantlab knows the caches of TensorRT 4 and later")
    if major > 99:
        raise _version_error(text, "the major version has one or two digits")
    if not (0 <= minor <= 99 and 0 <= patch <= 99):
        raise _version_error(text, "minor and patch must be 0 to 99")
    if major >= 10:
        return major * 10000 + minor * 100 + patch
    if minor > 9:
        raise _version_error(text, f"TensorRT {major}.x minor versions have one digit")
    return major * 1000 + minor * 100 + patch


def decode_version(number: int) -> tuple[int, int, int]:
    """Inverse of :func:`encode_version`: 4-digit numbers are TensorRT 5-9, 6-digit ones 10-99."""
    if 100000 <= number <= 999999:
        return number // 10000, number // 100 % 100, number % 100
    if 1000 <= number <= 9999:
        return number // 1000, number // 100 % 10, number % 100
    raise _version_error(str(number), "a header number has 4 digits through TensorRT 9 (8601 = 8.6.1) "
                                      "and 6 from TensorRT 10 (100300 = 10.3.0)")


def parse_version(text: str) -> tuple[int, int, int]:
    """'10.3.0' / '8.6' / '4' / '8601' / '100300' -> (major, minor, patch).

    Anything else is a :class:`QuantlabError` naming ``trt_version``. A fourth dotted part (the
    build number of ``tensorrt.__version__``, e.g. 10.3.0.26) is accepted and ignored.
    """
    if not isinstance(text, str):
        raise _version_error(str(text), "expected text")
    text = text.strip()
    if re.fullmatch(r"\d{4,6}", text):
        version = decode_version(int(text))
        _encode_version(*version, text)
        return version
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(re.fullmatch(r"\d{1,3}", p) for p in parts):
        raise _version_error(text, "expected up to four dot-separated numbers")
    major, minor, patch = (int(p) for p in (parts + ["0", "0"])[:3])
    if major != 4:
        _encode_version(major, minor, patch, text)
    elif not (minor <= 9 and patch <= 99):
        raise _version_error(text, "TensorRT 4.x minor versions have one digit")
    return major, minor, patch


def check_algorithm(algorithm: str) -> str:
    """``algorithm`` if a cache header can carry it (letters, digits, underscores), else a QuantlabError."""
    if not isinstance(algorithm, str) or not _ALGORITHM_NAME.fullmatch(algorithm):
        raise QuantlabError(
            f"`trt_algorithm` {algorithm!r} cannot go in a cache header: TensorRT compares the header "
            "text, so use a calibrator algorithm name of letters, digits and underscores such as "
            f"{', '.join(ALGORITHMS[:3])}",
            params=("trt_algorithm",),
        )
    return algorithm


def make_header(version: tuple[int, int, int] | str = DEFAULT_TRT_VERSION,
                algorithm: str = DEFAULT_ALGORITHM) -> str:
    """The first line of a cache for TensorRT ``version`` and calibrator ``algorithm``.

    ``TRT-<version number>-<algorithm>`` for TensorRT 5 and later (``TRT-8601-EntropyCalibration2``,
    ``TRT-100300-MinMaxCalibration``). TensorRT 4 headers carry no algorithm: for a 4.x version
    the header is the bare ``1`` TensorRT 4 wrote, whatever ``algorithm`` says (it is still
    checked). ``version`` may be a tuple or text such as ``"10.3.0"``. A version or algorithm
    that no header can carry is a :class:`QuantlabError` naming ``trt_version`` or ``trt_algorithm``.
    """
    check_algorithm(algorithm)
    if isinstance(version, str):
        version = parse_version(version)
    try:
        parts = tuple(version)
    except TypeError as exc:
        raise _version_error(str(version), "expected (major, minor, patch)") from exc
    if not 1 <= len(parts) <= 4:
        raise _version_error(".".join(map(str, parts)), "expected (major, minor, patch)")
    major, minor, patch = (parts + (0, 0))[:3]
    if major == 4 and not isinstance(major, bool):
        parse_version(".".join(map(str, (major, minor, patch))))  # checks minor and patch
        return TRT4_HEADER
    return f"TRT-{encode_version(major, minor, patch)}-{algorithm}"


def describe_header(header: str) -> str:
    """'TensorRT 8.6.1, EntropyCalibration2' or, for a bare '1', :data:`TRT4_DESCRIPTION`."""
    if header == TRT4_HEADER:
        return TRT4_DESCRIPTION
    match = _HEADER.match(header)
    if not match:
        return f"not a TensorRT header: {header[:40]!r}"
    return f"TensorRT {'.'.join(map(str, decode_version(int(match.group(1)))))}, {match.group(2)}"


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
    """Parse TensorRT cache text; any problem names the line it is on and shows it.

    A file that starts like a TensorRT cache is reported as one: ``<source>: TensorRT
    calibration cache (<header>) with a bad line 3: 'foo: zz' is not '<tensor name>: <hex
    scale>' (...)``.
    """
    if not text.strip():
        raise CacheFormatError(f"{source} is empty: not a TensorRT calibration cache")
    if text.startswith("\ufeff"):
        raise CacheFormatError(
            f"{source} starts with a byte-order mark before its TensorRT cache header; TensorRT "
            "compares the header text and would ignore this cache: save the file without the BOM"
        )
    newline = "\r\n" if "\r\n" in text else "\n"
    final_newline = text.endswith(newline)
    body = text[: -len(newline)] if final_newline else text
    lines = body.split(newline)
    header = lines[0]
    check_header(header, source)

    def bad(number: int, line: str, why: str) -> CacheFormatError:
        return CacheFormatError(
            f"{source}: TensorRT calibration cache ({header}) with a bad line {number}: "
            f"{line[:60]!r} is not '<tensor name>: <hex scale>' ({why})"
        )

    scales: dict[str, float] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        if newline == "\r\n" and "\n" in line:
            raise bad(number, line, "mixed line endings: this file uses CRLF, this line a bare LF")
        name, sep, value = line.rpartition(": ")
        if not line:
            raise bad(number, line, "an empty line")
        if not sep:
            raise bad(number, line, "no ': ' between a tensor name and its scale")
        if not name:
            raise bad(number, line, "no tensor name before ': '")
        if "\x00" in line:
            raise bad(number, line, "it holds a NUL byte: the file is corrupt")
        if not _HEX.match(value):
            raise bad(number, line, f"{value[:20]!r} is not a float32 scale in hex: 1 to 8 hex digits")
        if name in scales:
            raise CacheFormatError(
                f"{source}: TensorRT calibration cache ({header}) with a bad line {number}: tensor "
                f"{name[:60]!r} appears twice (first on line {first_line[name]})"
            )
        scales[name] = hex_to_scale(value)
        first_line[name] = number
    return TrtCache(header, scales, newline, final_newline)


def check_header(header: str, source: str = "cache") -> str:
    """``header`` if it is a header TensorRT writes, else a CacheFormatError saying why not."""
    if header == TRT4_HEADER:
        return header
    match = _HEADER.match(header)
    if not match:
        why = ("trailing whitespace; TensorRT compares the header text" if header != header.rstrip() else
               "expected TRT-<version>-<Algorithm> such as TRT-8601-EntropyCalibration2, or TensorRT 4's bare 1")
        raise CacheFormatError(f"{source} line 1: {header[:60]!r} is not a TensorRT cache header ({why})")
    digits = match.group(1)
    if len(digits) not in (4, 6) or digits.startswith("0"):
        raise CacheFormatError(
            f"{source} line 1: {header[:60]!r} is not a TensorRT cache header: its version number "
            f"{digits[:12]} is not one TensorRT writes (4 digits through TensorRT 9, 8601 = 8.6.1; "
            "6 from TensorRT 10, 100300 = 10.3.0)"
        )
    return header


def looks_like_trt_cache(raw: bytes) -> bool:
    """Does ``raw`` start like a TensorRT cache (``TRT-`` or a bare ``1`` line)?"""
    first = raw.split(b"\n", 1)[0].rstrip(b"\r")
    return raw.startswith((b"TRT-", b"\xef\xbb\xbfTRT-")) or (first == b"1" and b"\n" in raw)


def decode_cache_text(raw: bytes, source: str = "cache") -> str:
    """The text of a file that starts like a TensorRT cache; bytes that are not UTF-8 name their line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        first = raw.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
        number = raw.count(b"\n", 0, exc.start) + 1
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        line_end = raw.find(b"\n", exc.start)
        line = raw[line_start: line_end if line_end >= 0 else len(raw)]
        raise CacheFormatError(
            f"{source}: TensorRT calibration cache ({first[:40]}) with a bad line {number}: "
            f"{line[:60]!r} is not text (byte {exc.start} of the file is not UTF-8: the file is "
            "corrupt, or not a TensorRT cache)"
        ) from exc


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
    if not looks_like_trt_cache(raw):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CacheFormatError(
                f"{path} is binary (byte {exc.start} is not text): not a TensorRT text cache"
            ) from exc
    return parse_trt_cache(decode_cache_text(raw, str(path)), str(path))


def write_trt_cache(path: str | Path, amax: dict[str, float], header: str, *,
                    newline: str = "\n", final_newline: bool = True) -> Path:
    """Write amax values as a TensorRT cache (scale = amax / 127, float32), atomically."""
    return write_bytes_atomic(path, format_trt_cache(amax, header, newline=newline,
                                                     final_newline=final_newline).encode("utf-8"))


def format_trt_cache(amax: dict[str, float], header: str, *, newline: str = "\n",
                     final_newline: bool = True) -> str:
    """The text of a TensorRT cache holding ``amax`` (scale = amax / 127, float32).

    Refuses zero, negative, NaN, infinite and subnormal scales: TensorRT would build a
    silently broken engine from them (GPU kernels flush a subnormal scale to zero). ``newline``
    and ``final_newline`` set the line endings (keep those of a cache being converted).
    """
    scales = {}
    for name, value in amax.items():
        scale = float(_float32(value / 127.0))
        if not math.isfinite(scale) or scale <= 0:
            raise CacheFormatError(
                f"refusing to write scale {scale} for tensor {name!r} (amax {value}): "
                "TensorRT needs a finite positive scale"
            )
        if scale < FLOAT32_TINY:
            raise CacheFormatError(
                f"refusing to write scale {scale:.3g} for tensor {name!r} (amax {value:.3g}): it is "
                f"subnormal in float32 and GPUs flush it to zero; TensorRT needs a scale of at least "
                f"{FLOAT32_TINY:.3g} (amax {FLOAT32_TINY * 127:.3g})"
            )
        scales[name] = scale
    return TrtCache(header, scales, newline, final_newline).to_text()


def _float32(value: float) -> float:
    with np.errstate(over="ignore"):
        return float(np.float32(value))
