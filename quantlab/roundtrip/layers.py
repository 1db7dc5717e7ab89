"""What TensorRT built: the engine's layers from ``trtexec --exportLayerInfo`` (or a build log).

Three forms are read, whatever TensorRT wrote them (7.x to 11):

* **detailed** (``--profilingVerbosity=detailed``): ``{"Layers": [{"Name", "LayerType", "Inputs",
  "Outputs", "Metadata", ...}], "Bindings": [...]}``. A tensor's type is in ``"Format/Datatype"``,
  as a description ("Thirty-two wide channel vectorized row major Int8 format", "Row major linear
  FP32") or, from Myelin layers, bare ("Int8", "Half", "Float"); TensorRT 11 writes separate
  ``"Datatype"`` and ``"Format"`` keys. ``Metadata`` (TensorRT 8.6+) lists the ONNX nodes fused
  into the layer as ``[ONNX Layer: name]``, separated by ``\\x1e``.
* **names only** (the default verbosity): ``{"Layers": ["name", ...], "Bindings": [...]}``: the
  fused ONNX nodes are read from the names, no types.
* **log**: the ``Engine Layer Information:`` block of ``trtexec --verbose`` (or ``--dumpLayerInfo``)
  output, ``Layer(Type): name, Tactic: 0x..., in (Int8[1,64:32,8,8]) -> out (Float[...])``.

A layer's precision is that of its first output (what the INDEX of ../shared/trt-artifacts counts);
whether it *computes* in INT8 is whether any input is INT8, which is what matters for a Conv whose
INT8 result is dequantized into a float output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import DataError
from .documents import json_document, read_text

PathLike = Union[str, Path]

# (substring, precision), the first match wins: "UInt8" before "Int8", descriptions and bare names alike.
_TYPES = (("UInt8", "uint8"), ("Int8", "int8"), ("FP8", "fp8"), ("Int4", "int4"), ("FP4", "fp4"),
          ("BF16", "bf16"), ("FP16", "fp16"), ("Half", "fp16"), ("FP32", "fp32"), ("Float", "fp32"),
          ("Int32", "int32"), ("Int64", "int64"), ("Bool", "bool"))
REFORMAT_TYPES = frozenset({"Reformat", "MyelinReformat", "NoOp"})
_METADATA = re.compile(r"\[ONNX Layer: (.*?)\]")
_LOG_LAYER = re.compile(r"^Layer\((?P<type>[^)]*)\): (?P<rest>.*)$")
_LOG_TENSOR = re.compile(r"(?:^|, )(?P<name>.+?) \((?P<type>[A-Za-z0-9]+)\[(?P<dims>[^\]]*)\]\)")


def precision_of(description: Optional[str]) -> Optional[str]:
    """``int8``/``fp16``/``fp32``/... from a tensor's format or type description, None if unknown."""
    if not description:
        return None
    for needle, precision in _TYPES:
        if needle in description:
            return precision
    return None


@dataclass(frozen=True)
class EngineTensor:
    name: str
    precision: Optional[str]
    format: str = ""
    dims: tuple = ()


@dataclass
class EngineLayer:
    """One engine layer: its name, type, tensors and the ONNX nodes TensorRT says it fused."""

    name: str
    layer_type: str = ""
    inputs: list[EngineTensor] = field(default_factory=list)
    outputs: list[EngineTensor] = field(default_factory=list)
    onnx_nodes: list[str] = field(default_factory=list)  # from Metadata where present, else from the name

    @property
    def precision(self) -> Optional[str]:
        """The type of the first output (None in the names-only form)."""
        return self.outputs[0].precision if self.outputs else None

    @property
    def touches_int8(self) -> bool:
        return any(t.precision == "int8" for t in self.inputs + self.outputs)

    @property
    def computes_int8(self) -> bool:
        return any(t.precision == "int8" for t in self.inputs)

    @property
    def is_reformat(self) -> bool:
        return (self.layer_type in REFORMAT_TYPES and not self.onnx_nodes) or self.name.startswith(
            "Reformatting CopyNode") or " reformatter " in self.name

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.layer_type, "precision": self.precision,
                "inputs": [t.precision for t in self.inputs], "outputs": [t.precision for t in self.outputs],
                "onnx_nodes": self.onnx_nodes, "reformat": self.is_reformat}


@dataclass
class EngineLayers:
    """An engine's layer list and bindings, and which form it was read from."""

    layers: list[EngineLayer]
    bindings: list[str]
    form: str  # detailed | names | log
    source: str = ""

    @property
    def has_types(self) -> bool:
        return self.form != "names"

    def counts(self) -> dict[str, int]:
        """Layers per precision (their first output's), largest first."""
        counts: dict[str, int] = {}
        for layer in self.layers:
            if layer.precision:
                counts[layer.precision] = counts.get(layer.precision, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    @property
    def reformats(self) -> list[EngineLayer]:
        return [layer for layer in self.layers if layer.is_reformat]

    def summary(self) -> dict:
        return {"form": self.form, "layers": len(self.layers), "bindings": self.bindings,
                "precision_counts": self.counts() if self.has_types else None,
                "touching_int8": sum(1 for x in self.layers if x.touches_int8) if self.has_types else None,
                "reformat_layers": len(self.reformats)}


# ------------------------------------------------------------------------------------------ names


def split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside brackets: ``a + PWN(b + c)`` -> ``a``, ``PWN(b + c)``."""
    parts, depth, start, k = [], 0, 0, 0
    while k < len(text):
        ch = text[k]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith(sep, k):
            parts.append(text[start:k])
            start = k + len(sep)
            k = start
            continue
        k += 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def names_in(layer_name: str) -> list[str]:
    """The ONNX names a layer's name mentions: the parts of ``a + b``, the arguments of
    ``PWN(...)``, both ends of ``{ForeignNode[a...b]}``; nothing for a ``Reformatting CopyNode`` or a
    Myelin kernel (``__myl_...``). Some are weights or tensors, not nodes: matching against a model sorts
    that out (:func:`quantlab.roundtrip.inspect.inspect`)."""
    if layer_name.startswith("Reformatting CopyNode") or " reformatter " in layer_name:
        return []
    found: list[str] = []
    for part in split_top(layer_name, " + "):
        match = re.fullmatch(r"(?:PWN|PointWise)\((.*)\)", part)
        if match:
            for arg in split_top(match.group(1), ", "):
                found += names_in(arg)
            continue
        match = re.fullmatch(r"\{ForeignNode\[(.*)\]\}", part)
        if match:
            ends = match.group(1).split("...")
            found += [e for e in ends if e]
            continue
        if part.startswith("__myl_"):  # a Myelin kernel's generated name, not an ONNX one
            continue
        found.append(re.sub(r" copy$", "", part))
    return list(dict.fromkeys(found))


# ------------------------------------------------------------------------------------------ readers


def _tensor(entry: Any, where: str) -> EngineTensor:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: a layer input/output that is not an object")
    if "Datatype" in entry:  # TensorRT 11
        described, fmt = str(entry.get("Datatype")), str(entry.get("Format", ""))
    else:
        described = fmt = str(entry.get("Format/Datatype", ""))
    dims = entry.get("Dimensions", ())
    return EngineTensor(str(entry.get("Name", "")), precision_of(described), fmt,
                        tuple(dims) if isinstance(dims, list) else ())


def _detailed(entry: dict, where: str) -> EngineLayer:
    name = str(entry.get("Name", ""))
    metadata = entry.get("Metadata") or ""
    nodes = _METADATA.findall(metadata) if isinstance(metadata, str) else []
    return EngineLayer(name, str(entry.get("LayerType", "")),
                       [_tensor(t, where) for t in entry.get("Inputs", [])],
                       [_tensor(t, where) for t in entry.get("Outputs", [])],
                       list(dict.fromkeys(nodes)) or names_in(name))


def _from_json(doc: Any, path: Path) -> EngineLayers:
    if not isinstance(doc, dict) or not isinstance(doc.get("Layers"), list):
        hint = ""
        if isinstance(doc, list) and doc and isinstance(doc[0], dict):
            hint = (" (it looks like --exportProfile output)" if "count" in doc[0] else
                    " (it looks like --exportOutput output)" if "values" in doc[0] else "")
        raise DataError(f"{path} is not trtexec --exportLayerInfo output{hint}: expected "
                        "{\"Layers\": [...], \"Bindings\": [...]}")
    raw, bindings = doc["Layers"], [str(b) for b in doc.get("Bindings", [])]
    if all(isinstance(x, str) for x in raw):
        return EngineLayers([EngineLayer(n, onnx_nodes=names_in(n)) for n in raw], bindings, "names", str(path))
    if not all(isinstance(x, dict) for x in raw):
        raise DataError(f"{path}: 'Layers' mixes names and objects; expected one form of --exportLayerInfo")
    return EngineLayers([_detailed(x, str(path)) for x in raw], bindings, "detailed", str(path))


def _log_tensors(text: str) -> list[EngineTensor]:
    return [EngineTensor(m["name"].strip(), precision_of(m["type"]), m["type"],
                         tuple(d for d in m["dims"].split(","))) for m in _LOG_TENSOR.finditer(text)]


def _from_log(text: str, path: Path) -> EngineLayers:
    start = text.find("Engine Layer Information:")
    if start < 0:
        raise DataError(f"{path} is neither --exportLayerInfo JSON nor a trtexec log with an 'Engine Layer "
                        "Information:' block (build with --verbose or --dumpLayerInfo)")
    layers = []
    for line in text[start:].splitlines()[1:]:
        line = re.sub(r"^\[[^\]]*\] \[[A-Z]\] (\[TRT\] )?", "", line.strip())
        match = _LOG_LAYER.match(line)
        if not match:
            if layers:
                break
            continue
        rest = match["rest"]
        name, _, io = rest.partition(", Tactic: ")
        io = io.split(", ", 1)[1] if ", " in io else ""
        ins, _, outs = io.partition(" -> ")
        layers.append(EngineLayer(name, match["type"], _log_tensors(ins), _log_tensors(outs), names_in(name)))
    if not layers:
        raise DataError(f"{path}: its 'Engine Layer Information:' block lists no layers")
    return EngineLayers(layers, [], "log", str(path))


def read_layer_info(path: PathLike) -> EngineLayers:
    """An engine's layers from ``--exportLayerInfo`` JSON (detailed or names only) or a trtexec log."""
    path = Path(path)
    what = "trtexec --exportLayerInfo output"
    text = read_text(path, what, errors="replace")
    if text.lstrip()[:1] in "{[":
        return _from_json(json_document(path, what), path)
    return _from_log(text, path)
