"""Bad inputs and faults on the newer commands, as a new user meets them: labels that lie, NaN data and
metrics, plugins that raise, drivers killed outright, budgets finer than the data, and what each
command says to do next."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from quantlab import defaults
from quantlab.data import IdxDataset
from quantlab.errors import DataError, QuantlabError
from quantlab.evaluation import CompareOptions, compare
from quantlab.evaluation.engine import OrtRunner, evaluate
from quantlab.evaluation.heldout import HeldOut
from quantlab.evaluation.metrics import make_metric
from quantlab.graph import load_model
from quantlab.report import histogram_plot, short_labels
from quantlab.tune import tune
from quantlab.tune.options import Budget
from quantlab.tune.pipeline import resolution_note
from quantlab.workload import DataSpec

from conftest import children, run_cli

PLUGIN = '''
class Quiet:
    name = "quiet"
    def __init__(self, outputs):
        self.outputs = list(outputs)
    @classmethod
    def applies(cls, shapes):
        return True
    def update(self, reference, candidate, labels):
        pass
    def merge(self, other):
        pass
    def result(self):
        return {}

class NanMetric(Quiet):
    name = "nanmetric"
    def result(self):
        return {"score": float("nan"), "score_name": "agreement", "reference": float("nan"), "outputs": []}

class Exploding(Quiet):
    name = "exploding"
    def update(self, reference, candidate, labels):
        raise ZeroDivisionError("the plugin divided by zero")

class BrokenConstructor(Quiet):
    name = "broken"
    def __init__(self, outputs):
        raise ValueError("needs a config file")
'''


@pytest.fixture(scope="module")
def heldout_images():
    data = IdxDataset(defaults.HELDOUT_DATA)
    return data.images[:64], data.labels[:64]


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "plugins.py"
    path.write_text(PLUGIN)
    return path


# ------------------------------------------------------------------------------------------ labels and NaN


def test_labels_outside_the_models_classes_are_refused_before_any_work(tmp_path, heldout_images):
    images, _ = heldout_images
    np.savez(tmp_path / "wrong.npz", x=images, y=np.full(len(images), 99))
    started = time.perf_counter()
    result = run_cli("tune", "--eval-data", str(tmp_path / "wrong.npz"), "-o", str(tmp_path / "t.qdq.onnx"))
    assert result.returncode == 2, result.stderr
    assert "64 of 64 held-out labels lie outside the model's 10 classes (0..9; e.g. 99)" in result.stderr
    assert "collecting" not in result.stderr and time.perf_counter() - started < 30
    assert not list(tmp_path.glob("t.*"))


def test_a_label_outside_the_classes_is_refused_by_the_metric_for_data_without_a_label_array():
    metric = make_metric("classification", ["logits"])
    logits = np.eye(10, dtype=np.float32)[:4]
    with pytest.raises(QuantlabError, match="label 12 is not one of the 10 classes of output 'logits'"):
        metric.update({"logits": logits}, {"logits": logits}, np.array([0, 1, 12, 3]))


def test_nan_in_the_held_out_data_is_named_before_any_work(tmp_path, heldout_images):
    images, labels = heldout_images
    x = images.astype(np.float32) / 255
    x[3, 5, 5] = np.nan
    x[7, 0, 0] = np.inf
    np.savez(tmp_path / "nan.npz", x=x, y=labels)
    with pytest.raises(DataError, match=r"holds NaN/Inf: 2 values in 2 of 64 samples \(first: sample 3"):
        compare(None, _cache(tmp_path), DataSpec(str(tmp_path / "nan.npz")), progress=False)


def _cache(folder: Path) -> Path:
    run_cli("calibrate", "--num-samples", "64", "-q", "-o", str(folder / "m.cache"), check=True)
    return folder / "m.cache"


# ------------------------------------------------------------------------------------------ metric plugins


def test_a_metric_scoring_nan_stops_tune_with_the_reason_and_writes_nothing(tmp_path, plugin):
    result = run_cli("tune", "--eval-num-samples", "32", "--num-samples", "64", "--metric", f"{plugin}:NanMetric",
                     "-o", str(tmp_path / "t.qdq.onnx"))
    assert result.returncode == 2, result.stderr
    assert "scored NaN" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("t.*"))


def test_a_metric_whose_update_raises_is_named_with_the_samples(plugin):
    model = load_model(defaults.MODEL).model
    held = HeldOut(load_model(defaults.MODEL), DataSpec(num_samples=8))
    runner = OrtRunner(model)
    with pytest.raises(QuantlabError, match=r"metric '.*Exploding' failed in update\(\) on samples .*"
                                            r"ZeroDivisionError: the plugin divided by zero"):
        evaluate(runner, {"same": runner}, held.batches(), ["logits"], metric=f"{plugin}:Exploding")


def test_a_metric_whose_constructor_raises_is_not_blamed_on_parameters_never_given(plugin):
    with pytest.raises(QuantlabError) as error:
        make_metric(f"{plugin}:BrokenConstructor", ["logits"])
    assert "with no parameters given" in str(error.value) and "metric_params" not in str(error.value)
    assert error.value.params == ("metric",)


# ------------------------------------------------------------------------------------------ tune


def test_tune_starts_from_a_single_method_that_beats_auto_on_the_evaluation_data():
    # On these 300 held-out images auto's all-INT8 model loses 0.33 points and percentile 99.99's
    # none: starting from auto needed float layers for a budget of 0; starting from the best needs none.
    data = tune(heldout=DataSpec(num_samples=300, seed=2), budget=Budget(max_drop=0.0), progress=False)
    assert data["start"] == "percentile(p=99.99)"
    assert data["start_int8"]["score"] > data["all_int8"]["score"]
    assert data["fallback"] == [] and data["met"]


def test_a_budget_finer_than_one_sample_is_said_with_the_samples_that_would_resolve_it():
    note = resolution_note(64, 1.0, classes=10)
    assert "one sample weighs 1.56 points" in note and "100 samples would resolve it" in note
    assert resolution_note(1000, 1.0, classes=10) is None
    assert resolution_note(64, 1.0, classes=None) is None  # a metric that does not count samples


def test_tune_says_the_resolution_before_it_collects(tmp_path):
    result = run_cli("tune", "--eval-num-samples", "64", "--num-samples", "64", "--max-drop", "1",
                     "-o", str(tmp_path / "t.qdq.onnx"), check=True)
    first = result.stderr.lstrip().splitlines()[0]
    assert first.startswith("quantlab: note: with 64 evaluation samples one sample weighs 1.56 points"), first
    assert "100 samples would resolve it" in result.stdout


# ------------------------------------------------------------------------------------------ next steps


def test_compare_that_loses_accuracy_points_to_sweep_and_to_the_first_divergence(tmp_path):
    run_cli("calibrate", "-q", cwd=tmp_path, check=True)
    out = run_cli("compare", "--tensor-samples", "0", cwd=tmp_path, check=True).stdout
    assert "next: quantlab sweep --pick best --report reports/sweep" in out
    assert "next: quantlab compare --first-divergence" in out


def test_sweep_shows_the_fp32_reference_and_how_to_write_the_winner(tmp_path):
    out = run_cli("sweep", "--num-samples", "64", "--eval-num-samples", "100", cwd=tmp_path, check=True).stdout
    assert "FP32 (the reference)     top-1 " in out
    assert "next: quantlab sweep --num-samples 64" not in out  # data flags are only the user's own
    assert "--report reports/sweep --pick best   # writes" in out


def test_calibrate_says_when_it_replaced_another_methods_default_cache(tmp_path):
    run_cli("calibrate", "--num-samples", "64", "-q", cwd=tmp_path, check=True)
    out = run_cli("calibrate", "--num-samples", "64", "--method", "max", cwd=tmp_path, check=True).stdout
    assert "replaced    : fashion_mnist_cnn.cache held entropy ranges; it now holds max's" in out
    again = run_cli("calibrate", "--num-samples", "64", "--method", "max", cwd=tmp_path, check=True).stdout
    assert "replaced" not in again and "next        : quantlab compare" in again


# ------------------------------------------------------------------------------------------ plots


def test_threshold_histograms_have_one_readable_legend_for_all_panels():
    from quantlab import collect_statistics

    stats = collect_statistics(None, DataSpec(num_samples=32), progress=False)
    names = list(stats.tensors)[:6]
    methods = {"entropy": 1.0, "mse": 2.0, "percentile(p=99.99)": 3.0, "max": 4.0}
    fig = histogram_plot({n: stats.tensors[n] for n in names}, {n: methods for n in names})
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(methods)
    assert min(t.get_fontsize() for t in fig.legends[0].get_texts()) >= 9


def test_layer_labels_of_plots_are_unique():
    layers = ["/features/features.3/block/block.0/Conv", "/features/features.4/block/block.0/Conv", "/classifier/Gemm"]
    labels = short_labels(layers)
    assert len(set(labels)) == 3 and labels[2] == "Gemm"


# ------------------------------------------------------------------------------------------ worker processes


def test_workers_and_the_resource_tracker_die_when_the_driver_is_killed(tmp_path):
    if not Path("/proc").is_dir():
        pytest.skip("reads /proc to find the worker processes (Linux)")
    source = tmp_path / "slow.py"
    source.write_text("import time\nimport numpy as np\nfrom quantlab.data import IdxDataset\nfrom quantlab import "
                      "defaults\nclass Slow:\n    def __init__(self, image):\n        self.image = image\n"
                      "    def __array__(self, dtype=None, copy=None):\n        time.sleep(0.05)\n"
                      "        return self.image\ndef samples():\n    return [Slow(i) for i in "
                      "IdxDataset(defaults.CALIBRATION_DATA).images]\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    driver = subprocess.Popen([sys.executable, "-m", "quantlab", "collect", "--data", "slow:samples", "-o",
                               str(tmp_path / "s.npz"), "--executor", "processes", "--workers", "2", "-q"],
                              env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    spawned = []
    while time.monotonic() < deadline and driver.poll() is None:
        spawned = children(driver.pid)
        if sum("spawn_main" in c for _, c in spawned) == 2 and any("resource_tracker" in c for _, c in spawned):
            break
        time.sleep(0.2)
    assert sum("spawn_main" in c for _, c in spawned) == 2, spawned
    time.sleep(1.0)
    driver.send_signal(signal.SIGKILL)  # what the OOM killer does: no handler runs
    driver.wait(timeout=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid, _ in spawned):
        time.sleep(0.1)
    alive = [(pid, c[:80]) for pid, c in spawned if Path(f"/proc/{pid}").exists()
             and "(Z)" not in Path(f"/proc/{pid}/stat").read_text()[:64]]
    assert alive == []


def test_json_of_a_nan_score_is_strict_json(tmp_path, plugin):
    data = compare(None, _cache(tmp_path), DataSpec(num_samples=16), progress=False,
                   options=CompareOptions(tensor_samples=0), report=tmp_path / "report",
                   evaluation=__import__("quantlab.evaluation", fromlist=["EvalOptions"]).EvalOptions(
                       metric=f"{plugin}:NanMetric")).data
    assert math.isnan(data["metric"]["score"])

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    json.loads((tmp_path / "report" / "report.json").read_text(), parse_constant=refuse)


@pytest.mark.slow
def test_auto_on_many_samples_keeps_its_heap_from_fragmenting(tmp_path):
    """auto judging 512 samples of the embedded model peaked at 3.2 GB: glibc's adaptive mmap threshold
    (memory freed but never returned) and a refinement that kept every INT8 value; now about 0.5 GB alone
    (1.0 GB was seen once inside the whole suite, a fresh clone: the bound is half the old peak)."""
    # VmHWM: this process image's own peak. ru_maxrss would carry over exec the pages of the pytest process
    # the child was spawned from (vfork), which grows with the tests before this one (1.8 GB seen).
    probe = ("import sys\nfrom quantlab.cli import run\ncode = run(sys.argv[1:])\n"
             "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
             "print('PEAK_KB', hwm, file=sys.stderr)\nsys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe, "calibrate", "--method", "auto", "--param", "samples=512",
                           "-q", "-o", str(tmp_path / "a.cache")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    peak_mb = int(done.stderr.split("PEAK_KB")[1].split()[0]) / 1024
    assert peak_mb < 1600, f"auto peaked at {peak_mb:.0f} MB"
