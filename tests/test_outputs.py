"""Outputs never clobber: regular files only, never over an input, one commit point, no stale temps."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest

from quantlab import defaults
from quantlab.atomic import OutputSet, deferred_signals, protect_inputs, write_text_atomic
from quantlab.errors import OutputError

from conftest import run_cli


def dead_pid() -> int:
    """The process id of a process that has exited (for a temp file 'left by a crashed run')."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


# ---------------------------------------------------------------- what may be a target


def test_a_fifo_as_output_is_refused_and_stays_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    proc = run_cli("calibrate", "--num-samples", "16", "-o", "pipe", "-q", cwd=tmp_path)
    assert proc.returncode == 2 and "it is a FIFO, not a regular file" in proc.stderr
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no pipe.quantlab.json beside it


def test_a_character_device_as_output_is_refused_and_left_alone(tmp_path):
    proc = run_cli("calibrate", "--num-samples", "16", "-o", os.devnull, "-q", cwd=tmp_path)
    assert proc.returncode == 2 and "it is a device" in proc.stderr
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert not os.path.exists("/dev/null.quantlab.json")


def test_a_symlink_output_replaces_the_file_it_points_to_and_stays_a_link(tmp_path):
    (tmp_path / "caches").mkdir()
    (tmp_path / "caches" / "v1.cache").write_text("old\n")
    os.symlink("caches/v1.cache", tmp_path / "model.cache")
    run_cli("calibrate", "--num-samples", "16", "-o", "model.cache", "--table", "model.json", "-q",
            cwd=tmp_path, check=True)
    assert os.path.islink(tmp_path / "model.cache")
    assert (tmp_path / "caches" / "v1.cache").read_text().startswith("TRT-8601-EntropyCalibration2\n")


def test_a_folder_as_output_is_refused(tmp_path):
    (tmp_path / "out.cache").mkdir()
    with pytest.raises(OutputError, match="it is a folder"):
        write_text_atomic(tmp_path / "out.cache", "x")


# ---------------------------------------------------------------- never over an input


def test_the_model_is_never_overwritten_by_the_cache(tmp_path, calib_images):
    model = tmp_path / "m.onnx"
    model.write_bytes(defaults.MODEL.read_bytes())
    np.savez(tmp_path / "d.npz", x=calib_images[:16])
    proc = run_cli("calibrate", "m.onnx", "--data", "d.npz", "-o", "m.onnx", "-q", cwd=tmp_path)
    assert proc.returncode == 2 and "an input of this command" in proc.stderr
    assert model.read_bytes() == defaults.MODEL.read_bytes()
    assert not (tmp_path / "m.quantlab.json").exists()


def test_a_hard_link_to_an_input_counts_as_the_input(tmp_path, calib_images):
    np.savez(tmp_path / "d.npz", x=calib_images[:16])
    os.link(tmp_path / "d.npz", tmp_path / "alias.cache")
    proc = run_cli("calibrate", str(defaults.MODEL), "--data", "d.npz", "-o", "alias.cache", "-q", cwd=tmp_path)
    assert proc.returncode == 2 and "an input of this command" in proc.stderr
    assert np.load(tmp_path / "d.npz")["x"].shape == (16, 28, 28)


def test_table_and_cache_on_the_same_path_is_refused(tmp_path):
    proc = run_cli("calibrate", "--num-samples", "16", "-o", "x.cache", "--table", "x.cache", "-q", cwd=tmp_path)
    assert proc.returncode == 2 and "--table" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_statistics_are_not_written_over_the_statistics_they_merge(tmp_path):
    run_cli("collect", "--num-samples", "16", "-o", "s.npz", "-q", cwd=tmp_path, check=True)
    before = (tmp_path / "s.npz").read_bytes()
    proc = run_cli("merge-stats", "s.npz", "-o", "s.npz", cwd=tmp_path)
    assert proc.returncode == 2 and "an input of this command" in proc.stderr
    assert (tmp_path / "s.npz").read_bytes() == before


def test_a_converted_cache_cannot_replace_its_source(tmp_path):
    run_cli("calibrate", "--num-samples", "16", "-o", "m.cache", "-q", cwd=tmp_path, check=True)
    before = (tmp_path / "m.cache").read_bytes()
    proc = run_cli("cache", "convert", "m.cache", "--to", "ort-json", "-o", "m.cache", cwd=tmp_path)
    assert proc.returncode == 2 and (tmp_path / "m.cache").read_bytes() == before


def test_protected_inputs_apply_to_every_write_in_their_scope(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("keep")
    with protect_inputs([source]), pytest.raises(OutputError, match="an input of this command"):
        write_text_atomic(tmp_path / "in.txt", "lost")
    assert source.read_text() == "keep"


# ---------------------------------------------------------------- one commit point


def test_the_table_records_the_sha256_of_its_cache(tmp_path):
    run_cli("calibrate", "--num-samples", "16", "-o", "m.cache", "-q", cwd=tmp_path, check=True)
    table = json.loads((tmp_path / "m.quantlab.json").read_text())
    assert table["provenance"]["trt_cache_sha256"] == hashlib.sha256((tmp_path / "m.cache").read_bytes()).hexdigest()


def test_nothing_is_replaced_when_the_command_fails_after_staging(tmp_path):
    (tmp_path / "a").write_text("old a")
    with pytest.raises(RuntimeError), OutputSet() as outputs:
        outputs.add_text(tmp_path / "a", "new a")
        outputs.add_text(tmp_path / "b", "new b")
        raise RuntimeError("calibration failed")
    assert (tmp_path / "a").read_text() == "old a" and not (tmp_path / "b").exists()
    assert temp_files(tmp_path) == []


def test_an_interrupt_while_staging_removes_the_temporary_files(tmp_path):
    with pytest.raises(KeyboardInterrupt), OutputSet() as outputs:
        outputs.add_text(tmp_path / "m.cache", "new")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_folder_created_for_outputs_is_removed_when_they_are_discarded(tmp_path):
    with pytest.raises(RuntimeError), OutputSet() as outputs:
        folder = outputs.make_folder(tmp_path / "report" / "sub")
        outputs.add_text(folder / "report.md", "x")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_sigint_during_the_commit_is_held_until_every_file_is_in_place(tmp_path):
    with pytest.raises(KeyboardInterrupt), deferred_signals():
        write_text_atomic(tmp_path / "a", "1")
        os.kill(os.getpid(), signal.SIGINT)
        write_text_atomic(tmp_path / "b", "2")  # still runs: the interrupt waits for the block's end
    assert (tmp_path / "a").read_text() == "1" and (tmp_path / "b").read_text() == "2"


def test_a_stale_temp_file_of_a_killed_run_is_removed_by_the_next_write(tmp_path):
    stale = tmp_path / f".m.cache.quantlab-{dead_pid()}-0badcafe.tmp"
    stale.write_text("half a cache")
    run_cli("calibrate", "--num-samples", "16", "-o", "m.cache", "-q", cwd=tmp_path, check=True)
    assert not stale.exists() and temp_files(tmp_path) == []


def test_a_temp_file_of_a_running_writer_is_left_alone(tmp_path):
    live = tmp_path / f".m.cache.quantlab-{os.getppid()}-0badcafe.tmp"
    live.write_text("being written")
    write_text_atomic(tmp_path / "m.cache", "done")
    assert live.exists()


def slow_calibration(tmp_path) -> subprocess.Popen:
    """`quantlab calibrate` on data that takes a minute to arrive, started and past its imports."""
    (tmp_path / "slow.py").write_text("import time\n\ndef samples():\n    time.sleep(60)\n    return []\n")
    proc = subprocess.Popen([sys.executable, "-m", "quantlab", "calibrate", str(defaults.MODEL), "--data",
                             "slow.py:samples", "-o", "m.cache"], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    wait_for_import(proc.pid, "onnxruntime")
    return proc


def test_sigterm_ends_a_run_with_one_line_and_no_output(tmp_path):
    proc = slow_calibration(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip() == "quantlab: terminated; no output was written"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["slow.py"]


def test_ctrl_c_before_any_write_says_nothing_was_written(tmp_path):
    proc = slow_calibration(tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "quantlab: interrupted; no output was written", err


def wait_for_import(pid: int, library: str, timeout: float = 60.0) -> None:
    """Wait until process ``pid`` has loaded a shared library whose path contains ``library``."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/maps") as maps:
                if library in maps.read():
                    return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never loaded {library}")
