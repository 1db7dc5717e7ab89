"""The executor contract and its helpers: work units, shards, progress, failures, ordered results.

The implementations (:mod:`.local`, :mod:`.processes`, :mod:`.ray`) build on this module; the package
(:mod:`quantlab.executors`) picks one by name.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Optional, Union

from ..errors import QuantlabError

EXECUTORS = ("local", "processes", "ray")
# Times one task may be run again after its worker died under it (a killed process, a lost node).
MAX_RETRIES = 3
# Shards per worker that parallel executors aim for: enough that the workers finish together and the
# progress bar moves, few enough that a shard's fixed cost (opening the data, building a session)
# stays small against its samples.
SHARDS_PER_WORKER = 4


def plan_shards(count: int, batch_size: int, shards: int) -> list[tuple[int, int]]:
    """``count`` items cut into at most ``shards`` ranges ``(start, stop)`` of whole batches.

    Boundaries fall on multiples of ``batch_size``, so every shard's batches are exactly the
    batches one process would make: splitting changes which process runs a batch, never what is
    in it. Ranges are as equal as whole batches allow, the longer ones first.
    """
    batches = -(-count // batch_size) if count else 0
    shards = max(1, min(shards, batches))
    per, extra = divmod(batches, shards)
    ranges, start = [], 0
    for shard in range(shards):
        stop = min(count, start + (per + (shard < extra)) * batch_size)
        if stop > start:
            ranges.append((start, stop))
        start = stop
    return ranges


# --------------------------------------------------------------------------- progress from tasks

_sink = threading.local()


def report_progress(units: int) -> None:
    """Called by a task: ``units`` of progress (e.g. the samples of a batch just processed).

    Goes to the ``progress`` callable of the ``map`` that runs the task: at once under ``local``,
    with the task's result elsewhere. Outside any executor it does nothing.
    """
    sink = getattr(_sink, "report", None)
    if sink is not None:
        sink(units)


@contextlib.contextmanager
def reporting_to(sink: Optional[Callable[[int], Any]]) -> Iterator[None]:
    previous = getattr(_sink, "report", None)
    _sink.report = sink
    try:
        yield
    finally:
        _sink.report = previous


# --------------------------------------------------------------------------- what a task sends back


@dataclass
class Failure:
    """A QuantlabError raised by a task, as data: re-raised on the driver with its class, message
    and parameter names (an exception pickled by ``concurrent.futures`` loses its ``params``, and
    Ray would wrap it in a traceback of its own)."""

    kind: type
    message: str
    params: tuple

    def error(self) -> QuantlabError:
        try:
            return self.kind(self.message, params=self.params)
        except TypeError:  # a subclass with another signature
            return QuantlabError(self.message, params=self.params)


@dataclass
class Outcome:
    """A task's result with what the driver reports about it: progress units, where it ran."""

    value: Any
    units: int
    node: str
    pid: int


def run_task(fn: Callable[[Any], Any], task: Any, node: Optional[str] = None) -> Union[Outcome, Failure]:
    """Run one task in a worker: count its progress units, turn a QuantlabError into a Failure."""
    units = [0]

    def count(n: int) -> None:
        units[0] += int(n)

    try:
        with reporting_to(count):
            value = fn(task)
    except QuantlabError as exc:
        return Failure(type(exc), str(exc), tuple(exc.params))
    return Outcome(value, units[0], node or socket.gethostname(), os.getpid())


def check_picklable(fn: Callable[[Any], Any], tasks: list, executor: str) -> None:
    """Refuse, with a message that says why and what to do, work whose tasks cannot travel.

    Every task of one ``map`` has the same make-up, so the first one stands for all: the usual
    culprit is a data set object (an in-memory adapter) where a path would do.
    """
    import pickle

    if not tasks:
        return
    try:
        pickle.dumps((fn, tasks[0]))
    except Exception as exc:  # PicklingError, TypeError, AttributeError: whatever the object raises
        raise QuantlabError(f"cannot send this work to `executor` {executor}: a task cannot be pickled "
                            f"({type(exc).__name__}: {exc}); give the data set as a path or module:function, which "
                            "every worker opens itself, or use `executor` local", params=("executor",)) from None


class Executor:
    """Runs picklable tasks through a module-level function and returns the results in task order
    (see the module docstring for the contract)."""

    name = "executor"
    workers = 1
    task_threads: Optional[int] = None

    def __init__(self) -> None:
        self._tasks_run = 0
        self._retries = 0
        self._places: set[tuple[str, int]] = set()

    # -- what subclasses provide
    def imap(self, fn: Callable[[Any], Any], tasks: Iterable[Any],
             progress: Optional[Callable[[int], Any]] = None) -> Iterator[Any]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the workers (idempotent)."""

    # -- shared
    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any],
            progress: Optional[Callable[[int], Any]] = None) -> list:
        """``[fn(task) for task in tasks]``, run by this executor, in task order."""
        with contextlib.closing(self.imap(fn, tasks, progress)) as results:
            return list(results)

    def shards(self, batches: int) -> int:
        """How many shards a work of ``batches`` batches is best cut into for this executor."""
        return max(1, min(batches, SHARDS_PER_WORKER * self.workers)) if self.workers > 1 else 1

    def ran(self) -> str:
        """What ran where since this executor was made, e.g. ``8 tasks in 2 worker processes on 1 node``."""
        nodes = {node for node, _ in self._places}
        text = (f"{_plural(self._tasks_run, 'task')} in {_plural(len(self._places), 'worker process', 'es')} "
                f"on {_plural(len(nodes), 'node')}")
        if self._retries:
            text += f"; {_plural(self._retries, 'task')} run again after a worker died"
        return text

    def _record(self, outcome: Outcome, progress: Optional[Callable[[int], Any]]) -> Any:
        self._tasks_run += 1
        self._places.add((outcome.node, outcome.pid))
        if progress is not None and outcome.units:
            progress(outcome.units)
        return outcome.value

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"


def _plural(n: int, word: str, suffix: str = "s") -> str:
    return f"{n} {word}" + ("" if n == 1 else suffix)


def in_order(results: Iterable[tuple[int, Any]], count: int) -> Iterator[Any]:
    """Values of ``(index, value)`` pairs arriving in any order, yielded in index order as soon as
    every earlier one has arrived (the out-of-order ones wait here, nowhere else)."""
    waiting: dict[int, Any] = {}
    following = 0
    for index, value in results:
        waiting[index] = value
        while following in waiting:
            yield waiting.pop(following)
            following += 1
    if following != count:  # a bug in an executor, never a user error
        raise RuntimeError(f"executor returned {following} of {count} results")


