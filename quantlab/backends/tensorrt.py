"""TensorRT backend: build INT8 engines from quantlab's ranges and run them.

Two ways to an INT8 engine, chosen by the installed TensorRT version (design.md §1):

* **implicit** (TensorRT 8.x-10.x, deprecated in 10.1, removed in 11): the ONNX model plus a
  calibration cache. An ``IInt8Calibrator`` subclass matching the cache header's algorithm hands
  TensorRT quantlab's cache from ``read_calibration_cache``, so the builder takes our ranges and
  never asks for a batch. (A header/algorithm mismatch would make TensorRT recalibrate.)
* **explicit** (TensorRT 8.x and later, the only way in 11): a Q/DQ ONNX model
  (``quantlab export-qdq``). TensorRT 10 builds it strongly typed; 8.x/9.x need the INT8 flag;
  11 networks are always strongly typed.

Everything here that does not need TensorRT (choosing the path, the calibrator class, the
``trtexec`` command line) is plain Python and tested on every machine; the parts that do need it
import ``tensorrt`` (and ``pycuda`` for running) only when called, and say how to install them
when they are missing. API calls follow the documented TensorRT Python API of each version; each
branch names the version it targets.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..atomic import write_bytes_atomic, write_text_atomic
from ..errors import QuantlabError
from ..formats.trtcache import parse_version

# Cache header algorithm -> TensorRT calibrator base class (tensorrt.<name>).
CALIBRATOR_CLASSES = {
    "EntropyCalibration2": "IInt8EntropyCalibrator2",
    "EntropyCalibration": "IInt8EntropyCalibrator",
    "MinMaxCalibration": "IInt8MinMaxCalibrator",
    "LegacyCalibration": "IInt8LegacyCalibrator",
}
INSTALL_HINT = ("install it on a machine with an NVIDIA GPU: pip install '.[tensorrt]' "
                "(tensorrt and pycuda), or build with trtexec")


@dataclass(frozen=True)
class BuildPlan:
    """Which way an engine is built, and why."""

    path: str  # "implicit" or "explicit"
    trt_version: tuple
    strongly_typed: bool
    int8_flag: bool
    reason: str


def choose_build_path(trt_version: tuple, *, has_cache: bool, model_has_qdq: bool) -> BuildPlan:
    """Pick implicit (cache) or explicit (Q/DQ) INT8 for a TensorRT version.

    A cache on TensorRT 11+ is refused (implicit INT8 is gone: convert it with export-qdq); a
    Q/DQ model is built explicitly on any version; a plain FP32 model with no cache has no INT8
    ranges at all.
    """
    major = trt_version[0]
    if has_cache and model_has_qdq:
        raise QuantlabError("give either a Q/DQ model or a cache, not both (the Q/DQ nodes already hold ranges)")
    if has_cache:
        if major >= 11:
            raise QuantlabError(
                f"TensorRT {'.'.join(map(str, trt_version))} removed implicit INT8 calibration and cannot use a "
                "calibration cache; make a Q/DQ model with 'quantlab export-qdq MODEL --cache CACHE -o "
                "model.qdq.onnx' and build that"
            )
        if major < 8:
            raise QuantlabError(f"TensorRT {major}.x is not supported (8.x or later)")
        return BuildPlan("implicit", trt_version, strongly_typed=False, int8_flag=True,
                         reason=f"TensorRT {major}.x with a calibration cache: implicit INT8 (IInt8Calibrator)")
    if model_has_qdq:
        strongly = major >= 10
        return BuildPlan("explicit", trt_version, strongly_typed=strongly, int8_flag=major < 10,
                         reason=f"Q/DQ model: explicit INT8 ({'strongly typed' if strongly else 'INT8 flag'})")
    raise QuantlabError("the model has no Q/DQ nodes and no --cache was given: nothing says how to quantize "
                        "it; pass --cache CACHE, or build a Q/DQ model with 'quantlab export-qdq'")


def calibrator_class_name(header_algorithm: Optional[str]) -> str:
    """The TensorRT calibrator class whose header matches the cache (else TensorRT recalibrates)."""
    if header_algorithm is None:
        raise QuantlabError("the cache has a TensorRT 4 header ('1') that no current calibrator accepts; "
                            "rewrite it: quantlab cache convert CACHE --to trt --trt-version X.Y.Z -o new.cache")
    try:
        return CALIBRATOR_CLASSES[header_algorithm]
    except KeyError as exc:
        raise QuantlabError(f"no TensorRT calibrator writes {header_algorithm!r} caches; known: "
                            f"{', '.join(CALIBRATOR_CLASSES)}") from exc


def model_has_qdq(model) -> bool:
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)


def trtexec_command(model: str, engine: str, plan: BuildPlan, *, cache: Optional[str] = None,
                    fp16: bool = False, shapes: Optional[dict] = None) -> str:
    """The ``trtexec`` line that builds the same engine."""
    args = ["trtexec", f"--onnx={model}"]
    if plan.path == "implicit":
        args += ["--int8", f"--calib={cache}"]
    elif plan.trt_version[0] < 10:
        args.append("--int8")
    elif plan.trt_version[0] == 10:
        args.append("--stronglyTyped")
    if fp16 and not plan.strongly_typed:
        args.append("--fp16")
    if shapes:
        for flag, key in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
            args.append(flag + "=" + ",".join(f"{name}:{'x'.join(map(str, s[key]))}" for name, s in shapes.items()))
    args.append(f"--saveEngine={engine}")
    return " ".join(shlex.quote(a) for a in args)


def import_tensorrt():
    """``tensorrt`` and its version, or a clear error saying how to install it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise QuantlabError(f"TensorRT is not installed (the Python package 'tensorrt'); {INSTALL_HINT}") from exc
    return trt, parse_version(trt.__version__)


def import_pycuda():
    try:
        import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
        import pycuda.driver as cuda
    except ImportError as exc:
        raise QuantlabError(f"pycuda is not installed; {INSTALL_HINT}") from exc
    return cuda


def make_cache_calibrator(trt, algorithm: str, cache: bytes, batch_size: int = 1):
    """An instance of the calibrator class matching ``algorithm`` that serves ``cache``.

    TensorRT 8.x-10.x API: ``get_batch`` returns None (no batches: the cache answers every
    range), ``read_calibration_cache`` returns the cache bytes, ``write_calibration_cache`` keeps
    whatever TensorRT writes back.
    """
    base = getattr(trt, calibrator_class_name(algorithm))

    class CacheCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self):
            base.__init__(self)
            self.written: Optional[bytes] = None

        def get_batch_size(self):
            return batch_size

        def get_batch(self, names):
            return None

        def read_calibration_cache(self):
            return cache

        def write_calibration_cache(self, data):
            self.written = bytes(data)

    return CacheCalibrator()


@dataclass
class BuildSettings:
    model: str
    engine: str
    path: str
    trt_version: str
    cache: Optional[str] = None
    calibrator: Optional[str] = None
    fp16: bool = False
    strongly_typed: bool = False
    workspace_bytes: int = 1 << 30
    shapes: dict = field(default_factory=dict)


def build_engine(model_path: str | Path, output: str | Path, *, cache: Optional[str | Path] = None,
                 fp16: bool = False, workspace_bytes: int = 1 << 30,
                 shapes: Optional[dict] = None) -> BuildSettings:
    """Build and save an INT8 engine (plan) plus ``<plan>.json`` with the build settings."""
    import onnx

    from ..formats.ranges import read_ranges

    trt, version = import_tensorrt()
    model_bytes = Path(model_path).read_bytes()
    plan = choose_build_path(version, has_cache=cache is not None,
                             model_has_qdq=model_has_qdq(onnx.load_model_from_string(model_bytes)))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if version[0] >= 10:
        # TensorRT 10+: explicit batch is the only mode; STRONGLY_TYPED for Q/DQ models.
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    else:
        # TensorRT 8.x/9.x: explicit batch must be requested.
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise QuantlabError(f"TensorRT's ONNX parser rejected {model_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)  # 8.4+
    settings = BuildSettings(str(model_path), str(output), plan.path, ".".join(map(str, version)),
                             fp16=fp16, strongly_typed=plan.strongly_typed, workspace_bytes=workspace_bytes,
                             shapes=shapes or {})
    if plan.int8_flag:
        config.set_flag(trt.BuilderFlag.INT8)  # 8.x-10.x; gone in 11 (strongly typed)
    if fp16 and not plan.strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = _profile(builder, network, shapes)
    if profile is not None:
        config.add_optimization_profile(profile)
    calibrator = None
    if plan.path == "implicit":
        ranges = read_ranges(cache)
        if ranges.trt is None:
            raise QuantlabError(f"{cache} is a {ranges.description}; TensorRT reads TensorRT caches only: "
                                "quantlab cache convert it --to trt first")
        calibrator = make_cache_calibrator(trt, ranges.trt.algorithm, ranges.trt.to_text().encode())
        config.int8_calibrator = calibrator  # 8.x-10.x
        if profile is not None:
            config.set_calibration_profile(profile)
        settings.cache = str(cache)
        settings.calibrator = calibrator_class_name(ranges.trt.algorithm)
    serialized = builder.build_serialized_network(network, config)  # 8.0+
    if serialized is None:
        raise QuantlabError("TensorRT failed to build the engine (see its log above)")
    write_bytes_atomic(output, bytes(serialized))
    write_text_atomic(str(output) + ".json", json.dumps(asdict(settings), indent=1) + "\n")
    return settings


def _profile(builder, network, shapes: Optional[dict]):
    """An optimization profile for dynamic inputs: ``shapes[name] = {"min","opt","max"}``."""
    dynamic = [network.get_input(i) for i in range(network.num_inputs)
               if any(d < 0 for d in network.get_input(i).shape)]
    if not dynamic:
        return None
    profile = builder.create_optimization_profile()
    for tensor in dynamic:
        spec = (shapes or {}).get(tensor.name)
        if spec is None:
            fixed = [1 if d < 0 else d for d in tensor.shape]
            spec = {"min": fixed, "opt": fixed, "max": [32 if d < 0 else d for d in tensor.shape]}
        profile.set_shape(tensor.name, spec["min"], spec["opt"], spec["max"])
    return profile


class TensorRTRunner:
    """Runs a serialized engine with pycuda: device buffers, one stream, host<->device copies.

    TensorRT 10+: the name-based tensor API (``set_input_shape``, ``set_tensor_address``,
    ``execute_async_v3``). TensorRT 8.x/9.x: the binding API (``set_binding_shape``,
    ``execute_async_v2``).
    """

    def __init__(self, plan_path: str | Path):
        trt, self.version = import_tensorrt()
        self.cuda = import_pycuda()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise QuantlabError(f"{plan_path} is not an engine this TensorRT ({trt.__version__}) can load")
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.Stream()
        self.trt = trt

    def latency_ms(self, inputs: dict, repeats: int = 50) -> float:
        """Mean wall time of one run, host copies included (after two warm-up runs)."""
        import time

        for _ in range(2):
            self.run(inputs)
        start = time.perf_counter()
        for _ in range(repeats):
            self.run(inputs)
        return (time.perf_counter() - start) / repeats * 1e3

    def run(self, inputs: dict) -> dict[str, np.ndarray]:
        if self.version[0] >= 10:
            return self._run_v3(inputs)
        return self._run_v2(inputs)

    def _run_v3(self, inputs: dict) -> dict[str, np.ndarray]:
        trt, cuda, engine, context = self.trt, self.cuda, self.engine, self.context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        keep, outputs = [], {}
        for name in names:
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                host = np.ascontiguousarray(inputs[name], dtype=trt.nptype(engine.get_tensor_dtype(name)))
                context.set_input_shape(name, host.shape)
                device = cuda.mem_alloc(host.nbytes)
                cuda.memcpy_htod_async(device, host, self.stream)
                context.set_tensor_address(name, int(device))
                keep.append((device, host))
        for name in names:
            if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                shape = tuple(context.get_tensor_shape(name))
                host = cuda.pagelocked_empty(shape, trt.nptype(engine.get_tensor_dtype(name)))
                device = cuda.mem_alloc(host.nbytes)
                context.set_tensor_address(name, int(device))
                outputs[name] = (host, device)
        context.execute_async_v3(self.stream.handle)
        for host, device in outputs.values():
            cuda.memcpy_dtoh_async(host, device, self.stream)
        self.stream.synchronize()
        return {name: np.array(host) for name, (host, _) in outputs.items()}

    def _run_v2(self, inputs: dict) -> dict[str, np.ndarray]:
        trt, cuda, engine, context = self.trt, self.cuda, self.engine, self.context
        bindings, outputs, keep = [None] * engine.num_bindings, {}, []
        for index in range(engine.num_bindings):
            name = engine.get_binding_name(index)
            if engine.binding_is_input(index):
                host = np.ascontiguousarray(inputs[name], dtype=trt.nptype(engine.get_binding_dtype(index)))
                context.set_binding_shape(index, host.shape)
                device = cuda.mem_alloc(host.nbytes)
                cuda.memcpy_htod_async(device, host, self.stream)
                bindings[index] = int(device)
                keep.append((device, host))
        for index in range(engine.num_bindings):
            if not engine.binding_is_input(index):
                shape = tuple(context.get_binding_shape(index))
                host = cuda.pagelocked_empty(shape, trt.nptype(engine.get_binding_dtype(index)))
                device = cuda.mem_alloc(host.nbytes)
                bindings[index] = int(device)
                outputs[engine.get_binding_name(index)] = (host, device)
        context.execute_async_v2(bindings, self.stream.handle)
        for host, device in outputs.values():
            cuda.memcpy_dtoh_async(host, device, self.stream)
        self.stream.synchronize()
        return {name: np.array(host) for name, (host, _) in outputs.items()}


def installed_version() -> Optional[tuple]:
    """The installed TensorRT version, or None (without raising)."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return parse_version(trt.__version__)


def plan_for_print(trt_version: Optional[str], has_cache: bool, model, default: Sequence[int] = (10, 3, 0)):
    """The build plan for ``--print-trtexec`` (the given version, else the installed one, else 10.3)."""
    version = parse_version(trt_version) if trt_version else (installed_version() or tuple(default))
    return choose_build_path(version, has_cache=has_cache, model_has_qdq=model_has_qdq(model))
