"""The engine round trip on the embedded model: inputs out in Polygraphy's format, a run's outputs back
in, held against FP32 and the emulation; the engine's layers against the plan; the first divergence.

The "engine" here is Polygraphy's own ONNX Runtime runner (TensorRT cannot be installed on these
machines): its files are real Polygraphy files, and where it runs the Q/DQ model as written it
computes what quantlab's emulation computes, which is what the exactness tests hold.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from quantlab.errors import DataError, QuantlabError
from quantlab.evaluation import CompareOptions, compare
from quantlab.evaluation.engine import OrtRunner
from quantlab.evaluation.roundtrip import EngineFiles, export_inputs
from quantlab.graph import load_model
from quantlab.qdq.plan import precision_plan
from quantlab.roundtrip.inspect import inspect
from quantlab.roundtrip.layers import read_layer_info
from quantlab.roundtrip.outputs import read_engine_outputs
from quantlab.roundtrip.polygraphy import read_inputs, write_inputs
from quantlab.workload import DataSpec

from conftest import run_cli

SAMPLES = 48


def polygraphy():
    try:
        import polygraphy.json
    except ImportError:
        pytest.skip("Polygraphy is not installed: pip install -e '.[test]' installs it")
    import polygraphy.backend.onnxrt
    import polygraphy.comparator
    return polygraphy


def faithful_session(path):
    """An ONNX Runtime session that runs a Q/DQ model as written (quantlab's TensorRT arithmetic)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def polygraphy_run(session, inputs, output):
    """``polygraphy run --onnxrt --load-inputs inputs --save-outputs output``, through its Python API
    so that the session runs the Q/DQ model as written."""
    pg = polygraphy()
    feeds = pg.json.load_json(str(inputs))
    results = pg.comparator.Comparator.run([pg.backend.onnxrt.OnnxrtRunner(session)], data_loader=feeds)
    results.save(str(output))
    return output


@pytest.fixture(scope="module")
def loop(tmp_path_factory, default_model):
    """The embedded model calibrated, its Q/DQ model with an fp32 remainder, the held-out inputs
    exported, and a Polygraphy run of that Q/DQ model on them."""
    polygraphy()
    where = tmp_path_factory.mktemp("roundtrip")
    run_cli("calibrate", "-q", cwd=where, check=True)
    run_cli("export-qdq", "--cache", "fashion_mnist_cnn.quantlab.json", "--high-precision", "fp32", "-o",
            "q32.qdq.onnx", cwd=where, check=True)
    exported = export_inputs(None, DataSpec(num_samples=SAMPLES), where / "inputs.json", batch_size=4,
                             progress=False)
    engine = polygraphy_run(faithful_session(where / "q32.qdq.onnx"), where / "inputs.json", where / "engine.json")
    # the FP32 model as 'polygraphy run model.onnx --onnxrt' runs it: ONNX Runtime's default session
    fp32 = polygraphy_run(polygraphy().backend.onnxrt.SessionFromOnnx(str(default_model)), where / "inputs.json",
                          where / "fp32.json")
    return {"where": where, "exported": exported, "engine": engine, "fp32": fp32, "qdq": where / "q32.qdq.onnx"}


def run_compare(loop, **engine):
    return compare(None, loop["qdq"], DataSpec(num_samples=SAMPLES), options=CompareOptions(tensor_samples=0),
                   engine=EngineFiles(**engine), progress=False).data


# ------------------------------------------------------------------------------------------ files


def test_exported_inputs_load_bit_identical_in_polygraphys_own_loader(loop):
    pg = polygraphy()
    feeds = pg.json.load_json(str(loop["where"] / "inputs.json"))
    ours = read_inputs(loop["where"] / "inputs.json")
    assert len(feeds) == SAMPLES // 4 == loop["exported"].iterations
    for theirs, mine in zip(feeds, ours):
        assert theirs["image"].dtype == np.float32 and np.array_equal(theirs["image"], mine["image"])


def test_inputs_saved_by_polygraphy_read_back_bit_identical(tmp_path):
    pg = polygraphy()
    feeds = [{"x": np.random.default_rng(k).standard_normal((2, 3)).astype(np.float32)} for k in range(3)]
    pg.json.save_json(feeds, str(tmp_path / "inputs.json"))
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(read_inputs(tmp_path / "inputs.json"), feeds))


def test_outputs_saved_by_polygraphys_runner_read_bit_identical(loop):
    pg = polygraphy()
    results = pg.comparator.RunResults.load(str(loop["engine"]))
    (runner, iterations), = list(results.items())
    theirs = np.concatenate([it["logits"] for it in iterations])
    ours = read_engine_outputs(loop["engine"])
    assert ours.runner == runner and ours.iterations == len(iterations)
    assert np.array_equal(ours.arrays["logits"], theirs)


def test_the_trtexec_binary_holds_every_sample_in_c_order(loop):
    raw = loop["exported"].raw["image"]
    whole = np.concatenate([f["image"] for f in read_inputs(loop["where"] / "inputs.json")])
    assert raw.name == "inputs.image.bin" and raw.read_bytes() == whole.astype(np.float32).tobytes()


def test_written_inputs_are_atomic_json_that_polygraphy_reads(tmp_path):
    pg = polygraphy()
    write_inputs(tmp_path / "in.json", [{"a": np.arange(6, dtype=np.int64).reshape(2, 3)}])
    assert np.array_equal(pg.json.load_json(str(tmp_path / "in.json"))[0]["a"], np.arange(6).reshape(2, 3))
    assert [p.name for p in tmp_path.iterdir()] == ["in.json"]


# ------------------------------------------------------------------------------------------ engine outputs


def test_emulation_agrees_exactly_with_an_engine_that_runs_the_same_arithmetic(loop):
    data = run_compare(loop, outputs=loop["engine"])
    agreement = data["engine"]["emulation_vs_engine"]["outputs"][0]
    assert agreement["sqnr_db"] == float("inf") and agreement["max_abs_error"] == 0.0
    engine = data["engine"]["vs_fp32"]["outputs"][0]
    assert engine["sqnr_db"] == pytest.approx(data["outputs"][0]["sqnr_db"], abs=0)


def test_with_fp32_outputs_as_the_engine_the_agreement_is_compares_fp32_vs_int8(loop):
    data = run_compare(loop, outputs=loop["fp32"])
    agreement = data["engine"]["emulation_vs_engine"]["outputs"][0]
    assert agreement["sqnr_db"] == data["outputs"][0]["sqnr_db"]
    assert agreement["max_abs_error"] == data["outputs"][0]["max_abs_error"]
    assert data["engine"]["vs_fp32"]["outputs"][0]["top1_agreement"] == 1.0


def test_the_exported_inputs_file_is_data_that_compare_reads_as_the_same_samples(loop):
    from_file = compare(None, loop["qdq"], DataSpec(str(loop["where"] / "inputs.json")),
                        options=CompareOptions(tensor_samples=0), progress=False).data
    from_source = run_compare(loop)
    assert from_file["data"]["samples"] == SAMPLES
    assert from_file["outputs"][0]["sqnr_db"] == from_source["outputs"][0]["sqnr_db"]
    assert from_file["data"]["fingerprint"] == from_source["data"]["fingerprint"]


def test_outputs_of_another_model_are_refused_by_name(loop, tmp_path):
    pg = polygraphy()
    results = pg.comparator.RunResults.load(str(loop["engine"]))
    (runner, iterations), = list(results.items())
    renamed = [{"probabilities": it["logits"]} for it in iterations]
    from quantlab.roundtrip.polygraphy import encode_array
    doc = {"lst": [[runner, [{"outputs": {k: encode_array(v) for k, v in it.items()},
                               "polygraphy_class": "IterationResult"} for it in renamed]]],
           "polygraphy_class": "RunResults"}
    (tmp_path / "other.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="none match"):
        run_compare(loop, outputs=tmp_path / "other.json")


def test_a_different_sample_count_is_refused_with_both_counts(loop):
    with pytest.raises(DataError, match=f"{SAMPLES} samples .* selection 40"):
        compare(None, loop["qdq"], DataSpec(num_samples=40), options=CompareOptions(tensor_samples=0),
                engine=EngineFiles(loop["engine"]), progress=False)


def test_nan_in_the_engines_outputs_is_named_before_any_metric(loop, tmp_path):
    pg = polygraphy()
    results = pg.comparator.RunResults.load(str(loop["engine"]))
    (runner, iterations), = list(results.items())
    first = iterations[0]["logits"].copy()
    first[0, 3] = np.nan
    iterations[0]["logits"] = first
    results.save(str(tmp_path / "nan.json"))
    with pytest.raises(DataError, match="NaN/Inf \\(logits: 1 values\\)"):
        run_compare(loop, outputs=tmp_path / "nan.json")


def test_a_file_of_several_runners_asks_which_and_a_prefix_picks_one(loop, tmp_path):
    pg = polygraphy()
    results = pg.comparator.RunResults.load(str(loop["engine"]))
    (runner, iterations), = list(results.items())
    results.append(("trt-runner-N0-late", iterations))
    results.save(str(tmp_path / "two.json"))
    with pytest.raises(DataError, match="2 runners .*--runner"):
        read_engine_outputs(tmp_path / "two.json")
    assert read_engine_outputs(tmp_path / "two.json", runner="trt-runner").runner == "trt-runner-N0-late"


def test_a_qdq_file_of_another_model_is_refused(loop, tmp_path):
    model = onnx.load(loop["qdq"])
    model.graph.output[0].name = "scores"
    model.graph.node[-1].output[0] = "scores"
    onnx.save(model, tmp_path / "other.qdq.onnx")
    with pytest.raises(QuantlabError, match="not a Q/DQ model of this FP32 model"):
        compare(None, tmp_path / "other.qdq.onnx", DataSpec(num_samples=8), progress=False)


# ------------------------------------------------------------------------------------------ layer info


def engine_of(model: onnx.ModelProto, ran_fp16: str) -> dict:
    """A hand-made layer info (TensorRT 10's detailed form) of ``model``: one layer per expected fusion
    group of its precision plan, in the plan's precision, except ``ran_fp16``, which ran in fp16. No
    TensorRT built it: it exercises the mapping, not a claim about an engine."""
    names = {"int8": "Int8", "fp16": "Half", "fp32": "Float"}
    layers = []
    for members in precision_plan(model).groups().values():
        lead = members[0]
        kind = "Half" if lead.node == ran_fp16 else names[lead.precision]
        layers.append({"Name": " + ".join(m.node for m in members), "LayerType": "CaskConvolution",
                       "Inputs": [{"Name": "in", "Format/Datatype": kind}],
                       "Outputs": [{"Name": "out", "Format/Datatype": kind}],
                       "Metadata": "\x1e".join(f"[ONNX Layer: {m.node}]" for m in members)})
    return {"Layers": layers, "Bindings": ["image", "logits"]}


def test_inspect_names_the_one_conv_that_ran_outside_the_plan(loop, tmp_path):
    model = load_model(loop["qdq"]).model
    conv = "/features/features.3/block/block.0/Conv"
    (tmp_path / "layers.json").write_text(json.dumps(engine_of(model, conv)))
    result = inspect(read_layer_info(tmp_path / "layers.json"), model)
    differs = [n.node for n in result.nodes if n.differs]
    assert differs == [conv]
    assert sum(1 for n in result.nodes if n.engine == "int8") == sum(1 for n in result.nodes if n.planned == "int8") - 1


def test_layer_info_of_another_model_says_how_few_names_match(loop, real_layer_info):
    result = inspect(read_layer_info(real_layer_info), load_model(loop["qdq"]).model)
    assert any(note.startswith("only 0 of ") for note in result.notes)


@pytest.fixture
def real_layer_info(trt_artifacts):
    return trt_artifacts / "NVIDIA__TensorRT__mobilenet.qat.onnx.engine.graph.json"


# ------------------------------------------------------------------------------------------ first divergence


def test_asking_for_every_tensor_leaves_the_qdq_models_outputs_bit_identical(loop):
    model = load_model(loop["qdq"]).model
    inputs = read_inputs(loop["where"] / "inputs.json")[0]
    tensors = [o for node in model.graph.node for o in node.output if o and o != "logits"]
    plain = OrtRunner(model).run(inputs)["logits"]
    marked = OrtRunner(model, tensors).run(inputs)
    assert len(marked) == len(tensors) + 1 and np.array_equal(plain, marked["logits"])


def test_first_divergence_lists_tensors_below_the_threshold_in_graph_order(loop):
    data = compare(None, loop["qdq"], DataSpec(num_samples=16), options=CompareOptions(first_divergence=25.0),
                   progress=False).data
    found = data["first_divergence"]
    order = [o for node in load_model(loop["qdq"]).model.graph.node for o in node.output]
    below = [r["tensor"] for r in found["below_threshold"]]
    assert below and all(r["sqnr_db"] < 25.0 for r in found["below_threshold"])
    assert below == sorted(below, key=order.index)
    drops = [r["drop_db"] for r in found["largest_drops"]]
    assert drops == sorted(drops, reverse=True)


def test_first_divergence_without_tensor_samples_is_refused(loop):
    with pytest.raises(QuantlabError, match="tensor-samples"):
        compare(None, loop["qdq"], DataSpec(num_samples=8),
                options=CompareOptions(tensor_samples=0, first_divergence=20.0), progress=False)


# ------------------------------------------------------------------------------------------ the CLI


def test_export_inputs_cli_says_what_it_wrote_and_what_to_run_next(tmp_path):
    result = run_cli("export-inputs", "--num-samples", "8", "-o", "in.json", cwd=tmp_path, check=True)
    assert "wrote in.json: 8 samples in 8 iterations of 1" in result.stdout
    assert "--loadInputs='image':in.image.bin --shapes='image':8x1x28x28" in result.stdout
    assert "quantlab compare --qdq fashion_mnist_cnn.qdq.onnx --num-samples 8 --engine-outputs engine.json" \
        in result.stdout


def test_compare_cli_reports_the_engine_and_its_layers(loop, tmp_path):
    model = load_model(loop["qdq"]).model
    (tmp_path / "layers.json").write_text(json.dumps(engine_of(model, "")))
    result = run_cli("compare", "--qdq", str(loop["qdq"]), "--num-samples", str(SAMPLES), "--tensor-samples", "0",
                     "--engine-outputs", str(loop["engine"]), "--layer-info", str(tmp_path / "layers.json"),
                     "--report", str(tmp_path / "report"), check=True)
    assert "emulation vs engine SQNR inf dB, max abs err 0" in result.stdout
    assert "0 differ from the plan" in result.stdout
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## The real engine" in text and "## What the engine ran" in text


def test_engine_inspect_cli_prints_the_headline_of_a_real_file(real_layer_info):
    result = run_cli("engine", "inspect", str(real_layer_info), "--limit", "2", check=True)
    assert "73 engine layers (detailed layer info); int8 53, fp16 15, fp32 5; 70 touch INT8" in result.stdout
    data = json.loads(run_cli("engine", "inspect", str(real_layer_info), "--json", check=True).stdout)
    assert data["precision_counts"] == {"int8": 53, "fp16": 15, "fp32": 5}
