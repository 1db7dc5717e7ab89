"""How quantlab installs: names that belong to quantlab, an entry point that starts at once."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import distribution

import pytest

from conftest import REPO


def test_every_builtin_plugin_lives_under_the_quantlab_package():
    eps = [ep for ep in distribution("quantlab").entry_points if ep.group.startswith("quantlab.")]
    assert {ep.name for ep in eps if ep.group == "quantlab.calibrators"} == {"auto", "entropy", "max", "mse",
                                                                            "percentile"}
    assert all(ep.value.startswith("quantlab.") for ep in eps), [ep.value for ep in eps]


def test_no_top_level_calibrators_package_is_installed(tmp_path):
    code = ("import importlib.util, quantlab.calibrators.entropy as e;"
            "print(importlib.util.find_spec('calibrators') is None, e.EntropyCalibrator.name)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "entropy"]


def test_the_calibrator_sources_stay_in_the_top_level_folder():
    assert (REPO / "calibrators" / "entropy.py").is_file() and not (REPO / "quantlab" / "calibrators").exists()


def test_the_console_script_starts_from_the_light_entry_module():
    scripts = {ep.name: ep.value for ep in distribution("quantlab").entry_points if ep.group == "console_scripts"}
    assert scripts["quantlab"] == "quantlab.__main__:main"


def test_importing_quantlab_does_not_import_onnxruntime(tmp_path):
    code = "import sys, quantlab; print('onnxruntime' in sys.modules, callable(quantlab.calibrate))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_the_calibrate_function_is_not_hidden_by_the_calibrate_module(tmp_path):
    code = ("import quantlab.calibrate, quantlab.cli, quantlab;"
            "from quantlab import calibrate; print(callable(calibrate), callable(quantlab.calibrate))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_every_package_of_the_source_tree_is_listed_for_installation():
    """A package missing from pyproject's list works in an editable install and is absent from a wheel."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(REPO).parts) for path in (REPO / "quantlab").rglob("__init__.py")}
    found |= {"quantlab.calibrators"}
    assert found - listed == set()


def test_the_compare_and_sweep_functions_are_not_hidden_by_their_modules(tmp_path):
    code = ("import quantlab.evaluation.compare, quantlab.evaluation.sweep;"
            "from quantlab.evaluation import compare, sweep; print(callable(compare), callable(sweep))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
