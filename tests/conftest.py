"""Shared fixtures: the embedded model and data, the real caches in ../shared/caches, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantlab import defaults
from quantlab.data import IdxDataset

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_CACHES = SHARED / "caches"
TRT_ARTIFACTS = SHARED / "trt-artifacts"
# Fixtures that read the real third-party files of ../shared (design.md: TensorRT caches, trtexec and
# Polygraphy outputs). They sit beside the repository in the project's workspace and are never copied
# into it (their licences differ), so a clone has none: the tests that need them are not collected
# there, and the run says so in one line, instead of reporting dozens of skips that point to files
# nothing can install.
SHARED_FIXTURES = frozenset({"shared_caches", "trt_artifacts"})


@pytest.fixture(scope="session")
def shared_caches() -> Path:
    return SHARED_CACHES


@pytest.fixture(scope="session")
def trt_artifacts() -> Path:
    return TRT_ARTIFACTS


def pytest_collection_modifyitems(config, items):
    if SHARED.is_dir():
        return
    needing = [item for item in items if SHARED_FIXTURES & set(getattr(item, "fixturenames", ()))]
    if needing:
        config.hook.pytest_deselected(items=needing)
        items[:] = [item for item in items if item not in set(needing)]
        config.stash[SHARED_KEY] = len(needing)


SHARED_KEY = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter, config):
    count = config.stash.get(SHARED_KEY, 0)
    if count:
        terminalreporter.write_line(
            f"quantlab: {count} tests that read ../shared (real TensorRT caches, trtexec and Polygraphy files kept "
            "beside the repository in the project's workspace, not in a clone) were not collected: nothing is "
            "missing from this checkout")


@pytest.fixture(scope="session")
def default_model() -> Path:
    return defaults.MODEL


@pytest.fixture(scope="session")
def graph():
    """The embedded model's normalised graph (read-only: shared by every module that asks)."""
    from quantlab.workload import resolve_model

    return resolve_model(None)


@pytest.fixture(scope="session")
def stats(graph):
    """Statistics of the embedded model on its 512 calibration images (read-only, collected once)."""
    from quantlab.calibrate import collect_statistics
    from quantlab.workload import DataSpec

    return collect_statistics(graph, DataSpec(), progress=False)


@pytest.fixture(scope="session")
def calib_images() -> np.ndarray:
    """The embedded real Fashion-MNIST calibration images, uint8 [512, 28, 28]."""
    return IdxDataset(defaults.CALIBRATION_DATA).images


def run_cli(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real ``quantlab`` CLI in a subprocess."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "quantlab", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"quantlab {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def children(parent: int) -> list[tuple[int, str]]:
    """``(pid, command line)`` of every process whose parent is ``parent`` (Linux: read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.append((int(entry.name), cmdline))
    return found
