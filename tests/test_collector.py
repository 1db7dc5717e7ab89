"""The activation collector: what it measures must equal what the model computes, batch after batch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantlab import collector as collector_module
from quantlab import histogram
from quantlab.collector import ActivationCollector
from quantlab.graph import load_model
from quantlab.histogram import TensorHistogram
from quantlab.preprocess import Batch


def view_ops_model(path) -> str:
    """Conv -> Relu -> Reshape -> Identity -> Transpose -> Flatten: ops ORT may run as views."""
    weight = np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Reshape", ["relu", "shape"], ["reshaped"]),
        helper.make_node("Identity", ["reshaped"], ["same"]),
        helper.make_node("Transpose", ["same"], ["transposed"], perm=[0, 2, 1]),
        helper.make_node("Flatten", ["transposed"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "views",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 100])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([0, 4, 25], np.int64), "shape")],
    )
    # IR 8: loadable by every ONNX Runtime this project supports, whatever onnx wrote by default.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return str(path)


def expected_histograms(path: str, names: list[str], data: np.ndarray) -> dict[str, TensorHistogram]:
    """Each tensor's histogram from one plain ONNX Runtime run over all the data at once."""
    graph = load_model(path)
    model = graph.model
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                              for n in names if n not in ("x", "y"))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = [n for n in names if n != "x"]
    values = dict(zip(wanted, session.run(wanted, {"x": data})), x=data)
    out = {}
    for name in names:
        out[name] = TensorHistogram()
        out[name].update(values[name])
    return out


@pytest.mark.parametrize("threads", [1, 2])
def test_every_batch_is_measured_through_reused_output_buffers(tmp_path, threads):
    path = view_ops_model(tmp_path / "views.onnx")
    graph = load_model(path)
    # Each sample on its own scale, so a batch left over from the one before would show.
    scales = np.arange(1, 10, dtype=np.float32)[:, None, None, None]
    data = np.random.default_rng(1).standard_normal((9, 2, 5, 5)).astype(np.float32) * scales
    collector = ActivationCollector(graph, threads=threads)
    for start in range(0, 9, 2):  # batches of 2, 2, 2, 2 and a last one of 1 (a new shape)
        collector.update(Batch({"x": data[start:start + 2]}, None, np.arange(start, min(start + 2, 9))))
    collector.close()
    expected = expected_histograms(path, graph.activations, data)
    assert set(collector.statistics.tensors) == set(graph.activations)
    for name, hist in collector.statistics.tensors.items():
        want = expected[name]
        assert (hist.counts == want.counts).all() and hist.exponent == want.exponent, name
        assert (hist.min_value, hist.max_value) == (want.min_value, want.max_value), name


def test_model_input_is_measured_from_the_feeds(tmp_path):
    graph = load_model(view_ops_model(tmp_path / "views.onnx"))
    collector = ActivationCollector(graph, threads=1)
    assert "x" in collector.statistics.tensors
    assert "x" not in collector.output_names
    collector.update(Batch({"x": np.full((1, 2, 5, 5), -3.0, np.float32)}, None, np.arange(1)))
    assert collector.statistics.tensors["x"].min_value == -3.0


def test_batches_over_the_activation_budget_are_run_in_slices_with_the_same_result(tmp_path):
    graph = load_model(view_ops_model(tmp_path / "views.onnx"))
    data = np.random.default_rng(2).standard_normal((10, 2, 5, 5)).astype(np.float32)
    results, runs = [], []
    for budget in (1, 6_000, 1 << 30):  # 2.4 kB a sample: slices of 1 sample, of 2, whole batches
        collector = ActivationCollector(graph, threads=1, activation_budget=budget)
        for start in range(0, 10, 5):
            collector.update(Batch({"x": data[start:start + 5]}, None, np.arange(start, start + 5)))
        collector.close()
        results.append(collector.statistics)
        runs.append(collector.runs)
    assert runs[0] == 10 and runs[2] == 3  # whole batches: one sample alone first, then 4, then 5
    assert runs[0] > runs[1] > runs[2]
    assert results[0].num_samples == results[2].num_samples == 10
    assert results[0].to_bytes() == results[1].to_bytes() == results[2].to_bytes()


def test_buffers_of_shapes_no_longer_in_use_are_released(tmp_path):
    graph = load_model(view_ops_model(tmp_path / "views.onnx"))
    data = np.zeros((12, 2, 5, 5), np.float32)
    collector = ActivationCollector(graph, threads=1)
    for start in range(0, 12, 4):  # the first batch runs as 1 + 3 samples, the next ones whole
        collector.update(Batch({"x": data[start:start + 4]}, None, np.arange(start, start + 4)))
    assert [dict(shape)["x"][0] for slot in collector._buffers for shape in slot] == [4, 4]


def collected_bytes(graph, data: np.ndarray, threads: int, batch: int = 5) -> bytes:
    collector = ActivationCollector(graph, threads=threads)
    for start in range(0, len(data), batch):
        indices = np.arange(start, min(start + batch, len(data)))
        collector.update(Batch({"x": data[start:start + batch]}, None, indices))
    collector.close()
    return collector.statistics.to_bytes()


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "numpy"])
def test_tensors_cut_into_pieces_across_any_thread_count_give_the_same_statistics_bytes(tmp_path, monkeypatch, kernel):
    graph = load_model(view_ops_model(tmp_path / "views.onnx"))
    data = (np.random.default_rng(3).standard_cauchy((40, 2, 5, 5)) * 0.1).astype(np.float32)
    data[3, 0, 0, :] = [0.0, -0.0, np.nan, np.inf, -np.inf]
    if kernel:
        assert histogram.load_kernel()
    else:
        monkeypatch.setattr(histogram, "_kernel", None)
    monkeypatch.setattr(collector_module, "MIN_PIECE", 7)  # pieces of 7 values and up: every tensor is cut
    results = {threads: collected_bytes(graph, data, threads) for threads in (1, 2, 3, 8)}
    assert len(set(results.values())) == 1


def test_the_kernel_arriving_in_the_middle_of_a_collection_changes_no_byte(tmp_path, monkeypatch):
    graph = load_model(view_ops_model(tmp_path / "views.onnx"))
    data = np.random.default_rng(4).standard_normal((30, 2, 5, 5)).astype(np.float32)
    assert histogram.load_kernel()
    kernel = histogram._kernel
    whole = collected_bytes(graph, data, threads=2)
    collector = ActivationCollector(graph, threads=2)
    for start in range(0, 30, 5):
        monkeypatch.setattr(histogram, "_kernel", kernel if start >= 15 else None)  # numpy first, then the kernel
        collector.update(Batch({"x": data[start:start + 5]}, None, np.arange(start, start + 5)))
    collector.close()
    assert collector.statistics.to_bytes() == whole


def test_the_kernel_is_loaded_only_for_work_large_enough_to_repay_its_start_up(tmp_path):
    path = view_ops_model(tmp_path / "views.onnx")
    code = ("import sys, numpy as np\n"
            "from quantlab import collector, histogram\n"
            "from quantlab.graph import load_model\n"
            "from quantlab.preprocess import Batch\n"
            "graph = load_model(sys.argv[1])\n"
            "def collect():\n"
            "    c = collector.ActivationCollector(graph, threads=1)\n"
            "    batch = Batch({'x': np.ones((4, 2, 5, 5), np.float32)}, None, np.arange(4))\n"
            "    c.collect([batch], total=4, progress=False)\n"
            "collect()\n"
            "print(histogram.kernel_info()['state'])\n"
            "collector.KERNEL_MIN_VALUES = 1000  # 4 samples make 2,500 values here\n"
            "collect()\n"
            "print(histogram.kernel_info()['state'])\n")
    proc = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True)
    first, second = proc.stdout.split()
    assert first == "unloaded" and second in ("loading", "ready")
