"""Names a package exports but imports on first use (PEP 562).

``import quantlab`` - and the CLI's start, which must answer Ctrl-C and ``--help`` at once - should
not pay for ONNX Runtime, numpy and the evaluation engine before a name that needs them is used.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``exports`` maps a name to the submodule defining it."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
            vars(sys.modules[package])[name] = value  # the next lookup finds it without this hook
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
