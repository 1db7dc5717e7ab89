"""``detection``: YOLO-style heads, judged by what a detector is used for.

One number over a whole YOLOv8 output hides what matters: ``[N, 4+C, A]`` mixes box
coordinates (pixels, up to the input size) with class scores (0..1), so the boxes dominate the
signal power, and a head whose score rows were at cosine 0.86 / SQNR 3.4 dB was reported as
0.9997 / 32 dB. This metric reports box and score fidelity apart and decodes detections.

**Layout** (YOLOv8/YOLO11 convention, as ultralytics exports it): per anchor, 4 box values
``cx, cy, w, h`` (centre and size, in input pixels) then C class scores (after the sigmoid; no
objectness column, so YOLOv5-style ``5+C`` heads are not this layout). The output is
``[N, 4+C, A]`` (``layout=channels_first``, ultralytics' ONNX export) or ``[N, A, 4+C]``
(``channels_last``). ``layout=auto`` (the default) takes the smaller of the two axes as the
``4+C`` one, because a head has far more anchors than classes (8400 anchors for 80 classes at
640x640); equal axes are ambiguous and need an explicit layout.

**Which output** (``head``): by default the one output of the model that looks like a head:
per-sample shape ``(4+C, A)`` or ``(A, 4+C)`` with A >= 100 and 1 <= C <= 1000 (either axis
may be dynamic when the other one says which it is). Other outputs (a segmentation model's
prototypes) get the fidelity numbers.

**Detections**, per image, in numpy: for every class, the anchors whose score is above
``score_threshold`` (default 0.25; strictly above, as ultralytics), at most 30000 candidates per
image (the highest scores; ultralytics' ``max_nms``), greedy NMS per class at IoU
``nms_iou`` (default 0.45; a box is suppressed when its IoU with a kept box is above it), then
the ``max_detections`` (default 300) highest-scoring detections of the image. An anchor may
give a detection in several classes (ultralytics' validation, ``multi_label``).

**mAP@0.5 against FP32**: the FP32 model's detections are the pseudo ground truth. Per image
and class, INT8 detections in descending score order are matched to the unmatched pseudo-GT
box of highest IoU, a true positive when that IoU is >= 0.5 (COCO-style greedy matching). Per
class, AP is the area under the precision envelope over recall (VOC 2010+ all-point
interpolation: the sum, over true positives, of the best precision at that recall or higher,
divided by the pseudo-GT count); mAP is the mean over the classes that have pseudo GT (a class
only INT8 detects counts through the precision of the others, as in COCO). No pseudo GT at all
(FP32 finds nothing above the threshold) gives NaN and a note. The score is this mAP.

**State and merging**: AP needs, per INT8 detection, its class, score and whether it was a true
positive, plus pseudo-GT counts per class: state that grows with detections (never with pixels
or anchors), 13 bytes per detection, capped at ``max_records`` (default 1,000,000, about 13 MB:
more than 3,000 images at 300 detections each); passing the cap is an error that says what to
change. ``merge`` concatenates the records in a fixed order, and the result sorts them by score
with ties ordered false positives first, so the result does not depend on how the images were
split into batches or shards. Labels are not used: box labels do not fit the contract's one
label array per batch (mAP against labels is for a later change).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from ...errors import QuantlabError
from .base import PARAMS, Fidelity, Metric, choice, number

LAYOUTS = ("auto", "channels_first", "channels_last")
MATCH_IOU = 0.5
MAX_CANDIDATES = 30000
MIN_ANCHORS, MAX_CLASSES = 100, 1000


def head_geometry(shape: Sequence[Optional[int]], layout: str = "auto") -> Optional[tuple[str, int, Optional[int]]]:
    """(layout, number of classes, anchors) of a per-sample shape, or None when it is no head.

    ``auto`` insists on the shape of a real head (A >= 100, 1 <= C <= 1000) and takes the
    smaller axis as ``4+C``; an explicit layout only needs 4 box rows and at least one class.
    """
    if len(shape) != 2:
        return None
    first, second = shape
    if layout == "auto":
        if first is None and second is None or first == second:
            return None
        if first is not None and second is not None:
            layout = "channels_first" if first < second else "channels_last"
        else:
            layout = "channels_first" if second is None else "channels_last"
        features, anchors = (first, second) if layout == "channels_first" else (second, first)
        if not 5 <= features <= 4 + MAX_CLASSES or (anchors is not None and anchors < MIN_ANCHORS):
            return None
        return layout, features - 4, anchors
    features, anchors = (first, second) if layout == "channels_first" else (second, first)
    if features is None or features < 5:
        return None
    return layout, features - 4, anchors


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` [k, 4] with every box of ``b`` [m, 4], corners x1, y1, x2, y2."""
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return _ratio(np.maximum(width, 0) * np.maximum(height, 0), _area(a)[:, None], _area(b)[None, :])


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.maximum(boxes[..., 2] - boxes[..., 0], 0) * np.maximum(boxes[..., 3] - boxes[..., 1], 0)


def _ratio(inter: np.ndarray, area_a: np.ndarray, area_b: np.ndarray) -> np.ndarray:
    """inter / union, 0 where the union is empty (degenerate boxes)."""
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, best score first (ties: lower index first).

    The IoUs are :func:`box_iou`'s, computed one kept box against the rest with the corners
    and areas taken apart once (the per-call overhead of ``box_iou`` dominated the loop).
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (np.ascontiguousarray(c) for c in boxes.T)
    areas = _area(boxes)
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest])
        height = np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest])
        iou = _ratio(np.maximum(width, 0) * np.maximum(height, 0), areas[best], areas[rest])
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.intp)


def decode(block: np.ndarray, score_threshold: float, nms_iou: float,
           max_detections: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of one image from its ``[4+C, A]`` head: (boxes x1y1x2y2, scores, classes).

    Sorted by descending score, ties by class then anchor, so the same head always gives the
    same list.
    """
    scores = block[4:]
    classes, anchors = np.nonzero(scores > score_threshold)  # class-major, then anchor
    confidence = scores[classes, anchors]
    if confidence.size > MAX_CANDIDATES:
        best = np.sort(np.argsort(-confidence, kind="stable")[:MAX_CANDIDATES])
        classes, anchors, confidence = classes[best], anchors[best], confidence[best]
    cx, cy, w, h = block[:4, anchors]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    kept = [np.nonzero(classes == c)[0] for c in np.unique(classes)]
    kept = [idx[nms(boxes[idx], confidence[idx], nms_iou)] for idx in kept]
    keep = np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.intp)
    keep = keep[np.argsort(-confidence[keep], kind="stable")][:max_detections]
    return boxes[keep], confidence[keep], classes[keep]


def match(pred_boxes: np.ndarray, pred_scores: np.ndarray, pred_classes: np.ndarray,
          gt_boxes: np.ndarray, gt_classes: np.ndarray, iou_threshold: float = MATCH_IOU) -> np.ndarray:
    """True-positive flag per prediction: greedy by descending score, each GT box used once."""
    tp = np.zeros(len(pred_scores), dtype=bool)
    for c in np.unique(pred_classes):
        gt = np.nonzero(gt_classes == c)[0]
        if not gt.size:
            continue
        preds = np.nonzero(pred_classes == c)[0]
        preds = preds[np.argsort(-pred_scores[preds], kind="stable")]
        iou = box_iou(pred_boxes[preds], gt_boxes[gt])
        taken = np.zeros(gt.size, dtype=bool)
        for row, pred in enumerate(preds):
            candidates = np.where(taken, -1.0, iou[row])
            j = int(np.argmax(candidates))
            if candidates[j] >= iou_threshold:
                taken[j] = tp[pred] = True
    return tp


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """All-point AP: sum over true positives of the precision envelope, over ``num_gt``.

    Sorted by descending score, ties false positives first (an order that depends only on the
    records, not on how they were gathered).
    """
    if num_gt == 0:
        return math.nan
    if not scores.size:
        return 0.0
    flags = tp[np.lexsort((tp, -scores))]
    precision = np.cumsum(flags) / np.arange(1, flags.size + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(envelope[flags].sum()) / num_gt


class DetectionMetric(Metric):
    """Box and score fidelity apart, decoded detections, mAP@0.5 of INT8 against FP32."""

    name = "detection"

    def __init__(self, outputs: Sequence[str], *, head: Optional[str] = None, layout: str = "auto",
                 score_threshold: float = 0.25, nms_iou: float = 0.45, max_detections: int = 300,
                 max_records: int = 1_000_000) -> None:
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        if head is not None and head not in outputs:
            raise QuantlabError(f"metric 'detection': head={head!r} is not one of the outputs it reads "
                                f"({', '.join(outputs)}); fix it in `metric_params` or `outputs`",
                                params=(*PARAMS, "outputs"))
        params = {
            "head": head,
            "layout": choice(self.name, "layout", layout, LAYOUTS),
            "score_threshold": number(self.name, "score_threshold", score_threshold),
            "nms_iou": number(self.name, "nms_iou", nms_iou, low=0, high=1),
            "max_detections": number(self.name, "max_detections", max_detections, low=1, integer=True),
            "max_records": number(self.name, "max_records", max_records, low=1, integer=True),
        }
        super().__init__(outputs, **params)
        self.fidelity = {name: Fidelity() for name in self.outputs}
        self.boxes, self.scores = Fidelity(), Fidelity()
        self.geometry: Optional[tuple[str, str, int, Optional[int]]] = None  # head, layout, classes, anchors
        self.records: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (class, score, tp) per batch
        self.num_records = 0
        self.gt_counts: Optional[np.ndarray] = None  # pseudo-GT boxes per class

    @classmethod
    def applies(cls, shapes: Mapping[str, tuple]) -> bool:
        """Exactly one output has the shape of a YOLO-style head (see the module docstring)."""
        return sum(head_geometry(tuple(s)) is not None for s in shapes.values()) == 1

    def _find_head(self, arrays: Mapping[str, np.ndarray]) -> tuple[str, str, int, Optional[int]]:
        layout = self.params["layout"]
        names = [self.params["head"]] if self.params["head"] else self.outputs
        found = {name: head_geometry(arrays[name].shape[1:], layout) for name in names}
        heads = [name for name, geometry in found.items() if geometry is not None]
        shapes = ", ".join(f"{name} {arrays[name].shape}" for name in names)
        if len(heads) != 1:
            what = "none looks like" if not heads else f"{len(heads)} outputs look like"
            raise QuantlabError(
                f"metric 'detection' needs one YOLO-style head [N, 4+C, A] or [N, A, 4+C] (A >= {MIN_ANCHORS}, "
                f"1 <= C <= {MAX_CLASSES} unless the layout is given); of {shapes}, {what} one: name it with "
                "head=NAME and say layout=channels_first or channels_last in `metric_params`", params=PARAMS)
        head = heads[0]
        return (head, *found[head])

    def update(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
               labels: Optional[np.ndarray]) -> None:
        pairs = list(self.pairs(reference, candidate))
        arrays = {name: ref for name, ref, _ in pairs}
        head, layout, classes, _ = geometry = self._find_head(arrays)
        self._adopt(geometry)
        for name, ref, got in pairs:
            self.fidelity[name].update(ref, got)
            if name != head:
                continue
            box_rows = (slice(None), slice(0, 4)) if layout == "channels_first" else (Ellipsis, slice(0, 4))
            score_rows = (slice(None), slice(4, None)) if layout == "channels_first" else (Ellipsis, slice(4, None))
            self.boxes.update(ref[box_rows], got[box_rows])
            self.scores.update(ref[score_rows], got[score_rows])
            self._fold_detections(ref, got, layout, classes)

    def _adopt(self, geometry: tuple[str, str, int, Optional[int]]) -> None:
        """Record the head; anchors may change between batches (dynamic input size), the rest not."""
        if self.geometry is None:
            self.geometry = geometry
            self.gt_counts = np.zeros(geometry[2], dtype=np.int64)
        elif self.geometry[:3] != geometry[:3]:
            raise QuantlabError(f"metric 'detection': the head changed between batches ({self.geometry[:3]} "
                                f"then {geometry[:3]}); every batch must come from the same model")
        elif self.geometry[3] != geometry[3]:
            self.geometry = (*geometry[:3], None)

    def _fold_detections(self, ref: np.ndarray, got: np.ndarray, layout: str, classes: int) -> None:
        p = self.params
        kinds, scores, flags = [], [], []
        for i in range(ref.shape[0]):
            blocks = [np.asarray(x[i], dtype=np.float64) for x in (ref, got)]
            if layout == "channels_last":
                blocks = [b.T for b in blocks]
            gt_boxes, _, gt_classes = decode(blocks[0], p["score_threshold"], p["nms_iou"], p["max_detections"])
            boxes, confidence, kind = decode(blocks[1], p["score_threshold"], p["nms_iou"], p["max_detections"])
            self.gt_counts += np.bincount(gt_classes, minlength=classes)
            kinds.append(kind.astype(np.int32))
            scores.append(confidence)
            flags.append(match(boxes, confidence, kind, gt_boxes, gt_classes))
        chunk = (np.concatenate(kinds), np.concatenate(scores), np.concatenate(flags))
        self._add_records(chunk[0].size)
        if chunk[0].size:
            self.records.append(chunk)

    def _add_records(self, count: int) -> None:
        self.num_records += count
        if self.num_records > self.params["max_records"]:
            raise QuantlabError(
                f"metric 'detection' keeps one record per INT8 detection for mAP, and {self.num_records} "
                f"pass max_records={self.params['max_records']}: raise max_records or score_threshold in "
                "`metric_params`, or evaluate fewer samples", params=PARAMS)

    def merge(self, other: DetectionMetric) -> None:
        self.check_mergeable(other)
        if other.geometry is not None:
            self._adopt(other.geometry)
            self.gt_counts += other.gt_counts
        self._add_records(other.num_records)
        self.records.extend(other.records)
        self.boxes.merge(other.boxes)
        self.scores.merge(other.scores)
        for name in self.outputs:
            self.fidelity[name].merge(other.fidelity[name])

    def _map(self) -> dict[str, Any]:
        counts = self.gt_counts if self.gt_counts is not None else np.zeros(0, dtype=np.int64)
        if self.records:
            kinds, scores, flags = (np.concatenate(parts) for parts in zip(*self.records))
        else:
            kinds, scores, flags = np.zeros(0, np.int32), np.zeros(0), np.zeros(0, bool)
        per_class = {}
        for c in np.nonzero(counts)[0]:
            mine = kinds == c
            per_class[str(int(c))] = average_precision(scores[mine], flags[mine], int(counts[c]))
        total_gt, true_positives = int(counts.sum()), int(flags.sum())
        return {
            "map50": math.fsum(per_class.values()) / len(per_class) if per_class else math.nan,
            "recall": true_positives / total_gt if total_gt else math.nan,
            "precision": true_positives / flags.size if flags.size else math.nan,
            "fp32_detections": total_gt,
            "int8_detections": int(flags.size),
            "classes_with_pseudo_gt": len(per_class),
            "ap50_per_class": per_class,
        }

    def result(self) -> dict:
        outputs, extra, score = [], {}, math.nan
        head = self.geometry[0] if self.geometry else None
        for name, fidelity in self.fidelity.items():
            out = {"output": name, "samples": fidelity.samples, **fidelity.result()}
            if name == head:
                _, layout, classes, anchors = self.geometry
                out.update({"layout": layout, "num_classes": classes, "anchors": anchors,
                            "boxes": self.boxes.result(), "scores": self.scores.result(), **self._map()})
                score = out["map50"]
                if out["fp32_detections"] == 0:
                    extra["note"] = (f"FP32 made no detection above score_threshold={self.params['score_threshold']}, "
                                     "so mAP against it is undefined (NaN); lower score_threshold in `metric_params`")
            outputs.append(out)
        return self.envelope(outputs, score, "map50_vs_fp32", head=head, **extra)
