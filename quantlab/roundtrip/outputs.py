"""A real engine's outputs, whichever tool saved them: Polygraphy's ``--save-outputs`` RunResults
(any runner, one or many iterations) or trtexec's ``--exportOutput`` (one or many documents).

Iterations are stacked along the batch axis, in order, so that the samples line up with the
inputs quantlab exported (one iteration per batch of ``export-inputs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import DataError
from . import polygraphy, trtexec

PathLike = Union[str, Path]


@dataclass
class EngineOutputs:
    """Each output's values over all iterations, stacked along the first axis."""

    source: str
    tool: str  # polygraphy | trtexec
    runner: str
    iterations: int
    arrays: dict[str, np.ndarray]

    @property
    def samples(self) -> int:
        return min((len(a) for a in self.arrays.values() if a.ndim), default=0)

    def non_finite(self) -> dict[str, int]:
        """Output -> how many of its values are NaN or infinite (only those that have some)."""
        counts = {}
        for name, array in self.arrays.items():
            if array.dtype.kind == "f":
                bad = int(np.count_nonzero(~np.isfinite(array)))
                if bad:
                    counts[name] = bad
        return counts


def _stack(iterations: list[dict[str, np.ndarray]], where: str) -> dict[str, np.ndarray]:
    names = list(iterations[0])
    for k, it in enumerate(iterations[1:], 2):
        if list(it) != names:
            raise DataError(f"{where}: iteration {k} has outputs {sorted(it)}, the first {sorted(names)}")
    stacked = {}
    for name in names:
        parts = [np.asarray(it[name]) for it in iterations]
        parts = [p.reshape(1) if p.ndim == 0 else p for p in parts]
        if len({p.shape[1:] for p in parts}) > 1:
            raise DataError(f"{where}: output {name!r} changes shape between iterations "
                            f"({', '.join(str(p.shape) for p in parts[:3])})")
        stacked[name] = np.concatenate(parts, axis=0)
    return stacked


def _pick(runs: list[polygraphy.RunOutputs], runner: Optional[str], path: Path) -> polygraphy.RunOutputs:
    names = [r.runner for r in runs]
    if runner is None:
        if len(runs) > 1:
            raise DataError(f"{path} holds the outputs of {len(runs)} runners ({', '.join(names)}); say which "
                            "with --runner NAME (a prefix is enough, e.g. --runner trt-runner)")
        return runs[0]
    exact = [r for r in runs if r.runner == runner]
    prefixed = exact or [r for r in runs if r.runner.startswith(runner)]
    if len(prefixed) != 1:
        state = "matches no runner" if not prefixed else "matches several runners"
        raise DataError(f"--runner {runner!r} {state} of {path} ({', '.join(names)})")
    return prefixed[0]


def _is_polygraphy(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
    except OSError as exc:
        raise DataError(f"cannot read engine outputs {path}: {exc.strerror}") from None
    return b'"polygraphy_class"' in head or b'"__polygraphy_encoded_' in head


def read_engine_outputs(path: PathLike, runner: Optional[str] = None) -> EngineOutputs:
    """The outputs saved in ``path`` (Polygraphy or trtexec; ``runner``: which Polygraphy runner when
    the file holds several)."""
    path = Path(path)
    if _is_polygraphy(path):
        run = _pick(polygraphy.read_outputs(path), runner, path)
        if not run.iterations:
            raise DataError(f"{path}: runner {run.runner!r} saved no iterations")
        return EngineOutputs(str(path), "polygraphy", run.runner, len(run.iterations),
                             _stack(run.iterations, str(path)))
    if runner is not None:
        raise DataError(f"--runner applies to Polygraphy files; {path} is not one")
    iterations = trtexec.read_export_output(path)
    return EngineOutputs(str(path), "trtexec", "trtexec", len(iterations), _stack(iterations, str(path)))
