"""What the built-in metrics share: exact sums, per-output fidelity, parameter checks, a base class.

Why exact sums: the contract asks that any split of the held-out samples into batches or shards
gives the same result, bit for bit. Floating-point addition is not associative, so a running
``float`` total depends on where the batch boundaries fall. :class:`ExactSum` keeps the total of
float64 values as an integer multiple of 2**-1074 (every finite float64 is one), so adding is
exact, order does not matter, and the result is the correctly rounded total. It is fed one value
per *sample* (a per-sample reduction is computed row by row, which does not depend on how many
rows a batch has), so the Python-level work is per sample, never per pixel.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional

import numpy as np

from ...errors import QuantlabError

# float64 temporaries of one slice of samples stay near this many values (8 MiB an array, a few
# arrays alive at once): a 32-image batch of a 640x640 YOLOv8 head ([32, 84, 8400], 0.7 M values
# an image) is folded an image at a time, so a metric adds tens of MiB, not several float64
# copies of the batch. The slicing changes no bit (per-sample reductions, exact sums).
SLICE_VALUES = 1 << 20
PARAMS = ("metric_params",)  # the Python name under which the engine takes metric parameters

_FIXED_BITS = 1074  # 2**-1074 is the smallest float64 (subnormal): every finite float64 is k * 2**-1074


class ExactSum:
    """An exact, order-independent sum of float64 values.

    Finite values are added as integers in units of 2**-1074; infinities and NaN are kept apart
    in a float (inf + -inf = NaN in any order), and win over the finite part.
    """

    __slots__ = ("fixed", "special")

    def __init__(self) -> None:
        self.fixed = 0
        self.special = 0.0

    def add(self, values: Any) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        finite = np.isfinite(values)
        if not finite.all():
            self.special += float(values[~finite].sum())
            values = values[finite]
        total = self.fixed
        for value in values.tolist():
            numerator, denominator = value.as_integer_ratio()
            total += numerator << (_FIXED_BITS + 1 - denominator.bit_length())
        self.fixed = total

    def merge(self, other: ExactSum) -> None:
        self.fixed += other.fixed
        self.special += other.special

    @property
    def value(self) -> float:
        if self.special != 0.0:  # also true for NaN
            return self.special
        try:
            return self.fixed / (1 << _FIXED_BITS)  # int / int: correctly rounded
        except OverflowError:
            return math.copysign(math.inf, self.fixed)


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise); +inf for an exact match, -inf for a zero signal with error."""
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def nan_max(a: float, b: float) -> float:
    """max that keeps NaN whichever side it is on (Python's ``max`` drops it when it comes second)."""
    return a if math.isnan(a) or a >= b else b


def nan_min(values: Sequence[float]) -> float:
    """The smallest value; NaN if any is NaN (a NaN must not hide behind a ranking)."""
    values = list(values)
    if not values:
        return math.nan
    if any(math.isnan(v) for v in values):
        return math.nan
    return min(values)


def slices(samples: int, values_per_sample: int) -> Iterator[slice]:
    """Slices of the batch axis whose float64 temporaries stay below :data:`SLICE_VALUES`."""
    step = max(1, SLICE_VALUES // max(values_per_sample, 1))
    for start in range(0, samples, step):
        yield slice(start, min(start + step, samples))


class Fidelity:
    """Streaming cosine / SQNR / max-abs-error of one tensor (or one block of it), INT8 vs FP32.

    The numbers of :class:`quantlab.evaluation.engine.OutputComparator`: per sample, the cosine of the
    flattened FP32 and INT8 values (1.0 when either is all zeros, as OutputComparator counted
    it); over all values, SQNR = 10 log10(sum ref^2 / sum (int8 - ref)^2) and the largest
    |int8 - ref|. Sums are exact (:class:`ExactSum`), so they agree with OutputComparator's to
    float rounding and, unlike its running floats, do not depend on the batch size.
    """

    __slots__ = ("samples", "signal", "noise", "cosine", "max_abs_error")

    def __init__(self) -> None:
        self.samples = 0
        self.signal = ExactSum()
        self.noise = ExactSum()
        self.cosine = ExactSum()
        self.max_abs_error = 0.0

    def update(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        """Fold ``[n, ...]`` FP32 and INT8 values (any dtype); every sample is flattened."""
        if reference.ndim == 0:
            reference, candidate = reference.reshape(1), candidate.reshape(1)
        per_sample = int(np.prod(reference.shape[1:], dtype=np.int64))
        for part in slices(reference.shape[0], per_sample):
            ref = np.ascontiguousarray(reference[part], dtype=np.float64)
            got = np.ascontiguousarray(candidate[part], dtype=np.float64)
            rows = ref.shape[0]
            ref, got = ref.reshape(rows, -1), got.reshape(rows, -1)
            error = got - ref
            signal = (ref * ref).sum(axis=1)
            self.signal.add(signal)
            self.noise.add((error * error).sum(axis=1))
            if error.size:
                self.max_abs_error = nan_max(self.max_abs_error, float(np.abs(error).max()))
            # np.linalg.norm(x, axis=1) is exactly sqrt((x * x).sum(axis=1)): reuse the signal
            norms = np.sqrt(signal) * np.sqrt((got * got).sum(axis=1))
            self.cosine.add(np.where(norms > 0, (ref * got).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0))
            self.samples += rows

    def merge(self, other: Fidelity) -> None:
        self.samples += other.samples
        self.signal.merge(other.signal)
        self.noise.merge(other.noise)
        self.cosine.merge(other.cosine)
        self.max_abs_error = nan_max(self.max_abs_error, other.max_abs_error)

    def result(self) -> dict:
        return {
            "cosine_similarity": self.cosine.value / max(self.samples, 1),
            "sqnr_db": sqnr_db(self.signal.value, self.noise.value),
            "max_abs_error": self.max_abs_error,
        }


def number(metric: str, name: str, value: Any, *, low: float = -math.inf, high: float = math.inf,
           integer: bool = False) -> Any:
    """``value`` (from ``--metric-param NAME=VALUE``: int, float or str) as a checked number."""
    kind = "an integer" if integer else "a number"
    try:
        converted = int(value) if integer else float(value)
        if integer and converted != float(value):
            raise ValueError
    except (TypeError, ValueError):
        converted = None
    if converted is None or isinstance(value, bool) or not (low <= converted <= high) or not math.isfinite(converted):
        bounds = f" in [{low:g}, {high:g}]" if math.isfinite(low) or math.isfinite(high) else ""
        raise QuantlabError(f"metric {metric!r}: parameter {name}={value!r} must be {kind}{bounds}; "
                            "fix it in `metric_params`", params=PARAMS)
    return converted


def choice(metric: str, name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` as one of ``choices``, or an error listing them."""
    if value not in choices:
        raise QuantlabError(f"metric {metric!r}: parameter {name}={value!r} must be one of "
                            f"{', '.join(choices)}; fix it in `metric_params`", params=PARAMS)
    return str(value)


class Metric:
    """Base of the built-in metrics (plugins need not inherit from it: the contract is duck-typed).

    Holds the output names and the parameters, pairs up FP32 and INT8 arrays with checks, and
    refuses to merge instances that do not measure the same thing.
    """

    name = ""

    def __init__(self, outputs: Sequence[str], **params: Any) -> None:
        if isinstance(outputs, str):
            outputs = [outputs]
        self.outputs = list(outputs)
        if not self.outputs:
            raise QuantlabError(f"metric {self.name!r} needs at least one model output; check `outputs`",
                                params=("outputs",))
        self.params = params
        self.samples = 0

    @classmethod
    def applies(cls, shapes: Mapping[str, tuple]) -> bool:
        return False

    def pairs(self, reference: Mapping[str, np.ndarray],
              candidate: Mapping[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """(name, FP32 array, INT8 array) of each output this metric reads, checked to match."""
        n = None
        for name in self.outputs:
            if name not in reference or name not in candidate:
                given = ", ".join(sorted(set(reference) & set(candidate))) or "none"
                raise QuantlabError(f"metric {self.name!r} reads output {name!r}, which the batch does not "
                                    f"hold (outputs: {given}); check `outputs`", params=("outputs",))
            ref, got = np.asarray(reference[name]), np.asarray(candidate[name])
            if ref.shape != got.shape:
                raise QuantlabError(f"output {name!r} has shape {ref.shape} in the FP32 model and {got.shape} "
                                    "in the INT8 model; they must be the same model")
            rows = ref.shape[0] if ref.ndim else 1
            if n is not None and rows != n:
                raise QuantlabError(f"outputs of one batch have different batch sizes ({n} and {rows} in "
                                    f"{name!r}); metric {self.name!r} needs the batch axis first on every output")
            n = rows
            yield name, ref, got
        if n is not None:
            self.samples += n

    def check_mergeable(self, other: Metric) -> None:
        if type(other) is not type(self) or other.outputs != self.outputs or other.params != self.params:
            raise ValueError(f"cannot merge {type(other).__name__}({other.outputs}, {other.params}) into "
                             f"{type(self).__name__}({self.outputs}, {self.params}): not the same measurement")
        self.samples += other.samples

    def labels_of(self, labels: Optional[np.ndarray], n: int) -> Optional[np.ndarray]:
        """The batch's labels as a 1-D array of ``n`` class ids, or None; anything else is an error."""
        if labels is None:
            return None
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != n:
            raise QuantlabError(f"metric {self.name!r} takes one class id per sample; this batch has "
                                f"{n} samples and labels of shape {labels.shape}")
        return labels

    def envelope(self, outputs: list[dict], score: float, score_name: str, **extra: Any) -> dict:
        """The result dict of the contract, with the parameters used (the report shows them)."""
        return {"metric": self.name, "score": score, "score_name": score_name, "samples": self.samples,
                "params": dict(self.params), **extra, "outputs": outputs}
