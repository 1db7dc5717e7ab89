"""What the README says the CLI and the API do, checked against the CLI and the API."""

from __future__ import annotations

import argparse
import os
import re
import shlex

import pytest

from quantlab.cli import build_parser

from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def readme_command_lines() -> list[str]:
    """Every ``quantlab ...`` command in the README: in code blocks and in inline code."""
    text = README.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if not line.startswith("    "):  # the README's code blocks are indented
            continue
        for segment in line.split("&&"):
            segment = segment.split("  #")[0].strip()
            if segment.startswith("quantlab "):
                found.append(segment)
    for span in re.findall(r"`(quantlab [^`]+)`", text):
        if " -" in span:  # an inline command with options, not a name like `quantlab build`
            found.append(span.strip())
    return sorted(set(found))


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``"calibrate"`` -> its parser, ``"cache inspect"`` -> that verb's parser, and so on."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = subcommands(sub)
                found.update({f"{name} {verb}": p for verb, p in nested.items()} if nested else {name: sub})
    return found


def test_the_readme_shows_quantlab_commands():
    assert len(readme_command_lines()) >= 20


@pytest.mark.parametrize("line", readme_command_lines())
def test_every_readme_command_line_parses(line):
    argv = shlex.split(line)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"README line does not parse (exit {exc.code}): {line}")


def test_every_command_takes_json_as_the_readme_says():
    assert "Every command takes `--json`" in README
    missing = [name for name, sub in subcommands(build_parser()).items()
               if not any("--json" in action.option_strings for action in sub._actions)]
    assert missing == []


def test_the_readme_does_not_call_residual_placement_unwritten():
    assert "residual" in README and "not written yet" not in README
    qdq = subcommands(build_parser())["export-qdq"]
    placement = next(a for a in qdq._actions if "--placement" in a.option_strings)
    assert "residual" in placement.choices


def test_the_readme_mentions_every_command():
    for name in subcommands(build_parser()):
        assert f"quantlab {name}" in README, name


def test_the_readme_python_examples_run_on_the_embedded_model(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for block in blocks:
            exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    finally:
        os.chdir(cwd)
    assert (tmp_path / "fashion.cache").exists() and (tmp_path / "fashion.quantlab.json").exists()
