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
SHARED_CACHES = REPO.parent / "shared" / "caches"


@pytest.fixture(scope="session")
def shared_caches() -> Path:
    if not SHARED_CACHES.is_dir():
        pytest.skip(f"real TensorRT caches not found at {SHARED_CACHES} (the shared/ checkout is absent)")
    return SHARED_CACHES


@pytest.fixture(scope="session")
def default_model() -> Path:
    return defaults.MODEL


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
