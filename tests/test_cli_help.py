"""Each command's ``--help`` teaches: it ends with real examples, and every example parses."""

from __future__ import annotations

import argparse
import shlex

import pytest

from quantlab.cli import build_parser

COMMANDS = ["calibrate", "collect", "merge-stats", "export-qdq", "compare", "sweep", "tune", "build", "cache"]


def command_parser(name: str) -> argparse.ArgumentParser:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError("no subcommands")


def examples(name: str) -> list[str]:
    """The ``quantlab ...`` lines of a command's epilog (continuation lines joined)."""
    epilog = (command_parser(name).epilog or "").replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in epilog.splitlines() if line.strip().startswith("quantlab ")]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_ends_with_at_least_two_examples(name):
    assert len([line for line in examples(name) if line.startswith(f"quantlab {name.split()[0]}")]) >= 2


@pytest.mark.parametrize("line", sorted({line for name in COMMANDS for line in examples(name)}))
def test_every_help_example_parses(line):
    try:
        build_parser().parse_args(shlex.split(line)[1:])
    except SystemExit as exc:
        pytest.fail(f"help example does not parse (exit {exc.code}): {line}")


def test_list_methods_shows_the_calibrators_then_auto_with_its_parameter(capsys):
    from quantlab.cli import run

    assert run(["calibrate", "--list-methods"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names[-1] == "auto" and {"entropy", "max", "mse", "percentile"} <= set(names[:-1])
