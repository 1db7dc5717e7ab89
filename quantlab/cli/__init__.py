"""``quantlab`` command line: one module per command over shared argument groups (:mod:`.args`).

Each command module has ``add_parser(sub)`` (its flags, ``--help`` and examples) and ``run(args)``,
a thin layer over the Python API: it turns flags into the API's option objects, calls it, and
prints a summary (or ``--json``). This module builds the parser and runs a command.

Every user error ends as one line on stderr (``quantlab: error: ...``) and exit code 2;
nothing half-written is left behind (all files are written atomically, outputs are checked
for writability before the long work starts).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Optional

from .. import __version__, defaults
from ..atomic import protect_inputs, reset_written, written_files
from ..errors import QuantlabError, Terminated
from . import (
    build,
    cache,
    calibrate,
    collect,
    compare,
    engine,
    export_inputs,
    export_qdq,
    merge_stats,
    qdq,
    sweep,
    tune,
)
from .args import flag_spelling

__all__ = ["build_parser", "run"]


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the problem, and where the help is (not the whole usage)."""

    def error(self, message: str):
        self.exit(2, f"quantlab: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``quantlab`` parser with every command (what the README's command lines are checked against)."""
    parser = Parser(
        prog="quantlab",
        description="INT8 calibration for TensorRT: collect activation histograms with ONNX "
                    "Runtime, choose ranges (entropy/KL, percentile, MSE, max), write TensorRT "
                    "calibration caches and quantlab tables.",
    )
    parser.add_argument("--version", action="version", version=f"quantlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (calibrate, collect, merge_stats, export_qdq, qdq, compare, export_inputs, engine, sweep, tune,
                    build, cache):
        command.add_parser(sub)
    return parser


def _inputs_of(args: argparse.Namespace) -> list:
    """Every file the command reads: no output may replace one of them."""
    found = []
    for key in ("model", "data", "eval_data", "cache", "qdq", "file", "a", "b", "preprocess_config",
                "engine_outputs", "layer_info", "profile"):
        value = getattr(args, key, None)
        if isinstance(value, str):
            found.append(value)
    for key in ("stats", "inputs"):
        found += [v for v in (getattr(args, key, None) or []) if isinstance(v, str)]
    if getattr(args, "command", None) in ("calibrate", "collect", "compare", "sweep", "export-qdq", "export-inputs") \
            and getattr(args, "model", None) is None:
        found.append(str(defaults.MODEL))
    return found


def _interrupted(verb: str, code: int) -> int:
    written = written_files()
    if written:
        print(f"quantlab: {verb}; wrote {', '.join(map(str, written))} before that; nothing else was written",
              file=sys.stderr)
    else:
        print(f"quantlab: {verb}; no output was written", file=sys.stderr)
    return code


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` and run the command: exit 0 done, 2 user error (one line), 130/143 interrupted."""
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        reset_written()
        with protect_inputs(_inputs_of(args)):
            code = args.func(args)
        sys.stdout.flush()
        return code
    except QuantlabError as exc:
        command_parser = getattr(args, "command_parser", parser)
        print(f"quantlab: error: {exc.render(flag_spelling(command_parser))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted("interrupted", 130)
    except Terminated:
        return _interrupted("terminated", 143)
    except BrokenPipeError:
        # The reader went away (`quantlab ... | head -1`): not an error to report. Point stdout at
        # /dev/null so the interpreter's final flush does not fail again, and exit as a program
        # killed by SIGPIPE would (128 + 13), so a pipeline can still tell the output was cut.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
