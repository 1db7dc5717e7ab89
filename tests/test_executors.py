"""Executors: collection and sweep on local processes and on a Ray cluster give the bytes and numbers
of one process, survive a killed worker, and stop on a worker's data error with its message.

Everything here runs for real: spawned worker processes, a two-node Ray cluster on this machine
(``ray.cluster_utils.Cluster``, one CPU per node, shared by the module's Ray tests), the CLI in a
subprocess. Data sets that misbehave (a sample that kills its worker once, a sample that is not a
number, samples that are slow) are small Python files written per test and named as
``path/file.py:samples``, as a user would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from quantlab import defaults
from quantlab.calibrate import CalibrationOutput, CollectShard, calibrate, collect_shard, collect_statistics
from quantlab.errors import DataError, QuantlabError
from quantlab.evaluation.sweep import sweep
from quantlab.executors import get_executor, plan_shards, report_progress
from quantlab.executors.shipping import ModelRef
from quantlab.graph import load_model
from quantlab.preprocess import select_indices
from quantlab.statistics import Statistics
from quantlab.workload import DataSpec, DataTask

from conftest import children, run_cli

pytestmark = pytest.mark.slow

# Small enough to keep the module fast on 2 cores, large enough for 8 shards of 2 batches on 2 workers.
CALIB = dict(num_samples=256, batch_size=16)
HELDOUT = dict(num_samples=160, batch_size=16)
METHODS = (("max", {}), ("percentile", {"p": 99.99}))
# A selected calibration sample in the 5th of the 8 shards: where the misbehaving data sets misbehave.
TARGET = int(select_indices(512, CALIB["num_samples"], 0)[150])
BAD_SAMPLE = f"        out.append(np.array(['not a number']) if i == {TARGET} else image)"


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _import_ray():
    try:
        import ray
    except ImportError:
        if under_ci():
            pytest.fail("Ray is not installed; under CI the Ray tests must run (pip install -e '.[test,ray]')")
        pytest.skip("Ray is not installed (pip install 'quantlab[ray]')")
    return ray


def _slow_identity(task: tuple[int, float]) -> int:
    index, delay = task
    time.sleep(delay)
    report_progress(10)
    return index


def _meet(task: tuple[str, int]) -> int:
    """Wait until every task of the group is running (each drops a file, then waits for all of them):
    on a cluster of one CPU per node, the group can only finish if its tasks run on different nodes."""
    folder, index = Path(task[0]), task[1]
    (folder / f"arrived-{index}").touch()
    deadline = time.monotonic() + 60
    while len(list(folder.glob("arrived-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return index


def _write_dataset(folder: Path, name: str, body: str) -> str:
    """A ``file.py:samples`` data source: the embedded calibration images, with ``body`` deciding
    what sample ``i`` is (``image`` is the real one)."""
    path = folder / f"{name}.py"
    path.write_text(
        "import os, time\n"
        "import numpy as np\n"
        "from quantlab import defaults\n"
        "from quantlab.data import IdxDataset\n\n"
        "class Sample:\n"
        "    '''A sample that becomes its image when read as an array (np.asarray calls this).'''\n"
        "    def __init__(self, image, marker=None, delay=0.0):\n"
        "        self.image, self.marker, self.delay = image, marker, delay\n"
        "    def __array__(self, dtype=None, copy=None):\n"
        "        if self.marker is not None:\n"
        "            try:\n"
        "                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))\n"
        "                os._exit(1)  # the first worker to read this sample dies on it, once\n"
        "            except FileExistsError:\n"
        "                pass\n"
        "        time.sleep(self.delay)\n"
        "        return self.image\n\n"
        "def samples():\n"
        "    images = IdxDataset(defaults.CALIBRATION_DATA).images\n"
        "    out = []\n"
        "    for i, image in enumerate(images):\n"
        f"{body}\n"
        "    return out\n")
    return f"{path}:samples"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """What one process writes: the statistics file and the cache of the embedded model."""
    folder = tmp_path_factory.mktemp("local")
    calibrate(data=DataSpec(**CALIB), method="entropy",
              output=CalibrationOutput(folder / "m.cache", stats=folder / "m.npz"),
              progress=False)
    return {"stats": (folder / "m.npz").read_bytes(), "cache": (folder / "m.cache").read_bytes()}


@pytest.fixture(scope="module")
def processes():
    with get_executor("processes", workers=2) as executor:
        yield executor


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray cluster of two nodes on this machine, one CPU each, joined by this process."""
    ray = _import_ray()
    from ray.cluster_utils import Cluster

    # The nodes' workers import this module's task functions, as a user's nodes import the user's code.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *([saved] if saved else [])])
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    ray.init(address=cluster.address, log_to_driver=False, logging_level="error")
    try:
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


def _written(executor, folder: Path) -> dict:
    calibrate(data=DataSpec(**CALIB), method="entropy",
              output=CalibrationOutput(folder / "m.cache", stats=folder / "m.npz"),
              progress=False, executor=executor)
    return {"stats": (folder / "m.npz").read_bytes(), "cache": (folder / "m.cache").read_bytes()}


def _sweep_numbers(executor) -> list:
    data = sweep(calib=DataSpec(**CALIB), heldout=DataSpec(**HELDOUT), methods=METHODS, progress=False,
                 executor=executor)
    return data["results"]


# --------------------------------------------------------------------------- shards


def test_shards_are_whole_batches_in_order_covering_every_sample():
    assert plan_shards(100, 16, 4) == [(0, 32), (32, 64), (64, 96), (96, 100)]  # 7 batches: 2, 2, 2, 1
    assert plan_shards(10, 16, 8) == [(0, 10)]  # never more shards than batches


def test_any_split_of_the_samples_into_shards_merges_to_the_statistics_bytes_of_one_run():
    """The check that sharding is safe at all: odd boundaries, not even on batch edges, merge exactly
    (power-of-two histograms, the sample fingerprint) to the bytes of one collection."""
    graph = load_model(defaults.MODEL)
    task = DataTask(ModelRef.of(graph), DataSpec(defaults.CALIBRATION_DATA, num_samples=200, batch_size=16))
    whole = collect_statistics(graph, task.data, progress=False).to_bytes()
    merged = None
    for start, stop in ((0, 37), (37, 38), (38, 200)):
        part = collect_shard(CollectShard(task.model, task.data, start, stop, 16, 2048, None, "all", None, None))
        merged = part if merged is None else (merged.merge(part) or merged)
    assert isinstance(merged, Statistics)
    assert merged.to_bytes() == whole


# --------------------------------------------------------------------------- the interface


def test_map_returns_results_in_task_order_whatever_order_they_finish(processes):
    units = []
    tasks = [(0, 0.8), (1, 0.0), (2, 0.4), (3, 0.0)]
    assert processes.map(_slow_identity, tasks, progress=units.append) == [0, 1, 2, 3]
    assert sum(units) == 40  # every task's reported progress, once


def test_flags_that_do_not_apply_to_an_executor_are_refused():
    with pytest.raises(QuantlabError, match="workers"):
        get_executor("local", workers=2)
    with pytest.raises(QuantlabError, match="address"):
        get_executor("processes", address="auto")
    with pytest.raises(QuantlabError, match="unknown `executor`"):
        get_executor("threads")


def test_ray_is_imported_only_when_the_ray_executor_is_asked_for(tmp_path):
    probe = ("import sys; from quantlab.cli import run; "
             f"code = run(['collect', '--num-samples', '32', '-q', '-o', {str(tmp_path / 's.npz')!r}, "
             "'--executor', 'processes', '--workers', '1']); print(code, 'ray' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["0", "False"], proc.stderr


def test_a_data_set_object_that_cannot_travel_is_refused_with_what_to_do_instead(processes):
    class InMemory:  # a local class: pickle cannot name it
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return np.zeros((28, 28), "uint8"), None

    with pytest.raises(QuantlabError, match="path or module:function"):
        collect_statistics(None, DataSpec(InMemory()), progress=False, executor=processes)


# --------------------------------------------------------------------------- identical results


def test_processes_write_the_statistics_file_and_cache_of_one_process_byte_for_byte(processes, reference, tmp_path):
    assert _written(processes, tmp_path) == reference
    assert "2 worker processes" in processes.ran()


def test_the_ray_executor_runs_tasks_on_every_node_of_the_cluster(ray_cluster, tmp_path):
    with get_executor("ray", address=ray_cluster) as executor:
        assert executor.describe().startswith(f"ray cluster at {ray_cluster}: 2 nodes, 2 CPUs")
        assert executor.map(_meet, [(str(tmp_path), 0), (str(tmp_path), 1)]) == [0, 1]
        assert executor.ran().endswith("on 2 nodes")


def test_a_two_node_ray_cluster_writes_the_statistics_file_and_cache_of_one_process(ray_cluster, reference, tmp_path):
    with get_executor("ray", address=ray_cluster) as executor:
        assert _written(executor, tmp_path) == reference


def test_sweep_ranks_with_the_same_numbers_on_processes_and_ray_as_in_one_process(processes, ray_cluster):
    local = _sweep_numbers("local")
    assert _sweep_numbers(processes) == local
    with get_executor("ray", address=ray_cluster) as executor:
        assert _sweep_numbers(executor) == local


# --------------------------------------------------------------------------- faults


def test_a_worker_process_killed_mid_task_is_replaced_and_the_bytes_stay_the_same(reference, tmp_path):
    source = _write_dataset(tmp_path, "killer", f"        out.append(Sample(image, {str(tmp_path / 'marker')!r}) "
                                                f"if i == {TARGET} else image)")
    with get_executor("processes", workers=2) as executor:
        stats = collect_statistics(None, DataSpec(source, **CALIB), progress=False, executor=executor)
        assert "run again after a worker died" in executor.ran()
    assert (tmp_path / "marker").exists()  # the worker really died
    assert stats.to_bytes() == reference["stats"]


def test_a_ray_task_whose_worker_dies_is_retried_and_the_bytes_stay_the_same(ray_cluster, reference, tmp_path):
    source = _write_dataset(tmp_path, "killer", f"        out.append(Sample(image, {str(tmp_path / 'marker')!r}) "
                                                f"if i == {TARGET} else image)")
    with get_executor("ray", address=ray_cluster) as executor:
        stats = collect_statistics(None, DataSpec(source, **CALIB), progress=False, executor=executor)
    assert (tmp_path / "marker").exists()
    assert stats.to_bytes() == reference["stats"]


@pytest.mark.parametrize("where", ["processes", "ray"])
def test_a_data_error_in_a_worker_stops_the_run_with_the_workers_message(where, processes, tmp_path, request):
    source = _write_dataset(tmp_path, "bad", BAD_SAMPLE)
    with pytest.raises(DataError) as in_this_process:
        collect_statistics(None, DataSpec(source, **CALIB), progress=False)
    if where == "processes":
        executor = processes
    else:
        executor = get_executor("ray", address=request.getfixturevalue("ray_cluster"))
    with pytest.raises(DataError) as in_a_worker:
        collect_statistics(None, DataSpec(source, **CALIB), progress=False, executor=executor)
    assert str(in_a_worker.value) == str(in_this_process.value)
    assert "not numbers" in str(in_a_worker.value)


# --------------------------------------------------------------------------- the CLI


def test_cli_collect_on_two_processes_writes_the_statistics_of_one_process(tmp_path, reference):
    proc = run_cli("collect", "--num-samples", str(CALIB["num_samples"]), "--batch-size", str(CALIB["batch_size"]),
                   "-o", str(tmp_path / "s.npz"), "--executor", "processes", "--workers", "2", check=True)
    assert (tmp_path / "s.npz").read_bytes() == reference["stats"]
    assert "executor    : 2 processes on this machine" in proc.stdout
    assert "in 2 worker processes" in proc.stdout


def test_cli_reports_a_workers_data_error_in_one_line_and_exits_2(tmp_path):
    source = _write_dataset(tmp_path, "bad", BAD_SAMPLE)
    proc = run_cli("collect", "--data", source, "-o", str(tmp_path / "s.npz"), "--executor", "processes",
                   "--workers", "2", "-q")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("quantlab: error: a sample for model input 'image' has dtype <U12, not numbers")
    assert not (tmp_path / "s.npz").exists()


def test_cli_calibrate_on_the_ray_cluster_of_ray_address_writes_the_cache_of_one_process(
        ray_cluster, tmp_path, reference):
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    proc = subprocess.run([sys.executable, "-m", "quantlab", "calibrate", "--num-samples", str(CALIB["num_samples"]),
                           "--batch-size", str(CALIB["batch_size"]), "-o", str(tmp_path / "m.cache"),
                           "--executor", "ray"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m.cache").read_bytes() == reference["cache"]
    assert f"executor    : ray cluster at {ray_cluster}: 2 nodes, 2 CPUs" in proc.stdout


def test_ctrl_c_stops_the_worker_processes_and_writes_nothing(tmp_path):
    source = _write_dataset(tmp_path, "slow", "        out.append(Sample(image, delay=0.05))")
    command = [sys.executable, "-m", "quantlab", "collect", "--data", source, "-o", str(tmp_path / "s.npz"),
               "--executor", "processes", "--workers", "2", "-q"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = []
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        workers = _spawned_children(proc.pid)
    assert len(workers) == 2, "the worker processes did not start"
    time.sleep(1.0)  # let them take a task each
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted; no output was written" in stderr
    assert "Exception ignored" not in stderr and "Traceback" not in stderr
    assert not (tmp_path / "s.npz").exists()
    time.sleep(0.5)
    assert [pid for pid in workers if Path(f"/proc/{pid}").exists()] == []


def _spawned_children(parent: int) -> list[int]:
    """Worker processes multiprocessing spawned for ``parent`` (not its resource tracker)."""
    return [pid for pid, cmdline in children(parent) if "spawn_main" in cmdline]
