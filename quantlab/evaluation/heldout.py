"""The held-out samples of an evaluation, opened once in this process.

``compare`` and ``tune`` read the same samples many times (a pass per group of candidates, the
per-tensor errors, the latency); :class:`HeldOut` opens the data set and picks the seeded selection
once, and hands out preprocessed batches of it, or of its first samples only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from ..graph import ModelGraph
from ..preprocess import (
    DataFingerprint,
    check_batch_size,
    describe_scaling,
    first_sample_dtype,
    iterate_batches,
    select_indices,
)
from ..workload import DataSpec, data_source, open_dataset
from .engine import activation_bytes, samples_per_run


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
