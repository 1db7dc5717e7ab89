"""Sensitivity analysis: what each quantized layer costs, measured with the evaluation engine.

For every quantized layer (a Conv/ConvTranspose/Gemm/MatMul with Q/DQ; its ONNX node name is
TensorRT's layer name) two variants of the INT8 model are scored on the evaluation data: the layer
alone left in float (everything else INT8), and the layer alone quantized (everything else float).
The first says what falling back that layer buys, the second what quantizing it costs on its own;
the ranking uses the first, as an accuracy-budget search removes layers from an INT8 model.

Ranking key, most sensitive first: the metric's score with the layer in float (higher is more
sensitive: falling it back recovers more), then the SQNR of the first model output with it in float
(a continuous tie-breaker: a top-1 score on a few hundred samples ties often), then graph order.

Cost: two model variants per layer, each one pass over the evaluation data. :class:`Scorer` keeps
the FP32 outputs of the first pass and reuses them for every later pass, and scores variants in
groups of sessions in one pass over the data (:func:`quantlab.evaluation.engine.evaluate`). Each
group is an independent task (:func:`score_group`), so an executor can fan the groups out.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import onnx
from tqdm import tqdm

from ..errors import QuantlabError
from ..evaluation.engine import (
    Evaluation,
    HeldOutPlan,
    OrtRunner,
    QdqCandidate,
    evaluate,
    evaluate_sharded,
    heldout_plan,
)
from ..evaluation.heldout import HeldOut
from ..evaluation.options import EvalOptions
from ..executors import Executor
from ..graph import ModelGraph
from ..preprocess import DataFingerprint
from ..qdq import QUANTIZED_OPS, MeasuredRange, QdqOptions
from ..table import CalibrationTable
from ..workload import select_outputs

GROUP = 8  # variants scored in one pass over the evaluation data
RECORD_BUDGET = 512 << 20  # FP32 outputs kept for reuse up to this many bytes


class RecordedReference:
    """The FP32 runner, run once: its outputs are kept (within ``RECORD_BUDGET``) and replayed in
    the same batch order for every later pass, so scoring N variants costs N INT8 runs, not 2N."""

    def __init__(self, runner: OrtRunner):
        self.runner = runner
        self.recorded: list[dict[str, np.ndarray]] = []
        self.complete = False
        self.position = 0
        self.bytes = 0
        self.overflow = False

    def rewind(self) -> RecordedReference:
        if self.recorded and not self.complete and not self.overflow:
            self.complete = True
        self.position = 0
        return self

    def run(self, inputs: dict) -> dict[str, np.ndarray]:
        if self.complete:
            out = self.recorded[self.position]
            self.position += 1
            return out
        out = self.runner.run(inputs)
        if not self.overflow:
            self.bytes += sum(v.nbytes for v in out.values())
            if self.bytes > RECORD_BUDGET:
                self.overflow, self.recorded = True, []
            else:
                self.recorded.append(out)
        return out


@dataclass
class Scorer:
    """Scores Q/DQ model variants on the evaluation data against FP32, in groups of sessions.

    Variants are :class:`~quantlab.evaluation.engine.QdqCandidate` (ranges and fallback layers,
    small to ship) or ready models. With an ``executor`` other than ``local`` each group of
    candidates is evaluated in shards of samples on its workers (each builds the models itself)
    and merged in shard order: the same numbers, bit for bit, as here.
    """

    graph: ModelGraph
    held: HeldOut
    evaluation: EvalOptions = EvalOptions()
    per_run: Optional[int] = None
    progress: bool = True
    group: int = GROUP
    limit: Optional[int] = None  # score on the first ``limit`` evaluation samples only (a ranking subset)
    executor: Optional[Executor] = None

    def __post_init__(self) -> None:
        self.outputs = select_outputs(self.graph, self.evaluation.outputs)
        self.fingerprint = DataFingerprint()  # of the evaluation samples, taken on the first pass
        self.plan: Optional[HeldOutPlan] = None  # the held-out plan of sharded passes, measured once
        self.reference = RecordedReference(OrtRunner(self.graph.model, (), self.evaluation.providers))
        self.passes = 0

    @property
    def samples(self) -> int:
        return min(len(self.held), self.limit or len(self.held))

    def subset(self, limit: Optional[int]) -> Scorer:
        """A scorer of the same models on the first ``limit`` samples (itself when that is all of them)."""
        if not limit or limit >= len(self.held):
            return self
        subset = Scorer(self.graph, self.held, self.evaluation, self.per_run, self.progress, self.group, limit,
                        self.executor)
        subset.plan = self.plan  # the plan counts the whole selection; the limit is applied per call
        return subset

    def score(self, models: dict[str, Union[QdqCandidate, onnx.ModelProto]],
              desc: str = "scoring") -> dict[str, Evaluation]:
        """Each model's evaluation, ``group`` sessions per pass over the data."""
        labels = list(models)
        found: dict[str, Evaluation] = {}
        bar = tqdm(total=len(labels) * self.samples, unit="sample", desc=desc, disable=not self.progress,
                   file=sys.stderr)
        for start in range(0, len(labels), self.group):
            chosen = labels[start:start + self.group]
            found.update(score_group(self, {label: models[label] for label in chosen}, bar))
        bar.close()
        return found


def score_group(scorer: Scorer, models: dict[str, Union[QdqCandidate, onnx.ModelProto]],
                bar=None) -> dict[str, Evaluation]:
    """One pass over the evaluation data scoring ``models``: here, or in shards on the executor."""
    sharded = (scorer.executor is not None and scorer.executor.workers > 1
               and all(isinstance(m, QdqCandidate) for m in models.values()))
    if sharded:
        if scorer.plan is None:  # measured once: every group scores the same samples
            scorer.plan = heldout_plan(scorer.graph, scorer.held.data, scorer.executor)
        results, fingerprint = evaluate_sharded(scorer.graph, scorer.held.data, models, scorer.evaluation,
                                                scorer.executor, progress=False, limit=scorer.limit, plan=scorer.plan)
        if scorer.passes == 0:
            scorer.fingerprint = fingerprint
        scorer.passes += 1
        if bar is not None:
            bar.update(scorer.samples * len(models))
        return results
    evaluation = scorer.evaluation
    candidates = {label: OrtRunner(m.build(scorer.graph) if isinstance(m, QdqCandidate) else m, (),
                                   evaluation.providers, evaluation.int8_arithmetic) for label, m in models.items()}

    class _Bar:  # the pass advances the bar once per sample per candidate
        def update(self, n: int) -> None:
            if bar is not None:
                bar.update(n * len(candidates))

    batches = scorer.held.batches(scorer.fingerprint if scorer.passes == 0 else None, limit=scorer.limit)
    results = evaluate(scorer.reference.rewind(), candidates, batches, scorer.outputs, progress=_Bar(),
                       metric=evaluation.metric, metric_params=dict(evaluation.metric_params), per_run=scorer.per_run)
    scorer.passes += 1
    return results


def quantized_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the layers of a Q/DQ model that compute in INT8 (an input from a DequantizeLinear),
    in graph order. Unnamed layers cannot be named to TensorRT or kept in float, so they are left out."""
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return [node.name for node in model.graph.node
            if node.op_type in QUANTIZED_OPS and node.name and any(i in dequantized for i in node.input[:2])]


def variant(table: CalibrationTable, floating: Iterable[str], high_precision: str) -> QdqCandidate:
    """The Q/DQ model of ``table`` with the layers ``floating`` left without Q/DQ, and everything
    outside INT8 typed ``high_precision`` from the table's measured ranges (built where it is scored:
    :meth:`~quantlab.evaluation.engine.QdqCandidate.build`)."""
    measured = {name: MeasuredRange.from_dict(value) for name, value in table.provenance.get("measured", {}).items()}
    return QdqCandidate(dict(table.activations), dict(table.weights),
                        QdqOptions(exclude_nodes=tuple(floating), high_precision=high_precision), measured or None)


def headline(evaluation: Evaluation) -> tuple[float, float, str]:
    """(INT8 score, the FP32 model's score on the same scale, score name) of an evaluation.

    The score is the metric's headline number: top-1 accuracy with labels (FP32 has its own),
    else agreement with FP32 or mAP/IoU against FP32, for which FP32 scores 1 by definition.
    """
    metric = evaluation.metric
    score, name = metric.get("score"), metric.get("score_name")
    if name == "sqnr_db" or not isinstance(score, (int, float)):
        raise QuantlabError(f"metric {metric.get('metric')!r} scores {name}, which is not a fraction: an accuracy "
                            "budget in percentage points needs the classification, detection or dense metric "
                            "(`metric`)", params=("metric",))
    if name == "int8_top1":
        worst = min(evaluation.outputs, key=lambda o: o.get("int8_top1", math.inf))
        return float(score), float(worst["fp32_top1"]), name
    return float(score), 1.0, name


def first_sqnr(evaluation: Evaluation) -> float:
    value = evaluation.outputs[0].get("sqnr_db", -math.inf) if evaluation.outputs else -math.inf
    return float(value)


@dataclass
class Sensitivity:
    """Per layer: the score with it alone in float and with it alone quantized; ranked."""

    rows: list[dict]  # graph order
    ranking: list[str]  # most sensitive first
    base: Evaluation  # every layer INT8


def analyse(graph: ModelGraph, table: CalibrationTable, scorer: Scorer, layers: Sequence[str],
            base: Optional[Evaluation] = None, *, only_quantized: bool = True,
            high_precision: str = "fp16") -> Sensitivity:
    """Score every layer alone in float (``high_precision``; and alone quantized) and rank them
    (module docstring). ``base``: the all-INT8 model's score on the scorer's samples; None scores it
    in the same passes."""
    models = {f"float:{layer}": variant(table, [layer], high_precision) for layer in layers}
    if base is None:
        models["base"] = variant(table, [], high_precision)
    if only_quantized:
        for layer in layers:
            models[f"int8:{layer}"] = variant(table, [other for other in layers if other != layer], high_precision)
    results = scorer.score(models, desc=f"sensitivity of {len(layers)} layers")
    base = base if base is not None else results["base"]
    base_score = headline(base)[0]
    base_sqnr = first_sqnr(base)
    rows = []
    for position, layer in enumerate(layers):
        floated = results[f"float:{layer}"]
        row = {"layer": layer, "op": _op_type(graph, layer), "position": position,
               "score_float_alone": headline(floated)[0], "sqnr_float_alone": first_sqnr(floated),
               "gain": headline(floated)[0] - base_score, "sqnr_gain": first_sqnr(floated) - base_sqnr}
        if only_quantized:
            alone = results[f"int8:{layer}"]
            row.update({"score_int8_alone": headline(alone)[0], "sqnr_int8_alone": first_sqnr(alone)})
        rows.append(row)
    ranking = [r["layer"] for r in sorted(rows, key=lambda r: (-_finite(r["score_float_alone"]),
                                                               -_finite(r["sqnr_float_alone"]), r["position"]))]
    return Sensitivity(rows, ranking, base)


def _finite(value: float) -> float:
    if math.isnan(value):
        return -1e18
    return max(min(value, 1e18), -1e18)


def _op_type(graph: ModelGraph, layer: str) -> str:
    return next((node.op_type for node in graph.model.graph.node if node.name == layer), "?")
