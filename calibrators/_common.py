"""Input checks and small helpers shared by the built-in calibrators."""

from __future__ import annotations

import math
import numbers

import numpy as np

# INT8 is what TensorRT reads from a cache; fewer bits choose a threshold for a coarser grid.
MIN_BITS, MAX_BITS = 2, 8


def number_param(name: str, value, requirement: str) -> float:
    """``value`` as a float: an int, a float or numeric text (``--param p=99.9`` arrives as any).

    A bool is not a number. Anything else, NaN and infinities included, is a ValueError that
    says ``<name> must be <requirement>, got <value>``; range checks are the caller's.
    """
    number = None
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise ValueError(f"{name} must be {requirement}, got {value!r}")
    return number


def int_param(name: str, value, low: int, high: int | None = None, why: str = "") -> int:
    """``value`` as an int in ``[low, high]``: an int, an integral float (8.0) or integer text.

    Otherwise a ValueError: ``<name> must be an integer from <low> to <high>, got <value>``.
    """
    requirement = (f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}") + why
    number = None
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        number = int(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and float(value).is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    if number is None or number < low or (high is not None and number > high):
        raise ValueError(f"{name} must be {requirement}, got {value!r}")
    return number


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
