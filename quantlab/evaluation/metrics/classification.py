"""``classification``: does INT8 pick the same class as FP32, and the right one?

For outputs ``[N, C]`` (logits or probabilities, C >= 2): top-1 agreement of INT8 with FP32 on
every sample; with labels (one class id per sample), top-1 and top-5 accuracy of both models
(top-k with k = min(5, C); ties go to the lower class index, as ``argmax`` and a stable sort
do); plus the fidelity numbers. Keys as ``quantlab.evaluation.engine.OutputComparator`` wrote them, so
reports read the same. The score is INT8 top-1 accuracy when labels were given, else top-1
agreement, of the worst output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np

from ...errors import QuantlabError
from .base import Fidelity, Metric, nan_min

COUNTS = ("fp32_top1", "int8_top1", "fp32_top5", "int8_top5")


class ClassificationMetric(Metric):
    """Top-1 agreement, top-1/top-5 accuracy with labels, fidelity; per ``[N, C]`` output."""

    name = "classification"

    def __init__(self, outputs: Sequence[str]) -> None:
        super().__init__(outputs)
        self.fidelity = {name: Fidelity() for name in self.outputs}
        self.agree = dict.fromkeys(self.outputs, 0)
        self.correct = {name: dict.fromkeys(COUNTS, 0) for name in self.outputs}
        self.labelled = 0

    @classmethod
    def applies(cls, shapes: Mapping[str, tuple]) -> bool:
        """Every output is one vector of a known number (>= 2) of class scores per sample."""
        return bool(shapes) and all(len(s) == 1 and s[0] is not None and s[0] >= 2 for s in shapes.values())

    def update(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
               labels: Optional[np.ndarray]) -> None:
        labelled = None
        for name, ref, got in self.pairs(reference, candidate):
            if ref.ndim != 2 or ref.shape[1] < 2:
                raise QuantlabError(
                    f"metric 'classification' needs [N, C] class scores with C >= 2; output {name!r} has "
                    f"shape {ref.shape}: choose the logits with `outputs`, or use `metric` fidelity",
                    params=("outputs", "metric"))
            self.fidelity[name].update(ref, got)
            ref_top, got_top = ref.argmax(1), got.argmax(1)
            self.agree[name] += int((ref_top == got_top).sum())
            labelled = self.labels_of(labels, ref.shape[0])
            if labelled is None:
                continue
            outside = (labelled < 0) | (labelled >= ref.shape[1])
            if outside.any():
                raise QuantlabError(f"label {int(labelled[outside][0])} is not one of the {ref.shape[1]} classes "
                                    f"of output {name!r} (0..{ref.shape[1] - 1}): check the data's labels, or "
                                    "use data without labels to judge agreement with FP32")
            k = min(5, ref.shape[1])
            for tag, scores in (("fp32", ref), ("int8", got)):
                top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
                self.correct[name][f"{tag}_top1"] += int((top[:, 0] == labelled).sum())
                self.correct[name][f"{tag}_top5"] += int((top == labelled[:, None]).any(axis=1).sum())
        if labelled is not None:
            self.labelled += len(labelled)

    def merge(self, other: ClassificationMetric) -> None:
        self.check_mergeable(other)
        self.labelled += other.labelled
        for name in self.outputs:
            self.fidelity[name].merge(other.fidelity[name])
            self.agree[name] += other.agree[name]
            for key in COUNTS:
                self.correct[name][key] += other.correct[name][key]

    def result(self) -> dict:
        outputs = []
        for name, fidelity in self.fidelity.items():
            out = {"output": name, "samples": fidelity.samples, **fidelity.result(),
                   "top1_agreement": self.agree[name] / max(fidelity.samples, 1)}
            if self.labelled:
                out.update({key: value / self.labelled for key, value in self.correct[name].items()})
                out["labelled_samples"] = self.labelled
            outputs.append(out)
        score_name = "int8_top1" if self.labelled else "top1_agreement"
        return self.envelope(outputs, nan_min(o[score_name] for o in outputs), score_name,
                             labelled_samples=self.labelled)
