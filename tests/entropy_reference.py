"""An independent, deliberately naive statement of the reference KL threshold search.

It follows the semantics of NVIDIA's ``_compute_amax_entropy`` (pytorch-quantization / Model
Optimizer; 8 bits, signed, stride 1, start bin 128) step by step, with a loop over candidates and
``numpy.digitize`` over a ``linspace`` as the reference does, so that the vectorised calibrator
can be checked against it. Slow on purpose: clarity over speed.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import entropy


def reference_entropy_amax(hist, edges, num_bits=8, start_bin=128):
    bins = np.array(hist, dtype=np.int64)
    bins[0] = bins[1]
    total = bins.sum()
    nbins = 1 << (num_bits - 1)
    divergences, arguments = [], []
    for i in range(start_bin, len(bins) + 1):
        space = np.linspace(0, i, num=nbins + 1)
        level = np.digitize(range(i), space) - 1
        level[bins[:i] == 0] = -1
        used = level != -1
        level_sum = np.zeros(nbins, dtype=np.float64)
        np.add.at(level_sum, level[used], bins[:i][used])  # in bin order, like the reference loop
        members = np.bincount(level[used], minlength=nbins)  # the reference's Counter
        level_sum = np.divide(level_sum, members, out=level_sum, where=members > 0)
        quantized = np.zeros(i, dtype=np.float64)
        quantized[used] = level_sum[level[used]]
        reference = np.array(bins[:i])
        reference[-1] += np.sum(bins[i:])
        assert round(np.sum(quantized) + np.sum(bins[i:])) == total
        divergences.append(entropy(reference, quantized))
        arguments.append(i)
    divergences = np.array(divergences)
    last_argmin = len(divergences) - 1 - np.argmin(divergences[::-1])
    return float(edges[last_argmin + start_bin]), divergences
