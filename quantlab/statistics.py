"""Collected activation statistics of one model: a file of their own.

Collect once, then run any calibrator on the file offline; collect shards of the data on
several machines and merge the files. Thanks to the power-of-two histogram grid
(:mod:`quantlab.histogram`) a merge of shards equals, byte for byte, one run over all the data.

File format: an uncompressed ``.npz`` (readable with ``numpy.load``) holding ``meta.json``
(format version, model hash, tensor names, sample count, data fingerprint) and one array per
field across tensors. Zip entries carry a fixed timestamp so equal statistics give equal bytes.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .atomic import write_bytes_atomic
from .errors import QuantlabError, StatisticsError
from .histogram import DEFAULT_BINS, MAX_BINS, MIN_BINS, TensorHistogram, check_bins
from .preprocess import DataFingerprint

FORMAT = "quantlab-statistics"
VERSION = 1


@dataclass
class Statistics:
    """Per-tensor histograms of one model's activations over a set of samples."""

    model_sha256: str
    tensors: dict[str, TensorHistogram]
    num_samples: int = 0
    fingerprint: DataFingerprint = field(default_factory=DataFingerprint)
    bins: int = DEFAULT_BINS
    # How samples became model inputs (preprocess.describe_scaling); reported, not saved.
    scaling: Optional[str] = field(default=None, compare=False)
    # Per-sample shapes of each input seen while collecting (dynamic axes); reported, not saved.
    input_shapes: dict = field(default_factory=dict, compare=False)

    @classmethod
    def empty(cls, model_sha256: str, names: Iterable[str], bins: int = DEFAULT_BINS) -> Statistics:
        return cls(model_sha256, {name: TensorHistogram(bins) for name in names}, bins=bins)

    def merge(self, other: Statistics) -> None:
        """Fold in statistics of other samples of the same model."""
        if other.model_sha256 != self.model_sha256:
            raise StatisticsError(
                "cannot merge statistics of different models "
                f"(sha256 {self.model_sha256[:12]}... vs {other.model_sha256[:12]}...)"
            )
        if list(other.tensors) != list(self.tensors) or other.bins != self.bins:
            raise StatisticsError("cannot merge statistics with different tensors or bin counts")
        for name, hist in other.tensors.items():
            self.tensors[name].merge(hist)
        self.num_samples += other.num_samples
        self.fingerprint.merge(other.fingerprint)

    def without(self, part: Statistics) -> Optional[Statistics]:
        """Statistics of the samples counted here but not in ``part`` (statistics of some of the same
        samples, e.g. the ones ``auto`` judges on), tensor by tensor (see
        :meth:`TensorHistogram.without`); None when ``part`` is not contained in these."""
        if part.model_sha256 != self.model_sha256 or part.bins != self.bins or part.num_samples >= self.num_samples:
            return None
        tensors = {}
        for name, hist in self.tensors.items():
            if name not in part.tensors:
                return None
            rest = hist.without(part.tensors[name])
            if rest is None:
                return None
            tensors[name] = rest
        return Statistics(self.model_sha256, tensors, self.num_samples - part.num_samples, bins=self.bins,
                          scaling=self.scaling)

    def to_bytes(self) -> bytes:
        names = list(self.tensors)
        hists = [self.tensors[n] for n in names]
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "model_sha256": self.model_sha256,
            "bins": self.bins,
            "num_samples": self.num_samples,
            "data_fingerprint": self.fingerprint.hexdigest,
            "tensors": names,
            "sample_digests": self.fingerprint.sample_digests(),
        }
        arrays = {
            "counts": np.stack([h.counts for h in hists]) if hists else np.zeros((0, self.bins), np.int64),
            "exponent": np.array([h.exponent for h in hists], dtype=np.int64),
            "max_abs": np.array([h.max_abs for h in hists], dtype=np.float64),
            "min_value": np.array([h.min_value for h in hists], dtype=np.float64),
            "max_value": np.array([h.max_value for h in hists], dtype=np.float64),
            "nan_count": np.array([h.nan_count for h in hists], dtype=np.int64),
            "inf_count": np.array([h.inf_count for h in hists], dtype=np.int64),
        }
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            _write_entry(archive, "meta.json", json.dumps(meta, indent=1).encode())
            for key, array in arrays.items():
                payload = io.BytesIO()
                np.lib.format.write_array(payload, array, allow_pickle=False)
                _write_entry(archive, f"{key}.npy", payload.getvalue())
        return buffer.getvalue()

    def save(self, path: str | Path) -> Path:
        return write_bytes_atomic(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> Statistics:
        path = Path(path)
        try:
            with zipfile.ZipFile(path) as archive:
                meta = json.loads(archive.read("meta.json"))
                arrays = {
                    name[:-4]: np.lib.format.read_array(io.BytesIO(archive.read(name)), allow_pickle=False)
                    for name in archive.namelist() if name.endswith(".npy")
                }
        except FileNotFoundError as exc:
            raise StatisticsError(f"statistics file {path} does not exist") from exc
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
            raise StatisticsError(
                f"{path} is not a quantlab statistics file (or it is truncated): {exc}"
            ) from exc
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise StatisticsError(f"{path} is not a version-{VERSION} quantlab statistics file")
        try:
            check_bins(meta.get("bins"))
        except QuantlabError:
            raise StatisticsError(
                f"{path} holds histograms of {meta.get('bins')!r} bins, which this quantlab cannot calibrate "
                f"(a power of two from {MIN_BINS} to {MAX_BINS}); collect it again") from None
        names = meta["tensors"]
        tensors = {}
        for row, name in enumerate(names):
            tensors[name] = TensorHistogram(
                bins=meta["bins"],
                counts=arrays["counts"][row].astype(np.int64),
                exponent=int(arrays["exponent"][row]),
                max_abs=float(arrays["max_abs"][row]),
                min_value=float(arrays["min_value"][row]),
                max_value=float(arrays["max_value"][row]),
                nan_count=int(arrays["nan_count"][row]),
                inf_count=int(arrays["inf_count"][row]),
            )
        fingerprint = DataFingerprint(int(meta["data_fingerprint"], 16), meta["num_samples"],
                                      meta.get("sample_digests", []))
        return cls(meta["model_sha256"], tensors, meta["num_samples"], fingerprint, meta["bins"])


def merge_files(paths: Iterable[str | Path]) -> Statistics:
    """Merge statistics files of shards of the data into one."""
    merged = None
    for path in paths:
        stats = Statistics.load(path)
        if merged is None:
            merged = stats
        else:
            merged.merge(stats)
    if merged is None:
        raise StatisticsError("no statistics files to merge")
    return merged


def _write_entry(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)
