"""Metric plugins: the registry, and each metric's numbers against a direct computation.

Real outputs come from the embedded Fashion-MNIST model and an INT8 (Q/DQ) copy of it on the
held-out images; detection and dense maps are checked on small constructed arrays whose
answers can be worked out by hand.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from quantlab import defaults
from quantlab.calibrate import CollectOptions, calibrate
from quantlab.data import read_idx
from quantlab.errors import QuantlabError
from quantlab.evaluation.metrics import detect_metric, list_metrics, make_metric, metric_class
from quantlab.evaluation.metrics.base import ExactSum
from quantlab.evaluation.metrics.detection import average_precision, decode, head_geometry, nms
from quantlab.graph import load_model
from quantlab.qdq import export_qdq
from quantlab.workload import DataSpec

BUILTINS = ("classification", "dense", "detection", "fidelity")
# The comparator compare and sweep used before the metrics: while it exists, the metrics must
# give its numbers (the committed reports were made with it).


@pytest.fixture(scope="module")
def logits():
    """FP32 and INT8 logits [300, 10] of the embedded model on held-out images, and the labels."""
    graph = load_model(defaults.MODEL)
    table = calibrate(graph, DataSpec(num_samples=64), method="percentile", collect=CollectOptions(tensors="qdq"),
                      progress=False).table
    model, _ = export_qdq(graph, table.activations, table.weights)
    images = (read_idx(defaults.HELDOUT_DATA)[:300].astype(np.float32) / 255)[:, None]
    labels = read_idx(defaults.HELDOUT_DATA.with_name("heldout-labels-idx1-ubyte.gz"))[:300].astype(np.int64)
    fp32 = ort.InferenceSession(str(defaults.MODEL)).run(None, {"image": images})[0]
    int8 = ort.InferenceSession(model.SerializeToString()).run(None, {"image": images})[0]
    assert not np.array_equal(fp32, int8)
    return fp32, int8, labels


def run(spec, ref, got, labels=None, batch=32, name="out", **params):
    """A metric's result over arrays fed in batches of ``batch``."""
    metric = make_metric(spec, [name], **params)
    for i in range(0, len(ref), batch):
        metric.update({name: ref[i:i + batch]}, {name: got[i:i + batch]},
                      None if labels is None else labels[i:i + batch])
    return metric.result()


def head(detections, images=1, anchors=200, classes=3, rng_seed=0):
    """A YOLOv8-style head [images, 4+C, A]: the given (image, anchor, cx, cy, w, h, class, score)
    detections; every other anchor has a small box and score 0.01 (below any threshold used)."""
    rng = np.random.default_rng(rng_seed)
    out = np.zeros((images, 4 + classes, anchors), dtype=np.float32)
    out[:, :2] = rng.uniform(0, 320, (images, 2, anchors))
    out[:, 2:4] = 4.0
    out[:, 4:] = 0.01
    for image, anchor, cx, cy, w, h, cls, score in detections:
        out[image, :4, anchor] = (cx, cy, w, h)
        out[image, 4 + cls, anchor] = score
    return out


THREE_BOXES = [(0, 0, 50, 50, 20, 20, 0, 0.9), (0, 1, 150, 150, 30, 30, 1, 0.8), (0, 2, 250, 60, 25, 40, 0, 0.7)]


# -- registry ----------------------------------------------------------------------------------

def test_builtins_are_installed_through_the_entry_point_group():
    infos = {info.name: info for info in list_metrics()}
    assert set(BUILTINS) <= set(infos)
    assert infos["detection"].target == "quantlab.evaluation.metrics.detection:DetectionMetric"
    assert all(metric_class(name).name == name for name in BUILTINS)


def test_unknown_metric_names_the_installed_ones():
    with pytest.raises(QuantlabError, match="unknown metric 'mAP'.*installed: classification, dense, detection, "
                                            "fidelity") as caught:
        metric_class("mAP")
    assert "`metric`" in str(caught.value) and caught.value.params == ("metric",)


def test_unknown_parameter_names_it_and_lists_the_accepted_ones():
    with pytest.raises(QuantlabError, match=r"no parameter conf \(in `metric_params`\); it takes head, layout, "
                                            "score_threshold, nms_iou") as caught:
        make_metric("detection", ["out"], conf=0.3)
    assert caught.value.params == ("metric_params",)


def test_parameter_of_a_metric_that_takes_none_says_so():
    with pytest.raises(QuantlabError, match="it takes no parameters"):
        make_metric("fidelity", ["out"], threshold=0.5)


def test_bad_parameter_value_says_which_parameter():
    with pytest.raises(QuantlabError, match=r"score_threshold='high' must be a number.*`metric_params`"):
        make_metric("detection", ["out"], score_threshold="high")
    with pytest.raises(QuantlabError, match="layout='NCHW' must be one of auto, channels_first, channels_last"):
        make_metric("detection", ["out"], layout="NCHW")


def test_parameters_given_as_strings_are_converted():
    metric = make_metric("detection", ["out"], score_threshold="0.3", max_detections="10")
    assert metric.params["score_threshold"] == 0.3 and metric.params["max_detections"] == 10


PLUGIN = '''
import numpy as np

class MeanAbsError:
    name = "mae"

    def __init__(self, outputs, scale=1.0):
        self.outputs, self.scale, self.total, self.count = list(outputs), float(scale), 0.0, 0

    def update(self, reference, candidate, labels):
        for name in self.outputs:
            self.total += float(np.abs(candidate[name] - reference[name]).sum())
            self.count += reference[name].size

    def merge(self, other):
        self.total += other.total
        self.count += other.count

    def result(self):
        mae = self.scale * self.total / self.count
        return {"metric": self.name, "score": -mae, "score_name": "-mae", "outputs": []}

not_a_metric = 3
'''


def test_metric_class_loads_a_class_from_a_python_file(tmp_path):
    (tmp_path / "mymetric.py").write_text(PLUGIN)
    metric = make_metric(f"{tmp_path / 'mymetric.py'}:MeanAbsError", ["y"], scale=2.0)
    metric.update({"y": np.zeros((2, 3))}, {"y": np.ones((2, 3))}, None)
    assert metric.result()["score"] == -2.0


def test_metric_class_loads_module_colon_class_from_the_path(tmp_path, monkeypatch):
    (tmp_path / "mymetric_mod.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert metric_class("mymetric_mod:MeanAbsError").name == "mae"


def test_a_missing_metric_file_is_named_as_the_metric_option(tmp_path):
    with pytest.raises(QuantlabError, match=r"no such file .*nothere\.py \(in `metric`") as caught:
        metric_class(f"{tmp_path / 'nothere.py'}:Metric")
    assert caught.value.params == ("metric",)


def test_something_that_is_not_a_metric_class_is_refused(tmp_path):
    (tmp_path / "mymetric.py").write_text(PLUGIN)
    with pytest.raises(QuantlabError, match="has no metric class named 'not_a_metric'; name a metric class it defines"):
        metric_class(f"{tmp_path / 'mymetric.py'}:not_a_metric")
    with pytest.raises(QuantlabError, match="is not a metric class .it lacks update, merge, result"):
        metric_class("math:sqrt")


def test_detect_metric_calls_the_embedded_model_a_classifier():
    model = onnx.load(defaults.MODEL)
    shapes = {o.name: tuple(d.dim_value or None for d in o.type.tensor_type.shape.dim)[1:] for o in model.graph.output}
    assert shapes == {"logits": (10,)}
    assert detect_metric(shapes) == "classification"


@pytest.mark.parametrize(("shapes", "expected"), [
    ({"output0": (84, 8400)}, "detection"),
    ({"output0": (8400, 84)}, "detection"),
    ({"output0": (84, None)}, "detection"),
    ({"output0": (116, 8400), "output1": (32, 160, 160)}, "detection"),  # YOLOv8-seg: head + prototypes
    ({"sigmoid_0.tmp_0": (1, None, None)}, "dense"),  # PP-OCR det, dynamic size
    ({"seg": (21, 64, 64)}, "dense"),
    ({"a": (10,), "b": (1000,)}, "classification"),
    ({"a": (10,), "b": (7,), "c": (1,)}, "fidelity"),  # one output is no class vector
    ({"emb": (4, 4)}, "fidelity"),  # too few anchors for a head
    ({"map": (1, 4, 4)}, "fidelity"),  # too small for a map
    ({"x": (None,)}, "fidelity"),
])
def test_detect_metric_picks_the_first_builtin_that_applies(shapes, expected):
    assert detect_metric(shapes) == expected


# -- fidelity ----------------------------------------------------------------------------------

def test_fidelity_matches_a_direct_computation_on_real_outputs(logits):
    fp32, int8, _ = logits
    result = run("fidelity", fp32, int8)
    out = result["outputs"][0]
    ref, got = fp32.astype(np.float64), int8.astype(np.float64)
    cosine = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert out["samples"] == 300 and out["cosine_similarity"] == pytest.approx(cosine.mean(), rel=1e-13)
    assert out["sqnr_db"] == pytest.approx(10 * math.log10((ref ** 2).sum() / ((got - ref) ** 2).sum()), rel=1e-13)
    assert out["max_abs_error"] == np.abs(got - ref).max()
    assert result["score"] == out["sqnr_db"] and result["score_name"] == "sqnr_db"



def test_fidelity_score_is_the_worst_outputs_sqnr():
    ref = {"a": np.ones((4, 3)), "b": np.ones((4, 3))}
    got = {"a": np.ones((4, 3)), "b": np.full((4, 3), 1.1)}
    metric = make_metric("fidelity", ["a", "b"])
    metric.update(ref, got, None)
    result = metric.result()
    assert [o["sqnr_db"] for o in result["outputs"]] == [math.inf, pytest.approx(20.0)]
    assert result["score"] == pytest.approx(20.0)


def test_sqnr_is_plus_inf_when_exact_and_minus_inf_for_a_zero_signal():
    assert run("fidelity", np.ones((3, 4)), np.ones((3, 4)))["score"] == math.inf
    assert run("fidelity", np.zeros((3, 4)), np.ones((3, 4)))["score"] == -math.inf


def test_a_nan_in_the_int8_output_is_not_hidden():
    got = np.ones((4, 3))
    got[2, 1] = np.nan
    out = run("fidelity", np.ones((4, 3)), got, batch=1)["outputs"][0]
    assert math.isnan(out["max_abs_error"]) and math.isnan(out["sqnr_db"])


# -- classification ----------------------------------------------------------------------------

def test_classification_matches_direct_top_k_on_real_outputs(logits):
    fp32, int8, labels = logits
    result = run("classification", fp32, int8, labels)
    out = result["outputs"][0]
    top5 = {tag: np.argsort(-x, axis=1, kind="stable")[:, :5] for tag, x in (("fp32", fp32), ("int8", int8))}
    assert out["top1_agreement"] == (fp32.argmax(1) == int8.argmax(1)).mean()
    assert out["fp32_top1"] == (fp32.argmax(1) == labels).mean()
    assert out["int8_top1"] == (int8.argmax(1) == labels).mean()
    assert out["fp32_top5"] == (top5["fp32"] == labels[:, None]).any(1).mean()
    assert out["int8_top5"] == (top5["int8"] == labels[:, None]).any(1).mean()
    assert out["labelled_samples"] == 300 and result["labelled_samples"] == 300
    assert result["score"] == out["int8_top1"] and result["score_name"] == "int8_top1"
    assert out["sqnr_db"] == run("fidelity", fp32, int8)["outputs"][0]["sqnr_db"]



def test_classification_without_labels_scores_top1_agreement(logits):
    fp32, int8, _ = logits
    result = run("classification", fp32, int8)
    assert result["score_name"] == "top1_agreement" and "fp32_top1" not in result["outputs"][0]
    assert result["score"] == (fp32.argmax(1) == int8.argmax(1)).mean()


def test_classification_refuses_an_output_that_is_not_class_scores():
    with pytest.raises(QuantlabError, match=r"needs \[N, C\] class scores.*'out' has shape \(2, 3, 4\)"):
        run("classification", np.ones((2, 3, 4)), np.ones((2, 3, 4)))


def test_classification_refuses_labels_of_another_length(logits):
    fp32, int8, labels = logits
    with pytest.raises(QuantlabError, match="one class id per sample; this batch has 32 samples and labels of shape"):
        make_metric("classification", ["out"]).update({"out": fp32[:32]}, {"out": int8[:32]}, labels[:31])


# -- detection ---------------------------------------------------------------------------------

def test_detection_of_identical_outputs_has_map_1():
    out = head(THREE_BOXES)
    result = run("detection", out, out.copy())
    det = result["outputs"][0]
    assert result["score"] == det["map50"] == 1.0 and result["score_name"] == "map50_vs_fp32"
    assert det["fp32_detections"] == det["int8_detections"] == 3 and det["recall"] == det["precision"] == 1.0
    assert det["ap50_per_class"] == {"0": 1.0, "1": 1.0}
    assert (det["layout"], det["num_classes"], det["anchors"]) == ("channels_first", 3, 200)
    assert det["boxes"]["sqnr_db"] == det["scores"]["sqnr_db"] == math.inf


def test_detection_a_dropped_box_lowers_recall_and_map():
    fp32 = head(THREE_BOXES)
    int8 = fp32.copy()
    int8[0, 4 + 0, 2] = 0.1  # the second class-0 box falls below score_threshold 0.25
    det = run("detection", fp32, int8)["outputs"][0]
    assert det["recall"] == pytest.approx(2 / 3) and det["precision"] == 1.0
    assert det["ap50_per_class"] == {"0": 0.5, "1": 1.0}  # class 0: one of two pseudo-GT boxes found
    assert det["map50"] == 0.75


def test_detection_a_moved_box_is_a_false_positive():
    fp32 = head(THREE_BOXES)
    int8 = fp32.copy()
    int8[0, 0, 1] += 25  # 30x30 box shifted by 25 px: IoU 5/55 < 0.5
    det = run("detection", fp32, int8)["outputs"][0]
    assert det["ap50_per_class"] == {"0": 1.0, "1": 0.0} and det["map50"] == 0.5
    assert det["precision"] == pytest.approx(2 / 3) and det["boxes"]["sqnr_db"] < math.inf


def test_score_row_noise_shows_in_score_fidelity_and_not_in_box_fidelity():
    rng = np.random.default_rng(1)
    fp32 = head(THREE_BOXES, images=4, anchors=400, classes=80)
    fp32[:, 4:] = rng.uniform(0, 0.2, fp32[:, 4:].shape)  # realistic background scores
    int8 = fp32.copy()
    int8[:, 4:] += rng.normal(0, 0.1, int8[:, 4:].shape).astype(np.float32)
    det = run("detection", fp32, int8, score_threshold=0.95)["outputs"][0]
    assert det["boxes"]["sqnr_db"] == math.inf and det["boxes"]["cosine_similarity"] == 1.0
    assert det["scores"]["sqnr_db"] < 5 and det["scores"]["cosine_similarity"] < 0.9
    # The whole output hides it, as in the issue (box coordinates dominate the power).
    assert det["cosine_similarity"] > 0.99 and det["sqnr_db"] > 25


def test_detection_reads_channels_last_heads_the_same():
    rng = np.random.default_rng(2)
    fp32 = head(THREE_BOXES, images=2)
    int8 = fp32 + rng.normal(0, 0.5, fp32.shape).astype(np.float32)
    first = run("detection", fp32, int8)["outputs"][0]
    last = run("detection", fp32.transpose(0, 2, 1), int8.transpose(0, 2, 1))["outputs"][0]
    explicit = run("detection", fp32.transpose(0, 2, 1), int8.transpose(0, 2, 1), layout="channels_last")["outputs"][0]
    assert last["layout"] == "channels_last" and last == explicit
    for key in ("map50", "recall", "precision", "ap50_per_class", "fp32_detections"):
        assert last[key] == first[key]
    for part in ("boxes", "scores"):
        assert last[part] == pytest.approx(first[part], rel=1e-12)


def test_nms_suppresses_overlapping_boxes_of_one_class_only():
    detections = [(0, 0, 100, 100, 40, 40, 0, 0.9), (0, 1, 104, 100, 40, 40, 0, 0.8),  # IoU 0.82: suppressed
                  (0, 2, 104, 100, 40, 40, 1, 0.7),  # same place, other class: kept
                  (0, 3, 130, 100, 40, 40, 0, 0.6)]  # IoU 0.2 with the first: kept
    boxes, scores, classes = decode(head(detections)[0].astype(np.float64), 0.25, 0.45, 300)
    assert scores.tolist() == pytest.approx([0.9, 0.7, 0.6]) and classes.tolist() == [0, 1, 0]
    assert boxes[0].tolist() == [80, 80, 120, 120]
    corners = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], dtype=np.float64)
    assert nms(corners, np.array([0.5, 0.9, 0.4]), 0.45).tolist() == [1, 2]


def test_max_detections_keeps_the_highest_scores():
    detections = [(0, i, 20 + 30 * i, 50, 10, 10, 0, 0.3 + 0.05 * i) for i in range(5)]
    _, scores, _ = decode(head(detections)[0].astype(np.float64), 0.25, 0.45, 2)
    assert scores.tolist() == pytest.approx([0.5, 0.45])


def test_average_precision_is_the_all_point_interpolated_area():
    # ranks: TP, FP, TP with 3 pseudo-GT boxes: precision 1, 1/2, 2/3; envelope at the TPs 1 and 2/3.
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 3) == pytest.approx(5 / 9)
    # A tie between a TP and an FP counts the FP first, whatever order they came in.
    tied = [average_precision(np.array(s), np.array(t), 1) for s, t in
            (([0.5, 0.5], [True, False]), ([0.5, 0.5], [False, True]))]
    assert tied == [0.5, 0.5]


def test_detection_without_fp32_detections_is_nan_with_a_note():
    quiet = head([])
    result = run("detection", quiet, quiet)
    assert math.isnan(result["score"]) and "no detection above score_threshold" in result["note"]


def test_detection_record_cap_is_an_error_naming_max_records():
    out = head(THREE_BOXES + [(1, *box[1:]) for box in THREE_BOXES], images=2)
    with pytest.raises(QuantlabError, match="6 pass max_records=5.*`metric_params`"):
        run("detection", out, out, max_records=5)


def test_detection_asks_for_the_head_when_no_output_looks_like_one():
    with pytest.raises(QuantlabError, match="none looks like one: name it with head=NAME"):
        run("detection", np.ones((2, 50, 50)), np.ones((2, 50, 50)))


@pytest.mark.parametrize(("shape", "geometry"), [
    ((84, 8400), ("channels_first", 80, 8400)),
    ((8400, 84), ("channels_last", 80, 8400)),
    ((None, 6), ("channels_last", 2, None)),
    ((84, 99), None),  # too few anchors
    ((1010, 8400), None),  # more than 1000 classes
    ((4, 8400), None),  # no class row
    ((100, 100), None),  # ambiguous
])
def test_head_geometry_takes_the_smaller_axis_as_4_plus_c(shape, geometry):
    assert head_geometry(shape) == geometry


# -- dense -------------------------------------------------------------------------------------

def test_dense_iou_and_agreement_match_a_direct_computation():
    rng = np.random.default_rng(3)
    fp32 = (read_idx(defaults.HELDOUT_DATA)[:64].astype(np.float32) / 255)[:, None]  # real images as maps
    int8 = np.clip(fp32 + rng.normal(0, 0.1, fp32.shape), 0, 1).astype(np.float32)
    out = run("dense", fp32, int8, batch=10, threshold=0.4)["outputs"][0]
    a, b = fp32[:, 0] > 0.4, int8[:, 0] > 0.4
    assert out["mask_iou"] == (a & b).sum() / (a | b).sum()
    assert out["pixel_agreement"] == (a == b).mean() and out["pixels"] == a.size
    assert out["foreground_pixels_fp32"] == a.sum() and out["foreground_pixels_int8"] == b.sum()
    assert out["sqnr_db"] == run("fidelity", fp32, int8)["outputs"][0]["sqnr_db"]


def test_dense_with_several_channels_averages_iou_over_the_classes_present():
    fp32 = np.zeros((1, 4, 8, 8), dtype=np.float32)
    fp32[0, 0] = 1  # class 0 everywhere ...
    fp32[0, 1, :4, :4] = 2  # ... but class 1 in the top-left 16 pixels
    int8 = fp32.copy()
    int8[0, 1, :4, :2] = 0  # INT8 keeps only 8 of them
    out = run("dense", fp32, int8)["outputs"][0]
    assert out["iou_per_class"] == {"0": 48 / 56, "1": 8 / 16}  # classes 2, 3 are absent from both
    assert out["mask_iou"] == pytest.approx((48 / 56 + 0.5) / 2) and out["pixel_agreement"] == 56 / 64


def test_dense_masks_empty_in_both_models_agree():
    out = run("dense", np.zeros((2, 1, 8, 8)), np.full((2, 1, 8, 8), 0.2))["outputs"][0]
    assert out["mask_iou"] == 1.0 and out["foreground_pixels_fp32"] == out["foreground_pixels_int8"] == 0


# -- streaming: merging and batching change nothing --------------------------------------------

def _cases(logits):
    fp32, int8, labels = logits
    rng = np.random.default_rng(4)
    boxes = [(image, anchor + 3 * image, cx + 7 * image, cy, w, h, cls, score)
             for image in range(6) for anchor, (_, _, cx, cy, w, h, cls, score) in enumerate(THREE_BOXES)]
    heads = head(boxes, images=6, classes=3)
    heads_int8 = heads + rng.normal(0, 0.3, heads.shape).astype(np.float32)
    maps = rng.uniform(0, 1, (12, 3, 16, 16)).astype(np.float32)
    return [("fidelity", fp32, int8, None), ("classification", fp32, int8, labels),
            ("detection", heads, heads_int8, None), ("dense", maps, maps + rng.normal(0, 0.2, maps.shape), None)]


@pytest.mark.parametrize("spec", ["fidelity", "classification", "detection", "dense"])
def test_two_halves_merged_equal_one_pass_bit_for_bit(logits, spec):
    _, ref, got, labels = next(c for c in _cases(logits) if c[0] == spec)
    half = len(ref) // 2
    whole = make_metric(spec, ["out"])
    first, second = make_metric(spec, ["out"]), make_metric(spec, ["out"])
    for metric, part in ((whole, slice(None)), (first, slice(0, half)), (second, slice(half, None))):
        metric.update({"out": ref[part]}, {"out": got[part]}, None if labels is None else labels[part])
    first.merge(second)
    assert json.dumps(first.result()) == json.dumps(whole.result())


@pytest.mark.parametrize("spec", ["fidelity", "classification", "detection", "dense"])
def test_batch_size_changes_no_bit_of_the_result(logits, spec):
    _, ref, got, labels = next(c for c in _cases(logits) if c[0] == spec)
    results = [json.dumps(run(spec, ref, got, labels, batch=batch)) for batch in (1, 5, len(ref))]
    assert results[0] == results[1] == results[2]


def test_merging_a_metric_with_other_parameters_is_refused():
    with pytest.raises(ValueError, match="not the same measurement"):
        make_metric("dense", ["out"]).merge(make_metric("dense", ["out"], threshold=0.3))


def test_exact_sum_does_not_depend_on_order_or_grouping():
    values = np.random.default_rng(5).standard_normal(1000) * 10.0 ** np.arange(-8, 8, 0.016)
    one, shuffled, parts = ExactSum(), ExactSum(), [ExactSum() for _ in range(3)]
    one.add(values)
    shuffled.add(values[np.random.default_rng(6).permutation(len(values))])
    for part, chunk in zip(parts, np.array_split(values, 3)):
        part.add(chunk)
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    assert one.value == shuffled.value == parts[0].value == math.fsum(values)
