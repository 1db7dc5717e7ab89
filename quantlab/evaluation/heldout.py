"""The held-out samples of an evaluation, opened once in this process.

``compare`` and ``tune`` read the same samples many times (a pass per group of candidates, the
per-tensor errors, the latency); :class:`HeldOut` opens the data set and picks the seeded selection
once, and hands out preprocessed batches of it, or of its first samples only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from ..errors import DataError
from ..graph import ModelGraph, static_dims
from ..preprocess import (
    DataFingerprint,
    check_batch_size,
    describe_scaling,
    first_sample_dtype,
    iterate_batches,
    select_indices,
)
from ..workload import DataSpec, data_source, open_dataset, select_outputs
from .engine import activation_bytes, samples_per_run
from .metrics.classification import ClassificationMetric


class HeldOut:
    """The held-out samples of a comparison: the data set opened once, the samples picked once."""

    def __init__(self, graph: ModelGraph, data: DataSpec):
        self.source = data_source(graph, data, "held-out")
        check_batch_size(data.batch_size)
        data.preprocess.check_against(graph.inputs)
        self.graph, self.data = graph, data
        self.dataset = open_dataset(self.source, data.data_format, graph)
        self.indices = select_indices(len(self.dataset), data.num_samples, data.seed)
        spec = graph.inputs[0]
        self.scaling = describe_scaling(first_sample_dtype(self.dataset, self.indices, spec.name), spec,
                                        data.preprocess)

    def __len__(self) -> int:
        return len(self.indices)

    def activation_sizes(self, providers: Optional[Sequence[str]] = None) -> tuple[dict[str, int], int]:
        """Bytes per sample of each activation (measured on the first sample) and the samples one
        run may take within the activation budget (:func:`~quantlab.evaluation.engine.samples_per_run`)."""
        first = next(self.batches(limit=1, batch_size=1))
        sizes = activation_bytes(self.graph.model, self.graph.activations, first.inputs, providers)
        return sizes, samples_per_run(sizes)

    def batches(self, fingerprint: Optional[DataFingerprint] = None, limit: Optional[int] = None,
                batch_size: Optional[int] = None):
        """Preprocessed batches (the first ``limit`` samples only, if given), fingerprinted."""
        indices = self.indices if limit is None else self.indices[:limit]
        for batch in iterate_batches(self.dataset, indices, self.graph.inputs, self.data.preprocess,
                                     batch_size or self.data.batch_size):
            if fingerprint is not None:
                fingerprint.add(batch.inputs)
            yield batch

    def check_labels(self, outputs: Sequence[str], metric: str) -> None:
        """Refuse, before any work, labels that cannot be classes of the model: a classification
        judged against them is 0 whatever the ranges (and a budget on it is met by anything)."""
        labels = getattr(self.dataset, "labels", None)
        classes = class_count(self.graph, outputs, metric)
        if labels is None or classes is None:
            return
        chosen = np.asarray(labels)[self.indices]
        bad = (chosen < 0) | (chosen >= classes)
        if bad.any():
            raise DataError(f"{int(bad.sum())} of {len(chosen)} held-out labels lie outside the model's {classes} "
                            f"classes (0..{classes - 1}; e.g. {int(chosen[bad][0])}): accuracy against them is 0 "
                            "whatever the ranges. Check the labels of the data (classes count from 0), or use data "
                            "without labels to judge agreement with FP32")

    def check_finite(self) -> None:
        """Refuse, before any work, held-out samples with NaN or infinite values: the FP32 reference is then
        NaN too, and every score computed against it."""
        bad_samples, values, first = 0, 0, None
        for batch in self.batches():
            for name, value in batch.inputs.items():
                if value.dtype.kind != "f":
                    continue
                wrong = ~np.isfinite(value.reshape(len(value), -1))
                rows = wrong.any(axis=1)
                if rows.any():
                    bad_samples += int(rows.sum())
                    values += int(wrong.sum())
                    if first is None:
                        first = (int(batch.indices[int(np.argmax(rows))]), name)
        if first is not None:
            raise DataError(f"the held-out data holds NaN/Inf: {values} values in {bad_samples} of {len(self)} samples "
                            f"(first: sample {first[0]}, input {first[1]!r}); every score against FP32 would be NaN: "
                            "clean or drop those samples")


def class_count(graph: ModelGraph, outputs: Sequence[str], metric: str) -> Optional[int]:
    """The number of classes labels index when ``metric`` judges classification (``auto`` picks it for
    [N, C] outputs): the smallest C of the outputs, from the model's static shapes; None otherwise."""
    if metric not in ("classification", "auto"):
        return None
    shapes = {vi.name: static_dims(vi)[1:] for vi in graph.model.graph.output if vi.name in outputs}
    if not shapes or not ClassificationMetric.applies(shapes):
        return None
    return min(s[0] for s in shapes.values())


def check_heldout(graph: ModelGraph, data: DataSpec, evaluation) -> HeldOut:
    """The held-out samples, checked before any work: labels within the model's classes, no NaN/Inf."""
    held = HeldOut(graph, data)
    held.check_labels(select_outputs(graph, evaluation.outputs), evaluation.metric)
    held.check_finite()
    return held
