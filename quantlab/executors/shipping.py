"""What work units carry to their workers, and what a worker keeps between them.

A task is pickled and sent to a worker process or another machine, so it carries the model and the
data by reference and the worker opens them itself:

* the model as a :class:`ModelRef`: its path and SHA-256 (the worker loads the file and checks the
  hash, so a node that sees another file under the same path is an error, not a silent mismatch);
  a model that has no file (built in memory) travels whole. Under ``local`` nothing is pickled and
  the driver's own model object is used.
* the data as its source (:func:`portable_source`: a path made absolute, since workers may run in
  another folder; ``module:function`` as it is, imported by the worker), plus the seed and count
  of the selection, which the worker repeats to find its samples.

Each worker process keeps the last model and data set it opened (:func:`worker_cached`), so the
shards a worker runs one after another open them once; results never depend on it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import ModelError

_cache: dict[str, tuple[Any, Any]] = {}  # kind -> (key, object): one object of each kind
_cache_lock = threading.Lock()


def worker_cached(kind: str, key: Any, make: Callable[[], Any]) -> Any:
    """The object of ``kind`` made for ``key`` in this process (one per kind: the last one asked for)."""
    with _cache_lock:
        held = _cache.get(kind)
        if held is not None and held[0] == key:
            return held[1]
    value = make()
    with _cache_lock:
        _cache[kind] = (key, value)
    return value


def clear_worker_cache() -> None:
    """Forget every cached object (the ``local`` executor calls this when it closes: the driver
    was the worker, and must not keep a data set alive)."""
    with _cache_lock:
        _cache.clear()


@dataclass
class ModelRef:
    """A model as tasks carry it: the file's path and hash, or the model itself when it has no file."""

    path: Optional[str]
    sha256: str
    graph: Any = field(default=None, repr=False)  # the driver's ModelGraph; dropped in transit when there is a path

    @classmethod
    def of(cls, graph) -> ModelRef:
        path = str(Path(graph.path).resolve()) if graph.path is not None else None
        return cls(path, graph.sha256, graph)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.path is not None:
            state["graph"] = None
        return state

    def load(self):
        """The model's :class:`~quantlab.graph.ModelGraph` (the driver's object under ``local``)."""
        if self.graph is not None:
            return self.graph
        from ..graph import load_model

        graph = worker_cached("model", (self.path, self.sha256), lambda: load_model(self.path))
        if graph.sha256 != self.sha256:
            raise ModelError(f"the model file {self.path} on this worker is not the driver's (sha256 "
                             f"{graph.sha256[:12]}... here, {self.sha256[:12]}... there); every worker must read the "
                             "same file (a shared filesystem, or the same file at the same path on every node)")
        return graph


def portable_source(source: Any) -> Any:
    """A data source as a worker elsewhere should see it: an existing path made absolute (workers
    may start in another folder), the file of ``path/file.py:function`` too; ``module:function``,
    URLs and data set objects unchanged."""
    if isinstance(source, Path) or (isinstance(source, str) and os.path.exists(source)):
        return str(Path(source).resolve())
    if isinstance(source, str):
        module, sep, attr = source.rpartition(":")
        if sep and module.endswith(".py") and os.path.isfile(module):
            return f"{Path(module).resolve()}:{attr}"
    return source
