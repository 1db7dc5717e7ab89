"""The device path (``--device``): graphs in torch, histograms where the activations are.

Every test runs on torch's CPU device, which executes the very code a GPU runs (the same fold,
the same Q/DQ rules, the same schedule), so CI checks the rules without a GPU; each one runs on
``cuda`` as well where torch sees a GPU (the device machine: ``pytest tests/test_device.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch", reason="the device path needs torch (pip install 'quantlab[device]')")
pytest.importorskip("onnx2torch", reason="the device path needs onnx2torch (pip install 'quantlab[device]')")

from quantlab.calibrate import CollectOptions, calibrate_statistics, collect_statistics  # noqa: E402
from quantlab.collector import make_session  # noqa: E402
from quantlab.device import device_of, with_device  # noqa: E402
from quantlab.device.histogram import fold, to_host  # noqa: E402
from quantlab.device.session import TorchSession  # noqa: E402
from quantlab.errors import QuantlabError  # noqa: E402
from quantlab.histogram import TensorHistogram  # noqa: E402
from quantlab.preprocess import Preprocess, iterate_batches, select_indices  # noqa: E402
from quantlab.workload import DataSpec, open_dataset, resolve_model  # noqa: E402

from conftest import REPO, run_cli  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
import corpus  # noqa: E402  (benchmarks/ is on the path only from here)

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="torch sees no CUDA GPU here "
                                                                 "(the device machine runs these)"))]
needs_cuda = pytest.mark.skipif(not CUDA, reason="torch sees no CUDA GPU here (the device machine runs these)")


def adversarial(dtype) -> np.ndarray:
    """Bin edges, the largest float below each power of two, subnormals, signed zeros, NaN, Inf."""
    info = np.finfo(dtype)
    values = [0.0, -0.0, info.tiny, -info.tiny, info.smallest_subnormal, -info.smallest_subnormal, info.tiny / 3,
              info.max, -info.max, np.inf, -np.inf, np.nan]
    for exponent in range(-20, 20):
        power = np.ldexp(dtype(1), exponent)
        values += [power, -power, np.nextafter(power, dtype(0)), np.nextafter(power, dtype(np.inf)), power * 1.5]
    return np.array(values, dtype=dtype)


def value_sets() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sets = []
    for dtype in (np.float32, np.float64):
        tiny = np.finfo(dtype).smallest_subnormal
        sets += [adversarial(dtype), np.array([-0.0, 0.0], dtype), np.array([-0.0], dtype), np.array([np.nan], dtype),
                 np.array([tiny * k for k in range(1, 50)], dtype), np.zeros(10, dtype), np.array([], dtype),
                 (rng.standard_normal(100_003) * 10).astype(dtype),
                 rng.standard_normal(1000).astype(dtype) * dtype(np.ldexp(1.0, -120))]
    sets.append(np.array([1.0, -2.5, np.inf, 65504, 6e-8, -0.0], np.float16))
    return sets


def same_statistics(a: TensorHistogram, b: TensorHistogram) -> bool:
    return (np.array_equal(a.counts, b.counts) and (a.exponent, a.nan_count, a.inf_count) ==
            (b.exponent, b.nan_count, b.inf_count)
            and [repr(v) for v in (a.min_value, a.max_value, a.max_abs)] ==
            [repr(v) for v in (b.min_value, b.max_value, b.max_abs)])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bins", [256, 2048, 65536])
def test_device_fold_gives_the_cpu_kernels_statistics_on_adversarial_values(device, bins):
    for values in value_sets():
        cpu = TensorHistogram(bins)
        cpu.update(values)
        got = to_host([fold(torch.from_numpy(values).to(device), bins)], bins)[0]
        assert same_statistics(got, cpu), (values.dtype, values[:8])


def fused_mismatches(device: str, bins: int) -> list:
    """The float32 value sets on which the fused Triton fold differs from the CPU kernel."""
    bad = []
    for values in value_sets():
        if values.dtype != np.float32:  # the fused kernels read float32; the rest takes the torch fold
            continue
        cpu = TensorHistogram(bins)
        cpu.update(values)
        got = to_host([fold(torch.from_numpy(values).to(device), bins, fused=True)], bins)[0]
        if not same_statistics(got, cpu):
            bad.append(values[:8].tolist())
    return bad


@pytest.mark.parametrize("bins", [256, 2048, 4096])
def test_fused_fold_gives_the_cpu_kernels_statistics_on_adversarial_values(bins):
    """On a GPU the kernels compiled; elsewhere the same kernel source in Triton's interpreter (numpy
    arithmetic on the CPU), which must be chosen before triton is imported: a child process."""
    pytest.importorskip("triton", reason="the fused fold needs triton (a dependency of torch's Linux wheels)")
    if CUDA:
        assert fused_mismatches("cuda", bins) == []
        return
    code = f"import test_device as t; print(t.fused_mismatches('cpu', {bins}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO / "tests", capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("device", DEVICES)
def test_device_folds_of_pieces_merge_into_the_fold_of_the_whole(device):
    values = np.random.default_rng(1).standard_normal(50_000).astype(np.float32) * np.float32(3)
    whole = to_host([fold(torch.from_numpy(values).to(device), 2048)], 2048)[0]
    merged = TensorHistogram(2048)
    pieces = np.array_split(values[::-1].copy(), 7)
    for piece in to_host([fold(torch.from_numpy(p).to(device), 2048) for p in pieces], 2048):
        merged.merge(piece)
    assert same_statistics(merged, whole)


def qdq_model(scale: np.ndarray, zero_point: np.ndarray, axis: int = 1) -> onnx.ModelProto:
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=axis),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=axis)]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4]),
                               helper.make_tensor_value_info("q", helper.np_dtype_to_tensor_dtype(zero_point.dtype),
                                                             [2, 3, 4])],
                              [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero_point, "z")])
    # IR 9 (opset 19's): the onnx package may stamp a newer IR than the onnxruntime beside it reads
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_axis", [False, True])
@pytest.mark.parametrize("zero_dtype", [np.int8, np.uint8])
def test_quantize_dequantize_equal_onnxruntime_bit_for_bit(device, per_axis, zero_dtype):
    """Ties round half to even, values past the range clip, per-axis scales broadcast."""
    scale = np.array([0.1, 0.25, 0.03], np.float32) if per_axis else np.array(0.1, np.float32)
    zero = (np.array([0, 3, 7], zero_dtype) if per_axis else np.array(5, zero_dtype))
    x = np.array([-0.25, -0.15, -0.05, 0.05, 0.15, 0.25, 12.7, -12.8, 1e9, -1e9, 0.0, -0.0] * 2,
                 np.float32).reshape(2, 3, 4)
    model = qdq_model(scale, zero)
    reference = make_session(model.SerializeToString(), None, optimize=False).run(None, {"x": x})
    got = TorchSession(model, device).run(None, {"x": x})
    for want, have in zip(reference, got):
        assert want.dtype == have.dtype
        assert np.array_equal(want, have)


@pytest.mark.parametrize("device", DEVICES)
def test_embedded_model_statistics_on_a_device_give_the_cpu_ranges(device):
    """Entropy ranges of every activation of the embedded model: torch's FP32 activations differ from
    ONNX Runtime's by float rounding, which moves no entropy threshold here."""
    data = DataSpec(batch_size=64)
    cpu = collect_statistics(None, data, progress=False)
    dev = collect_statistics(None, data, CollectOptions(providers=with_device(None, device)), progress=False)
    assert set(dev.tensors) == set(cpu.tensors)
    for name in cpu.tensors:
        assert dev.tensors[name].max_abs == pytest.approx(cpu.tensors[name].max_abs, rel=1e-5), name
    cpu_table = calibrate_statistics(None, cpu, "entropy").activations
    dev_table = calibrate_statistics(None, dev, "entropy").activations
    assert dev_table.keys() == cpu_table.keys()
    for name in cpu_table:
        assert dev_table[name] == pytest.approx(cpu_table[name], rel=1e-5), name


@pytest.mark.parametrize("device", DEVICES)
def test_device_statistics_do_not_depend_on_the_batch_size(device):
    options = CollectOptions(providers=with_device(None, device))
    runs = [collect_statistics(None, DataSpec(batch_size=size, num_samples=200), options, progress=False)
            for size in (7, 64)]
    assert runs[0].to_bytes() == runs[1].to_bytes()


@needs_cuda
def test_gpu_statistics_are_the_same_on_every_run():
    options = CollectOptions(providers=with_device(None, "cuda"))
    runs = [collect_statistics(None, DataSpec(batch_size=32), options, progress=False).to_bytes() for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("device", DEVICES)
def test_the_int8_model_runs_on_a_device_as_the_cpu_engine_runs_it(device, tmp_path):
    """compare on the device and on the CPU: the same INT8 top-1 on 1000 held-out images, output SQNR
    within 0.01 dB (float rounding of FP32 convolutions in another order)."""
    run_cli("calibrate", "-o", str(tmp_path / "m.cache"), "-q", check=True)
    reports = [json.loads(run_cli("compare", "--cache", str(tmp_path / "m.cache"), "--json", "--tensor-samples", "0",
                                  *extra, check=True).stdout) for extra in ([], ["--device", device])]
    cpu, dev = (report["outputs"][0] for report in reports)
    assert dev["int8_top1"] == cpu["int8_top1"]
    assert dev["sqnr_db"] == pytest.approx(cpu["sqnr_db"], abs=0.01)


def test_a_graph_torch_cannot_run_is_refused_naming_the_op():
    graph = helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"], name="the_hardmax")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(QuantlabError, match=r"Hardmax.*the_hardmax.*(?s:.*)Leave `device` out"):
        TorchSession(model, "cpu")


def test_a_device_with_onnxruntime_providers_is_refused():
    with pytest.raises(QuantlabError, match="cannot be used with it"):
        with_device(("CUDAExecutionProvider",), "cuda")


def test_a_device_travels_as_a_provider_and_is_read_back():
    assert device_of(with_device(None, "cuda:1")) == "cuda:1"
    assert device_of(("CPUExecutionProvider",)) is None


@pytest.mark.skipif(CUDA, reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_so_and_how_to_go_on(tmp_path):
    proc = run_cli("calibrate", "--device", "cuda", "-o", str(tmp_path / "m.cache"))
    assert proc.returncode == 2
    assert "sees no CUDA GPU" in proc.stderr and "leave --device out" in proc.stderr


@pytest.mark.parametrize("device", DEVICES)
def test_calibrate_on_a_device_writes_the_cpu_cache(device, tmp_path):
    """The embedded default through the CLI: the same cache bytes as the CPU path."""
    run_cli("calibrate", "-q", "-o", str(tmp_path / "cpu.cache"), check=True)
    run_cli("calibrate", "-q", "--device", device, "-o", str(tmp_path / "dev.cache"), check=True)
    assert (tmp_path / "dev.cache").read_bytes() == (tmp_path / "cpu.cache").read_bytes()


def _ort_cuda() -> bool:
    import onnxruntime

    return CUDA and "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.skipif(not _ort_cuda(), reason="needs onnxruntime-gpu with a CUDA GPU: its wheel cannot be installed on "
                    "these machines, so this path is written against ONNX Runtime's documented I/O binding, untested")
def test_onnxruntime_cuda_provider_histograms_on_the_device():
    data = DataSpec(batch_size=64)
    cpu = collect_statistics(None, data, progress=False)
    gpu = collect_statistics(None, data, CollectOptions(providers=("CUDAExecutionProvider",)), progress=False)
    for name in cpu.tensors:
        assert gpu.tensors[name].max_abs == pytest.approx(cpu.tensors[name].max_abs, rel=1e-5), name


@pytest.mark.slow
@pytest.mark.parametrize("model", corpus.CORPUS, ids=[m.name for m in corpus.CORPUS])
def test_every_corpus_model_runs_on_a_device_as_onnxruntime_runs_it(tmp_path, model):
    """The real third-party graphs (paddle2onnx exports, Keras-converted MTCNN with SAME pooling, SVTR
    attention with BatchNormalization of unknown rank): FP32 outputs within float rounding."""
    if model.path is None:
        pytest.skip(f"{model.distribution} is not installed (.ci/run installs it)")
    graph = resolve_model(str(model.path))
    dataset = open_dataset(str(corpus.write_split(model, "calibration", 4, tmp_path / "c.npz")), None, graph)
    batch = next(iterate_batches(dataset, select_indices(len(dataset), None, 0), graph.inputs,
                                 Preprocess(resize=model.resize, mean=model.mean, std=model.std), 4))
    names = list(graph.output_names)
    reference = make_session(graph.model.SerializeToString()).run(names, batch.inputs)
    got = TorchSession(graph.model, "cpu").run(names, batch.inputs)
    for want, have in zip(reference, got):
        assert np.linalg.norm(have.astype(np.float64) - want) <= 1e-5 * np.linalg.norm(want)
