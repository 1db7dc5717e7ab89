"""quantlab's calibration table: the ranges of one calibration, with where they came from.

The table is the pivot every output is written from (TensorRT cache, Q/DQ ONNX, ONNX
Runtime tables), and the one file that can say *which* model and data it belongs to: model
SHA-256, data fingerprint and sample count, method and parameters, tool versions and time.
A table used with another model is refused with a clear message.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

import numpy as np

from .atomic import write_text_atomic
from .errors import CacheFormatError, QuantlabError
from .weights import WeightRange

FORMAT = "quantlab-calibration-table"
VERSION = 1


@dataclass
class CalibrationTable:
    """Activation amax per tensor, per-channel weight amax, method and provenance."""

    method: str
    params: dict
    activations: dict[str, float]
    weights: dict[str, WeightRange] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # tensor -> why its amax is special
    methods: dict[str, str] = field(default_factory=dict)  # tensor -> the method that chose it (``auto``)
    # layer -> corrected float bias (bias correction): Q/DQ exports write it; a TensorRT cache cannot.
    biases: dict[str, np.ndarray] = field(default_factory=dict)

    def scales(self) -> dict[str, float]:
        """scale = amax / 127 as float32 (what TensorRT and Q/DQ store)."""
        return {n: float(np.float32(a / 127.0)) for n, a in self.activations.items()}

    def to_dict(self) -> dict:
        scales = self.scales()
        return {
            "format": FORMAT,
            "version": VERSION,
            "method": self.method,
            "params": self.params,
            "provenance": self.provenance,
            "activations": {
                name: {"amax": amax, "scale": scales[name],
                       **({"method": self.methods[name]} if name in self.methods else {}),
                       **({"note": self.notes[name]} if name in self.notes else {})}
                for name, amax in self.activations.items()
            },
            "weights": {
                name: {"op": w.op_type, "axis": w.axis, "amax": [float(v) for v in w.amax]}
                for name, w in self.weights.items()
            },
            **({"biases": {name: [float(v) for v in np.asarray(b, np.float32)] for name, b in self.biases.items()}}
               if self.biases else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"

    def check_writable_ranges(self) -> None:
        """Refuse to write a zero, negative, NaN or infinite amax (a broken engine, silently)."""
        for name, amax in self.activations.items():
            if not (math.isfinite(amax) and amax > 0):
                raise QuantlabError(f"refusing to write amax {amax} for {name!r}: not finite and positive")

    def save(self, path: str | Path) -> Path:
        self.check_writable_ranges()
        return write_text_atomic(path, self.to_json())

    @classmethod
    def from_dict(cls, data: dict, source: str = "table") -> CalibrationTable:
        if data.get("format") != FORMAT:
            raise CacheFormatError(f"{source} is not a quantlab calibration table")
        if data.get("version") != VERSION:
            raise CacheFormatError(f"{source}: unsupported table version {data.get('version')}")
        try:
            activations = {n: float(e["amax"]) for n, e in data["activations"].items()}
            notes = {n: e["note"] for n, e in data["activations"].items() if "note" in e}
            methods = {n: e["method"] for n, e in data["activations"].items() if "method" in e}
            weights = {
                n: WeightRange(e["op"], int(e["axis"]), np.asarray(e["amax"], dtype=np.float64))
                for n, e in data.get("weights", {}).items()
            }
            biases = {n: np.asarray(v, dtype=np.float32) for n, v in data.get("biases", {}).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheFormatError(f"{source}: malformed table entry ({exc})") from exc
        return cls(data.get("method", "?"), data.get("params", {}), activations, weights,
                   data.get("provenance", {}), notes, methods, biases)

    @classmethod
    def load(cls, path: str | Path) -> CalibrationTable:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CacheFormatError(f"table {path} does not exist") from exc
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CacheFormatError(f"{path} is not a JSON calibration table ({exc})") from exc
        return cls.from_dict(data, str(path))

    def check_model(self, model_sha256: str, activation_names: list[str]) -> None:
        """Refuse a table that was made for another model."""
        made_for = self.provenance.get("model", {}).get("sha256")
        if made_for and made_for != model_sha256:
            missing = [n for n in self.activations if n not in set(activation_names)]
            raise QuantlabError(
                f"this table was calibrated on another model (sha256 {made_for[:12]}..., this "
                f"model {model_sha256[:12]}...); {len(missing)} of its {len(self.activations)} "
                "tensors are not in this model. Calibrate this model, or pass the matching model"
            )


def versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for package in ("quantlab", "numpy", "scipy", "onnx", "onnxruntime"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def timestamp() -> str:
    """UTC time of the run; ``SOURCE_DATE_EPOCH`` pins it for byte-reproducible tables."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (_dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch
              else _dt.datetime.now(_dt.timezone.utc))
    return moment.replace(microsecond=0).isoformat()
