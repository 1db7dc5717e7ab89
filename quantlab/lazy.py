"""Names a package exports but imports on first use (PEP 562).

``import quantlab`` - and the CLI's start, which must answer Ctrl-C and ``--help`` at once - should
not pay for ONNX Runtime, numpy and the evaluation engine before a name that needs them is used.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class LazyPackage(types.ModuleType):
    """A package whose exported names may share their names with its submodules.

    The function ``quantlab.calibrate`` shares its name with the module ``quantlab.calibrate``, the
    function ``quantlab.evaluation.compare`` with the module ``quantlab.evaluation.compare``.
    Importing a submodule binds it as an attribute of its package, which would hide the exported
    function; here an exported name keeps meaning the exported object. The module stays reachable
    through ``sys.modules`` and ``from package.module import ...``.
    """

    _lazy_exports: dict[str, str] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._lazy_exports and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        if name in self._lazy_exports:
            value = getattr(importlib.import_module(f".{self._lazy_exports[name]}", self.__name__), name)
            vars(self)[name] = value  # the next lookup finds it without this hook
            return value
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return sorted(set(vars(self)) | set(self._lazy_exports))


def export_lazily(package: str, exports: dict[str, str]) -> None:
    """Make ``package`` export ``exports`` (a name -> the submodule defining it), imported on first use."""
    module = sys.modules[package]
    vars(module)["_lazy_exports"] = dict(exports)
    module.__class__ = LazyPackage
