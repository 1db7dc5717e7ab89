"""``dense``: maps (text-detection probability maps, segmentation logits), judged as masks.

A text detector (DBNet, PP-OCR det) or a segmenter is used through the mask it yields, not
through its raw values: a map can lose SQNR where it does not matter (deep inside a region)
and keep it where the mask flips. Outputs ``[N, K, H, W]``:

* K = 1 (a probability map): the mask is ``value > threshold`` (``threshold``, default 0.5,
  strictly above as DBNet binarises); IoU of the INT8 mask with the FP32 mask, intersection and
  union summed over all pixels of all samples (a data-set IoU, not a mean of per-image IoUs,
  so small images do not weigh as much as large ones). Both masks empty everywhere is IoU 1.0
  (they agree), with the foreground counts in the result to show it.
* K > 1 (per-class scores): the masks are the per-pixel argmax class; IoU per class as above,
  mean over the classes present in either model's map (background, usually class 0, is a
  class like the others); ``threshold`` is not used.

Also: per-pixel agreement (the fraction of pixels with the same mask value or class) and the
fidelity numbers. State is integer counts, so merging is exact. The score is the worst
output's IoU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np

from ...errors import QuantlabError
from .base import Fidelity, Metric, nan_min, number, slices

MIN_SIZE = 8


class DenseMetric(Metric):
    """Mask IoU (binarised or argmax), pixel agreement and fidelity per ``[N, K, H, W]`` output."""

    name = "dense"

    def __init__(self, outputs: Sequence[str], *, threshold: float = 0.5) -> None:
        super().__init__(outputs, threshold=number("dense", "threshold", threshold))
        self.fidelity = {name: Fidelity() for name in self.outputs}
        self.channels: dict[str, Optional[int]] = dict.fromkeys(self.outputs)
        self.intersection: dict[str, np.ndarray] = {}  # per class (one entry for K = 1)
        self.area_ref: dict[str, np.ndarray] = {}
        self.area_got: dict[str, np.ndarray] = {}
        self.agree = dict.fromkeys(self.outputs, 0)
        self.pixels = dict.fromkeys(self.outputs, 0)

    @classmethod
    def applies(cls, shapes: Mapping[str, tuple]) -> bool:
        """Every output is a map: per sample (K, H, W), K known, H and W >= 8 or dynamic."""
        def is_map(shape: tuple) -> bool:
            return (len(shape) == 3 and shape[0] is not None and shape[0] >= 1
                    and all(s is None or s >= MIN_SIZE for s in shape[1:]))
        return bool(shapes) and all(is_map(tuple(s)) for s in shapes.values())

    def update(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
               labels: Optional[np.ndarray]) -> None:
        for name, ref, got in self.pairs(reference, candidate):
            if ref.ndim != 4:
                raise QuantlabError(f"metric 'dense' needs [N, K, H, W] maps; output {name!r} has shape "
                                    f"{ref.shape}: choose the maps with `outputs`, or use `metric` fidelity",
                                    params=("outputs", "metric"))
            self.fidelity[name].update(ref, got)
            channels = ref.shape[1]
            if self.channels[name] not in (None, channels):
                raise QuantlabError(f"output {name!r} had {self.channels[name]} channels and now {channels}; "
                                    "every batch must come from the same model")
            if self.channels[name] is None:
                self.channels[name] = channels
                self.intersection[name], self.area_ref[name], self.area_got[name] = (
                    np.zeros(max(channels, 2), dtype=np.int64) for _ in range(3))
            for part in slices(ref.shape[0], int(np.prod(ref.shape[1:], dtype=np.int64))):
                self._count(name, ref[part], got[part], channels)

    def _count(self, name: str, ref: np.ndarray, got: np.ndarray, channels: int) -> None:
        """Fold one slice of samples into the per-class pixel counts (one channel: 0 = off, 1 = on)."""
        if channels == 1:
            threshold = self.params["threshold"]
            on_ref, on_got = ref[:, 0] > threshold, got[:, 0] > threshold
            same = on_ref == on_got
            both = int(np.count_nonzero(on_ref & on_got))
            area_ref, area_got = int(np.count_nonzero(on_ref)), int(np.count_nonzero(on_got))
            off = int(np.count_nonzero(same)) - both
            counts = ((off, both), (same.size - area_ref, area_ref), (same.size - area_got, area_got))
        else:
            classes_ref, classes_got = ref.argmax(axis=1), got.argmax(axis=1)
            same = classes_ref == classes_got
            counts = (np.bincount(classes_ref[same], minlength=channels),
                      np.bincount(classes_ref.ravel(), minlength=channels),
                      np.bincount(classes_got.ravel(), minlength=channels))
        for total, count in zip((self.intersection[name], self.area_ref[name], self.area_got[name]), counts):
            total += np.asarray(count, dtype=np.int64)
        self.agree[name] += int(np.count_nonzero(same))
        self.pixels[name] += int(same.size)

    def merge(self, other: DenseMetric) -> None:
        self.check_mergeable(other)
        for name in self.outputs:
            self.fidelity[name].merge(other.fidelity[name])
            if other.channels[name] is None:
                continue
            if self.channels[name] not in (None, other.channels[name]):
                raise ValueError(f"cannot merge dense metrics of output {name!r} with {self.channels[name]} "
                                 f"and {other.channels[name]} channels")
            if self.channels[name] is None:
                self.channels[name] = other.channels[name]
                for mine, theirs in ((self.intersection, other.intersection), (self.area_ref, other.area_ref),
                                     (self.area_got, other.area_got)):
                    mine[name] = theirs[name].copy()
            else:
                self.intersection[name] += other.intersection[name]
                self.area_ref[name] += other.area_ref[name]
                self.area_got[name] += other.area_got[name]
            self.agree[name] += other.agree[name]
            self.pixels[name] += other.pixels[name]

    def _iou(self, name: str) -> dict:
        channels = self.channels[name]
        if channels is None:
            return {"mask_iou": float("nan"), "pixel_agreement": float("nan"), "pixels": 0}
        inter = self.intersection[name]
        union = self.area_ref[name] + self.area_got[name] - inter
        out = {"channels": channels, "pixels": self.pixels[name],
               "pixel_agreement": self.agree[name] / max(self.pixels[name], 1)}
        if channels == 1:
            out["mask_iou"] = float(inter[1] / union[1]) if union[1] else 1.0
            out["foreground_pixels_fp32"] = int(self.area_ref[name][1])
            out["foreground_pixels_int8"] = int(self.area_got[name][1])
        else:
            present = np.nonzero(union)[0]
            per_class = {str(int(c)): float(inter[c] / union[c]) for c in present}
            out["mask_iou"] = float(np.mean(list(per_class.values())))
            out["iou_per_class"] = per_class
        return out

    def result(self) -> dict:
        outputs = [{"output": name, "samples": f.samples, **f.result(), **self._iou(name)}
                   for name, f in self.fidelity.items()]
        return self.envelope(outputs, nan_min(o["mask_iou"] for o in outputs), "mask_iou")
