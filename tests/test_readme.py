"""What the README and docs/ say the CLI and the API do, checked against the CLI and the API."""

from __future__ import annotations

import argparse
import os
import re
import shlex

import pytest

from quantlab.cli import build_parser

from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
# The user guide: README.md is the first ten minutes, docs/*.md the rest (docs/README.md is the index).
DOCS = {path.name: path.read_text(encoding="utf-8") for path in sorted((REPO / "docs").glob("*.md"))}
ALL_TEXT = "\n".join([README, *DOCS.values()])


def command_lines(text: str) -> list[str]:
    """Every ``quantlab ...`` command in one Markdown text: in code blocks and in inline code."""
    text = text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if not line.startswith("    "):  # code blocks in README.md and docs/ are indented
            continue
        for segment in line.split("&&"):
            segment = segment.split("  #")[0].strip()
            if segment.startswith("quantlab "):
                found.append(segment)
    for span in re.findall(r"`(quantlab [^`]+)`", text):
        if " -" in span:  # an inline command with options, not a name like `quantlab build`
            found.append(span.strip())
    return sorted(set(found))


def readme_command_lines() -> list[str]:
    """Every ``quantlab ...`` command in README.md and in every docs/*.md."""
    found = set(command_lines(README))
    for text in DOCS.values():
        found.update(command_lines(text))
    return sorted(found)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``"calibrate"`` -> its parser, ``"cache inspect"`` -> that verb's parser, and so on."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = subcommands(sub)
                found.update({f"{name} {verb}": p for verb, p in nested.items()} if nested else {name: sub})
    return found


def test_the_docs_exist_and_link_back_to_their_index():
    assert "README.md" in DOCS and len(DOCS) > 1
    for name, text in DOCS.items():
        if name != "README.md":
            assert "](README.md)" in text, name
            assert f"]({name})" in DOCS["README.md"], name


def test_the_readme_shows_quantlab_commands():
    assert len(readme_command_lines()) >= 20


@pytest.mark.parametrize("line", readme_command_lines())
def test_every_readme_command_line_parses(line):
    argv = shlex.split(line)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"README/docs line does not parse (exit {exc.code}): {line}")


def test_every_command_takes_json_as_the_readme_says():
    assert "Every command takes `--json`" in README
    missing = [name for name, sub in subcommands(build_parser()).items()
               if not any("--json" in action.option_strings for action in sub._actions)]
    assert missing == []


def test_the_readme_does_not_call_residual_placement_unwritten():
    assert "residual" in ALL_TEXT and "not written yet" not in ALL_TEXT
    qdq = subcommands(build_parser())["export-qdq"]
    placement = next(a for a in qdq._actions if "--placement" in a.option_strings)
    assert "residual" in placement.choices


def test_the_readme_mentions_every_command():
    for name in subcommands(build_parser()):
        assert f"quantlab {name}" in ALL_TEXT, name


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_python_examples_run_on_the_embedded_model(tmp_path):
    # README's block first (it writes fashion.cache), then docs/python-api.md's (which reads it),
    # in one working folder; no other page has a ```python block.
    sources = [("README.md", README), ("docs/python-api.md", DOCS["python-api.md"])]
    blocks = [(name, block) for name, text in sources for block in python_blocks(text)]
    assert [name for name, _ in blocks] == ["README.md", "docs/python-api.md", "docs/python-api.md"]
    assert all(not python_blocks(text) for name, text in DOCS.items() if name != "python-api.md")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for name, block in blocks:
            exec(compile(block, name, "exec"), {"__name__": "readme"})
    finally:
        os.chdir(cwd)
    assert (tmp_path / "fashion.cache").exists() and (tmp_path / "fashion.quantlab.json").exists()
