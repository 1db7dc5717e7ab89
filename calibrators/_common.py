"""Input checks and small helpers shared by the built-in calibrators."""

from __future__ import annotations

import numpy as np


def as_histogram(hist: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a histogram/edges pair and return float64 copies (the caller's arrays stay intact)."""
    counts = np.array(hist, dtype=np.float64).reshape(-1)
    bounds = np.array(edges, dtype=np.float64).reshape(-1)
    if len(bounds) != len(counts) + 1:
        raise ValueError(
            f"edges must have len(hist) + 1 = {len(counts) + 1} entries, got {len(bounds)}"
        )
    if not (np.isfinite(counts).all() and np.isfinite(bounds).all()):
        raise ValueError("histogram counts and edges must be finite")
    if (counts < 0).any():
        raise ValueError("histogram counts must be non-negative")
    if len(counts) and (np.diff(bounds) <= 0).any():
        raise ValueError("histogram edges must be strictly increasing")
    return counts, bounds


def last_nonzero_edge(counts: np.ndarray, edges: np.ndarray) -> float:
    """Upper edge of the last non-empty bin: the largest |x| the histogram can vouch for."""
    nonzero = np.flatnonzero(counts)
    return float(edges[nonzero[-1] + 1]) if len(nonzero) else 0.0
