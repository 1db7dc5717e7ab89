"""The engine round trip (design.md §12): the inputs a GPU host's engine should see, out; what the
engine computed, back in, held against FP32 and against quantlab's emulation of the same Q/DQ model;
and the first tensors where INT8 goes wrong.

    export_inputs("model.onnx", DataSpec("heldout/"), "inputs.json")   # Polygraphy JSON + trtexec .bin
    # on the GPU host: polygraphy run model.qdq.onnx --trt --load-inputs inputs.json --save-outputs engine.json
    compare("model.onnx", "model.qdq.onnx", DataSpec("heldout/"), engine=EngineFiles(outputs="engine.json"))

The samples are exported in the order and the preprocessing ``compare`` uses for the same
``DataSpec``, so the engine's outputs line up with the FP32 and emulated outputs sample by sample.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import onnx
from tqdm import tqdm

from ..atomic import check_output
from ..errors import DataError, QuantlabError
from ..roundtrip import polygraphy, trtexec
from ..roundtrip.outputs import EngineOutputs
from ..workload import DataSpec, ModelSource, resolve_model
from .engine import Evaluation, OrtRunner, TensorErrors, evaluate
from .heldout import HeldOut

PathLike = Union[str, Path]
DIVERGENCE_DB = 20.0  # default threshold of --first-divergence: a tensor below it has lost its signal


@dataclass(frozen=True)
class EngineFiles:
    """What a GPU host's TensorRT run left: ``outputs`` (Polygraphy ``--save-outputs`` or trtexec
    ``--exportOutput``; ``runner``: which Polygraphy runner, when it holds several), ``layer_info``
    (``--exportLayerInfo``, or a ``--verbose`` build log) and its ``profile`` (``--exportProfile``)."""

    outputs: Optional[PathLike] = None
    runner: Optional[str] = None
    layer_info: Optional[PathLike] = None
    profile: Optional[PathLike] = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.outputs, self.layer_info, self.profile))


@dataclass
class ExportedInputs:
    """What :func:`export_inputs` wrote: the Polygraphy file, one raw file per input for trtexec,
    how many samples in how many iterations, and the commands that load them."""

    path: Path
    samples: int
    iterations: int
    batch: int
    raw: dict[str, Path] = field(default_factory=dict)
    shapes: dict[str, tuple] = field(default_factory=dict)  # of the whole set, as trtexec loads it
    notes: list[str] = field(default_factory=list)

    def commands(self, model: str = "model.qdq.onnx") -> list[str]:
        """How to run the engine on these inputs and save what quantlab reads back."""
        return [f"polygraphy run {model} --trt --load-inputs {self.path} --save-outputs engine.json",
                f"trtexec --onnx={model} {trtexec.load_inputs_flag(self.raw)} {trtexec.shapes_flag(self.shapes)} "
                "--exportOutput=engine.json --profilingVerbosity=detailed --exportLayerInfo=layers.json "
                "--exportProfile=profile.json"]

    def to_dict(self) -> dict:
        return {"path": str(self.path), "samples": self.samples, "iterations": self.iterations, "batch": self.batch,
                "raw": {k: str(v) for k, v in self.raw.items()}, "shapes": {k: list(v) for k, v in self.shapes.items()},
                "commands": self.commands(), "notes": list(self.notes)}


def _static_batch(graph) -> Optional[int]:
    dims = {spec.shape[0] if spec.shape else None for spec in graph.inputs}
    dim = dims.pop() if len(dims) == 1 else None
    return dim if isinstance(dim, int) and dim > 0 else None


def export_inputs(model: Optional[ModelSource], data: Optional[DataSpec], output: PathLike, *,
                  batch_size: Optional[int] = None, raw: bool = True, progress: bool = True) -> ExportedInputs:
    """Write the preprocessed samples of ``data`` (the selection ``compare`` evaluates) as Polygraphy
    ``--load-inputs`` JSON at ``output``, one iteration per batch of ``batch_size`` (default: the
    model's static batch, else 1), and with ``raw`` one binary per input beside it holding every
    sample, for ``trtexec --loadInputs`` (with ``--shapes`` of the whole set)."""
    graph = resolve_model(model)
    data = data or DataSpec()
    sources = [data.source] if isinstance(data.source, (str, Path)) else []
    check_output(output, sources, what="inputs file")
    output = Path(output)
    if output.suffix.lower() != ".json":
        raise QuantlabError(f"the inputs file is Polygraphy JSON: name it *.json, not {output.name}",
                            params=("output",))
    static = _static_batch(graph)
    batch = batch_size or static or 1
    if batch < 1:
        raise QuantlabError(f"`batch_size` must be 1 or more, got {batch}", params=("batch_size",))
    heldout = HeldOut(graph, data)
    if static and batch != static:
        raise QuantlabError(f"the model's batch is fixed at {static}: its engine takes {static} samples per "
                            f"iteration, not {batch}", params=("batch_size",))
    if len(heldout) % batch and static:
        raise QuantlabError(f"{len(heldout)} samples do not fill iterations of the model's fixed batch {static}: "
                            f"select a multiple of {static} with --num-samples", params=("num_samples",))
    feeds: list[dict[str, np.ndarray]] = []
    with tqdm(total=len(heldout), unit="sample", desc="exporting inputs", disable=not progress,
              file=sys.stderr) as bar:
        for part in heldout.batches(batch_size=batch):
            feeds.append({name: np.ascontiguousarray(value) for name, value in part.inputs.items()})
            bar.update(len(part.indices))
    polygraphy.write_inputs(output, feeds)
    shapes = {name: (len(heldout), *array.shape[1:]) for name, array in feeds[0].items()}
    result = ExportedInputs(output, len(heldout), len(feeds), batch, shapes=shapes)
    if raw:
        whole = {name: np.concatenate([f[name] for f in feeds]) for name in shapes}
        result.raw = trtexec.write_raw_inputs(output.with_suffix(""), whole)
        if static and static != len(heldout):
            result.notes.append(f"the model's batch is fixed at {static}: trtexec can load the raw files only for "
                                f"a model exported with a dynamic batch (or with batch {len(heldout)})")
    return result


# ------------------------------------------------------------------------------------------ engine outputs


class ReplayRunner:
    """A runner whose outputs are an engine's saved outputs, handed out in sample order: it stands in
    for the engine in the evaluation pass (the samples arrive in the order they were exported)."""

    def __init__(self, engine: EngineOutputs, names: Sequence[str]):
        self.engine, self.names, self.position = engine, list(names), 0

    def run(self, inputs: dict) -> dict[str, np.ndarray]:
        count = len(next(iter(inputs.values())))
        start, self.position = self.position, self.position + count
        return {name: self.engine.arrays[name][start:self.position].astype(np.float32, copy=False)
                for name in self.names}


def check_engine_outputs(engine: EngineOutputs, fp32_outputs: dict[str, np.ndarray], names: Sequence[str],
                         samples: int) -> list[str]:
    """Refuse engine outputs that cannot be of this model on these samples, naming what differs
    (``fp32_outputs``: the FP32 model's outputs on one sample); returns notes on what was ignored."""
    found = list(engine.arrays)
    missing = [n for n in names if n not in engine.arrays]
    if len(missing) == len(names):
        raise DataError(f"{engine.source} holds outputs {found}; the model's are {list(names)}: none match, so it is "
                        "most likely the output of another model")
    if missing:
        raise DataError(f"{engine.source} lacks the model outputs {missing} (it holds {found}); save every output "
                        "(polygraphy run ... --save-outputs saves them all)")
    for name in names:
        got, want = engine.arrays[name].shape[1:], fp32_outputs[name].shape[1:]
        if got != want:
            raise DataError(f"{engine.source}: output {name!r} has per-sample shape {got}, the model's {want}")
    if engine.samples != samples:
        raise DataError(f"{engine.source} holds {engine.samples} samples ({engine.iterations} iterations), the "
                        f"held-out selection {samples}: run the engine on the inputs 'quantlab export-inputs' wrote "
                        "for the same --data, --num-samples and --seed")
    bad = engine.non_finite()
    if bad:
        counts = ", ".join(f"{n}: {c} values" for n, c in bad.items())
        raise DataError(f"{engine.source}: the engine's outputs hold NaN/Inf ({counts}); "
                        "the engine overflowed or read bad inputs: check its fp16 layers ('quantlab engine inspect') "
                        "and the inputs it loaded")
    extra = [n for n in found if n not in names]
    return [f"engine outputs not compared (not selected or not model outputs): {extra}"] if extra else []


@dataclass
class EngineComparison:
    """The real engine against FP32 (``vs_fp32``: the usual metric) and quantlab's emulation against
    the engine (``emulation``: fidelity with the engine as the reference - how well the emulation
    predicts the real arithmetic)."""

    engine: EngineOutputs
    vs_fp32: Evaluation
    emulation: Evaluation
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        e = self.engine
        return {"source": e.source, "tool": e.tool, "runner": e.runner, "iterations": e.iterations,
                "samples": e.samples, "vs_fp32": {"outputs": self.vs_fp32.outputs, "metric": self.vs_fp32.metric},
                "emulation_vs_engine": {"outputs": self.emulation.outputs, "metric": self.emulation.metric},
                "notes": list(self.notes)}


def compare_engine(engine: EngineOutputs, fp32: OrtRunner, emulation: OrtRunner, heldout: HeldOut,
                   outputs: Sequence[str], *, metric: str, metric_params: dict, per_run: Optional[int],
                   progress: bool = True) -> EngineComparison:
    """Two passes over the held-out samples: FP32 as the reference of the engine, then the engine as
    the reference of the emulation."""
    first = next(heldout.batches(limit=1, batch_size=1))
    notes = check_engine_outputs(engine, fp32.run(first.inputs), outputs, len(heldout))
    with tqdm(total=2 * len(heldout), unit="sample", desc="engine outputs", disable=not progress,
              file=sys.stderr) as bar:
        vs_fp32 = evaluate(fp32, {"engine": ReplayRunner(engine, outputs)}, heldout.batches(), outputs,
                           progress=bar, metric=metric, metric_params=metric_params, per_run=per_run)["engine"]
        agreement = evaluate(ReplayRunner(engine, outputs), {"emulation": emulation}, heldout.batches(), outputs,
                             progress=bar, metric="fidelity", per_run=per_run)["emulation"]
    return EngineComparison(engine, vs_fp32, agreement, notes)


# ------------------------------------------------------------------------------------------ first divergence


def first_divergence(model: onnx.ModelProto, errors: TensorErrors, amax: dict[str, float], threshold: float,
                     count: int = 5) -> dict:
    """Where INT8 goes wrong, read off the per-tensor errors in graph order: the first tensors whose
    SQNR falls below ``threshold`` dB, and the ``count`` that lose the most against their inputs
    (SQNR of the worst data input minus their own: the error made here, by quantizing the node's
    inputs - whose ranges each row lists - and weights, and by its own arithmetic). The errors come
    from :func:`~quantlab.evaluation.engine.tensor_errors`,
    which runs the Q/DQ model as written (no fusion to break), so asking for a tensor changes none of
    its values."""
    sqnr = {row["tensor"]: row["sqnr_db"] for row in errors.tensors}
    producer = {out: node for node in model.graph.node for out in node.output if out}
    rows = []
    for node in model.graph.node:
        for out in node.output:
            if out not in sqnr:
                continue
            inputs = [sqnr[i] for i in node.input if i in sqnr]
            before = min(inputs) if inputs else float("inf")
            rows.append({"tensor": out, "node": node.name or out, "op_type": node.op_type,
                         "sqnr_db": sqnr[out], "input_sqnr_db": before if np.isfinite(before) else None,
                         "drop_db": (before - sqnr[out]) if np.isfinite(before) and np.isfinite(sqnr[out]) else None,
                         "input_ranges": {i: amax[i] for i in node.input if i in amax}})
    below = [r for r in rows if r["sqnr_db"] < threshold][:count]
    drops = sorted((r for r in rows if r["drop_db"] is not None), key=lambda r: -r["drop_db"])[:count]
    unproduced = [t for t in sqnr if t not in producer]
    return {"threshold_db": threshold, "samples": errors.samples, "below_threshold": below, "largest_drops": drops,
            "tensors": len(rows), "unlisted": unproduced}


# ------------------------------------------------------------------------------------------ a Q/DQ file


def is_qdq_file(source: object) -> bool:
    """Is ``source`` the path of an ONNX model (compared as written) rather than a ranges file?"""
    return isinstance(source, (str, Path)) and Path(source).suffix.lower() == ".onnx"


def read_qdq_model(path: PathLike, graph) -> onnx.ModelProto:
    """The Q/DQ model at ``path`` (any tool's), checked to be one and to be of the FP32 ``graph``
    (the same input and output names): a file built from another model cannot be compared."""
    from ..graph import load_model

    model = load_model(path).model
    if not any(node.op_type == "QuantizeLinear" for node in model.graph.node):
        raise QuantlabError(f"{path} has no QuantizeLinear nodes: it is a float model, not a Q/DQ one (pass the "
                            "Q/DQ model the engine was built from, or the ranges with --cache)", params=("cache",))
    ours = ([i.name for i in graph.model.graph.input], [o.name for o in graph.model.graph.output])
    initializers = {init.name for init in model.graph.initializer}
    theirs = ([i.name for i in model.graph.input if i.name not in initializers], [o.name for o in model.graph.output])
    if ours != theirs:
        raise QuantlabError(f"{path} is not a Q/DQ model of this FP32 model: its inputs/outputs are {theirs[0]} -> "
                            f"{theirs[1]}, the FP32 model's {ours[0]} -> {ours[1]}", params=("cache",))
    return model


def file_names(activations: Sequence[str], model: onnx.ModelProto) -> dict[str, str]:
    """Each FP32 activation's name in a Q/DQ ``model``: its own, or ``<name>_fp16``/``_bf16`` where the
    typed remainder renamed it (:func:`quantlab.qdq.remainder.retype`); activations the file does not
    compute are left out."""
    produced = {out for node in model.graph.node for out in node.output} | {i.name for i in model.graph.input}
    found = {}
    for name in activations:
        for candidate in (name, f"{name}_fp16", f"{name}_bf16"):
            if candidate in produced:
                found[name] = candidate
                break
    return found
