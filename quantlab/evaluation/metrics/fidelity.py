"""``fidelity``: how close INT8 outputs are to FP32, for any output of any model.

Per output: mean per-sample cosine similarity, SQNR in dB (10 log10 of signal power over error
power, over all values; +inf for an exact match, -inf for a zero signal with error) and the
largest absolute error; the numbers ``compare`` has always reported (ported from
``quantlab.evaluation.engine.OutputComparator``). The score is the worst output's SQNR: a model is as
good as its most damaged output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np

from .base import Fidelity, Metric, nan_min


class FidelityMetric(Metric):
    """Cosine, SQNR and max abs error per output; score = min SQNR (dB) over the outputs."""

    name = "fidelity"

    def __init__(self, outputs: Sequence[str]) -> None:
        super().__init__(outputs)
        self.fidelity = {name: Fidelity() for name in self.outputs}

    @classmethod
    def applies(cls, shapes: Mapping[str, tuple]) -> bool:
        """Every output can be compared value by value."""
        return True

    def update(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
               labels: Optional[np.ndarray]) -> None:
        for name, ref, got in self.pairs(reference, candidate):
            self.fidelity[name].update(ref, got)

    def merge(self, other: FidelityMetric) -> None:
        self.check_mergeable(other)
        for name in self.outputs:
            self.fidelity[name].merge(other.fidelity[name])

    def result(self) -> dict:
        outputs = [{"output": name, "samples": f.samples, **f.result()} for name, f in self.fidelity.items()]
        return self.envelope(outputs, nan_min(o["sqnr_db"] for o in outputs), "sqnr_db")
