"""The calibration pipeline through the Python API, on the embedded real model and data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from quantlab import (
    DataSpec,
    Preprocess,
    calibrate,
    calibrate_statistics,
    collect_statistics,
    defaults,
)
from quantlab.calibrate import CollectOptions, Method, RangePolicy, select_tensors
from quantlab.errors import QuantlabError, StatisticsError
from quantlab.graph import load_model
from quantlab.statistics import Statistics, merge_files
from quantlab.table import CalibrationTable
from quantlab.weights import per_channel_amax
from quantlab.workload import table_path_for

SUBSET = 96


@pytest.fixture(scope="module")
def shuffled_npz(tmp_path_factory, calib_images):
    path = tmp_path_factory.mktemp("data") / "shuffled.npz"
    order = np.random.default_rng(5).permutation(SUBSET)
    np.savez(path, x=calib_images[:SUBSET][order])
    return path


def first_images(calib_images, tmp_path):
    path = tmp_path / "first.npy"
    np.save(path, calib_images[:SUBSET])
    return path


def test_activations_are_inputs_and_node_outputs_never_constants(graph):
    constants = {o for n in graph.model.graph.node if n.op_type == "Constant" for o in n.output}
    assert graph.activations[0] == "image"
    assert not constants & set(graph.activations)
    assert len(graph.activations) == 1 + sum(1 for n in graph.model.graph.node if n.op_type != "Constant")


def test_cache_bytes_do_not_depend_on_batch_size_or_sample_order(graph, calib_images, shuffled_npz, tmp_path):
    ordered = first_images(calib_images, tmp_path)
    a = calibrate(graph, DataSpec(ordered, batch_size=1), output=tmp_path / "a.cache", progress=False)
    b = calibrate(graph, DataSpec(shuffled_npz, batch_size=32), output=tmp_path / "b.cache", progress=False)
    c = calibrate(graph, DataSpec(shuffled_npz, batch_size=7), output=tmp_path / "c.cache", progress=False)
    assert a.cache_path.read_bytes() == b.cache_path.read_bytes() == c.cache_path.read_bytes()
    assert a.statistics.to_bytes() == b.statistics.to_bytes()


def test_merged_shards_equal_one_run_byte_for_byte(graph, calib_images, tmp_path):
    one = collect_statistics(graph, DataSpec(first_images(calib_images, tmp_path)), progress=False)
    paths = []
    for k, part in enumerate(np.array_split(calib_images[:SUBSET], 3)):
        np.save(tmp_path / f"shard{k}.npy", part)
        stats = collect_statistics(graph, DataSpec(tmp_path / f"shard{k}.npy", batch_size=5), progress=False)
        paths.append(stats.save(tmp_path / f"shard{k}.stats.npz"))
    assert merge_files(paths).to_bytes() == one.to_bytes()


def test_statistics_file_round_trips(graph, calib_images, tmp_path):
    stats = collect_statistics(graph, DataSpec(first_images(calib_images, tmp_path)), progress=False)
    loaded = Statistics.load(stats.save(tmp_path / "s.npz"))
    assert loaded.to_bytes() == stats.to_bytes() and loaded.num_samples == SUBSET


def test_truncated_statistics_file_is_a_clear_error(tmp_path, graph, calib_images):
    stats = collect_statistics(graph, DataSpec(first_images(calib_images, tmp_path)), progress=False)
    raw = stats.to_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(StatisticsError, match="not a quantlab statistics file"):
        Statistics.load(tmp_path / "cut.npz")


def test_weights_get_per_output_channel_max_abs_on_the_documented_axes(graph):
    table = calibrate(graph, DataSpec(num_samples=16), progress=False).table
    ops = {w.op_type for w in table.weights.values()}
    assert ops == {"Conv", "Gemm"}
    for name, rng in table.weights.items():
        w = graph.initializer(name)
        assert len(rng.amax) == w.shape[rng.axis]
        assert np.array_equal(rng.amax, per_channel_amax(w, rng.axis))
    gemm = next(r for r in table.weights.values() if r.op_type == "Gemm")
    assert gemm.axis == 0 and len(gemm.amax) == 10  # Linear exports as Gemm transB=1: [10, 96]


def test_per_channel_axis_for_conv_transpose_and_matmul():
    w = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 12
    assert np.array_equal(per_channel_amax(w, 1), np.abs(w).max(axis=(0, 2)))
    assert np.array_equal(per_channel_amax(w, -1), np.abs(w).max(axis=(0, 1)))


def test_table_json_round_trips_and_carries_provenance(graph, tmp_path):
    result = calibrate(graph, DataSpec(num_samples=32), output=tmp_path / "m.cache", progress=False)
    table = CalibrationTable.load(result.table_path)
    assert result.table_path == table_path_for(tmp_path / "m.cache")
    assert table.activations == result.table.activations
    prov = table.provenance
    assert prov["model"]["sha256"] == graph.sha256
    assert prov["data"]["num_samples"] == 32 and len(prov["data"]["fingerprint"]) == 64
    assert prov["versions"]["onnxruntime"] and prov["created"]


def test_statistics_of_another_model_are_refused(graph, tmp_path):
    stats = collect_statistics(graph, DataSpec(num_samples=8), progress=False)
    stats.model_sha256 = "0" * 64
    with pytest.raises(StatisticsError, match="another model"):
        calibrate_statistics(graph, stats)


def test_nan_activations_are_refused_unless_allowed(graph, calib_images, tmp_path):
    images = calib_images[:8].astype(np.float32) / 255
    images[0, 3, 3] = np.nan
    np.save(tmp_path / "nan.npy", images[:, None])
    stats = collect_statistics(graph, DataSpec(tmp_path / "nan.npy"), progress=False)
    with pytest.raises(StatisticsError, match="NaN/Inf activations.*allow_nonfinite"):
        calibrate_statistics(graph, stats)
    table = calibrate_statistics(graph, stats, policy=RangePolicy(allow_nonfinite=True))
    assert "NaN" in table.notes["image"]
    assert all(np.isfinite(a) and a > 0 for a in table.activations.values())


def test_all_zero_tensor_is_refused_unless_given_an_amax(graph, tmp_path):
    np.save(tmp_path / "zeros.npy", np.zeros((4, 1, 28, 28), np.float32))
    stats = collect_statistics(graph, DataSpec(tmp_path / "zeros.npy"), progress=False)
    with pytest.raises(StatisticsError, match="all zero.*zero_amax"):
        calibrate_statistics(graph, stats)
    table = calibrate_statistics(graph, stats, policy=RangePolicy(zero_amax=1.0))
    assert table.activations["image"] == 1.0 and "all zero" in table.notes["image"]


def test_every_method_gives_finite_positive_ranges_on_real_data(graph):
    stats = collect_statistics(graph, DataSpec(num_samples=64), progress=False)
    for method, params in (("max", {}), ("entropy", {}), ("percentile", {"p": 99.9}), ("mse", {})):
        table = calibrate_statistics(graph, stats, Method(method, params))
        amax = np.array(list(table.activations.values()))
        assert np.all(np.isfinite(amax)) and np.all(amax > 0), method
        maxes = np.array([stats.tensors[n].max_abs for n in table.activations])
        if method == "max":
            assert np.array_equal(amax, maxes)


def test_preprocess_mean_std_changes_the_input_range(graph):
    plain = collect_statistics(graph, DataSpec(num_samples=16), progress=False)
    shifted = collect_statistics(graph, DataSpec(num_samples=16, preprocess=Preprocess(mean=(0.5,), std=(0.1,))),
                                 progress=False)
    assert shifted.tensors["image"].max_abs > 4 * plain.tensors["image"].max_abs


def test_model_with_external_data_loads(tmp_path):
    model = onnx.load(defaults.MODEL)
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    assert len(load_model(tmp_path / "ext.onnx").weights) == 18


def test_qdq_scope_measures_only_compute_op_inputs(graph):
    chosen = select_tensors(graph, "qdq")
    consumers = {i for n in graph.model.graph.node if n.op_type in ("Conv", "Gemm") for i in n.input}
    assert chosen and set(chosen) <= consumers & set(graph.activations)
    assert len(chosen) < len(select_tensors(graph, "all")) == len(graph.activations)


def test_qdq_scope_gives_the_same_ranges_as_measuring_everything(graph, calib_images, tmp_path):
    # Up to float rounding only: without the extra outputs ONNX Runtime fuses Conv+Clip, and the
    # fused kernel may round a value differently in its last bit.
    data = DataSpec(first_images(calib_images, tmp_path), batch_size=16)
    everything = calibrate(graph, data, method="max", progress=False).table.activations
    qdq_only = calibrate(graph, data, method="max", collect=CollectOptions(tensors="qdq"),
                         progress=False).table.activations
    assert list(qdq_only) == select_tensors(graph, "qdq")
    for name, amax in qdq_only.items():
        assert amax == pytest.approx(everything[name], rel=1e-5), name


def test_unknown_tensor_scope_is_refused(graph):
    with pytest.raises(QuantlabError, match="unknown tensor scope"):
        select_tensors(graph, "some")


def test_embedded_model_is_the_one_the_reports_were_made_with():
    import hashlib

    assert hashlib.sha256(defaults.MODEL.read_bytes()).hexdigest() == defaults.MODEL_SHA256


def test_a_bad_method_parameter_is_refused_before_any_data_is_read(tmp_path):
    from quantlab.errors import CalibratorError

    with pytest.raises(CalibratorError, match="percentile"):
        calibrate(data=DataSpec(tmp_path / "not-there.npy"), method=Method("percentile", {"q": 1}), progress=False)
