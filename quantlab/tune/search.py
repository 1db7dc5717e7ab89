"""The accuracy-budget search: which layers to leave in higher precision, greedily, with re-checks.

As NNCF's accuracy control does: layers are taken most sensitive first (the ranking of
:mod:`quantlab.tune.sensitivity`); each is left in float and the model re-measured on the whole
evaluation set; a layer whose fallback did not improve the score is put back (the step is
reverted), so the score only ever improves; the search stops as soon as the drop against FP32 is
within the budget, when ``max_float_layers`` are in float, or when the ranking is exhausted (then
the best model found is the answer, and the result says the budget was missed).

Speculation keeps the passes few: the next ``lookahead`` cumulative fallback sets are scored in one
pass over the data (one group of sessions). Walking through them reproduces the sequential search
exactly; a reverted step invalidates the sets after it, which are scored again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..evaluation.engine import Evaluation, QdqCandidate
from .sensitivity import Scorer, headline

LOOKAHEAD = 4


@dataclass
class SearchResult:
    """The fallback layers chosen, the score reached, and every step of the way."""

    fallback: list[str]
    evaluation: Evaluation
    met: bool
    path: list[dict] = field(default_factory=list)
    passes: int = 0


TOLERANCE = 1e-9  # points: 0.914 - 0.913 is 0.10000000000000009 points in float64


def drop_points(evaluation: Evaluation) -> float:
    """The drop of the metric's headline number against FP32, in percentage points."""
    score, reference, _ = headline(evaluation)
    return 100.0 * (reference - score)


def within(evaluation: Evaluation, max_drop: float) -> bool:
    """Whether the drop is within the budget (to float rounding of the fractions)."""
    return drop_points(evaluation) <= max_drop + TOLERANCE


def search(ranking: Sequence[str], base: Evaluation, make_model: Callable[[list[str]], QdqCandidate],
           scorer: Scorer, max_drop: float, max_float_layers: int, lookahead: int = LOOKAHEAD) -> SearchResult:
    """Greedy fallback of ``ranking``'s layers until the drop is within ``max_drop`` points."""
    current: list[str] = []
    current_eval = base
    path = [{"step": 0, "layer": None, "action": "start", "float_layers": 0,
             "score": headline(base)[0], "drop": drop_points(base)}]
    passes = 0
    queue = list(ranking)
    while not within(current_eval, max_drop) and queue and len(current) < max_float_layers:
        ahead = queue[:max(1, min(lookahead, max_float_layers - len(current)))]
        sets = {f"+{k}": current + ahead[:k + 1] for k in range(len(ahead))}
        scored = scorer.score({label: make_model(layers) for label, layers in sets.items()},
                              desc=f"search: {len(current)} float layers, trying {len(ahead)}")
        passes += 1
        for k, layer in enumerate(ahead):
            queue.remove(layer)
            candidate = scored[f"+{k}"]
            better = headline(candidate)[0] > headline(current_eval)[0]
            path.append({"step": len(path), "layer": layer, "action": "kept" if better else "reverted",
                         "float_layers": len(current) + (1 if better else 0), "score": headline(candidate)[0],
                         "drop": drop_points(candidate)})
            if not better:
                break  # the later speculative sets contain this layer: score them again without it
            current = current + [layer]
            current_eval = candidate
            if within(current_eval, max_drop) or len(current) >= max_float_layers:
                break
    met = within(current_eval, max_drop)
    return SearchResult(current, current_eval, met, path, passes)
