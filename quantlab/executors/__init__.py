"""Executors: where quantlab's work units run (this process, a pool of local processes, a Ray cluster).

The pipeline cuts its work into units that merge exactly - a shard of calibration samples ->
:class:`~quantlab.statistics.Statistics`, (candidate models, shard of held-out samples) -> metric
sums, a sensitivity candidate -> its metric - and hands them to an executor, which runs them
somewhere and gives the results back **in task order**. The pipeline merges them in that order, so
its output is the same, bit for bit, whichever executor ran it, on however many workers, in
whatever order the tasks finished, with or without retried tasks. The pipeline does not know which
executor runs it; an executor knows nothing of the pipeline.

    from quantlab.executors import get_executor

    with get_executor("processes", workers=4) as executor:
        print(executor.describe())                 # "4 processes on this machine"
        squares = executor.map(square, range(10))  # square: a module-level function

The interface (:class:`Executor`), which ``collect``, ``calibrate``, ``sweep`` and ``tune`` use:

* ``executor.map(fn, tasks, progress=None) -> list``: ``fn(task)`` for every task, results in task
  order. ``fn`` must be a module-level function and tasks and results picklable (they travel to
  other processes or machines; the ``local`` executor pickles nothing). ``imap`` is the same as an
  iterator, yielding each result as soon as it and all before it are done, so a caller can merge
  as results arrive instead of holding them all.
* ``progress``: a callable receiving units of progress (``tqdm(...).update`` fits). A task reports
  its units with :func:`report_progress` (e.g. samples per batch): they reach ``progress`` at once
  under ``local`` and when the task finishes elsewhere (so a retried task never counts twice).
* ``executor.task_threads``: the threads one task should use (``None``: the library's defaults, all
  CPUs), so that workers sharing a machine do not oversubscribe its cores;
  ``executor.workers``: how many tasks run at once; ``executor.describe()``: where they run, for
  summaries (``"ray cluster at auto: 2 nodes, 8 CPUs"``); ``executor.ran()``: what ran where
  (``"8 tasks in 2 worker processes on 1 node"``).
* Faults: a worker that dies while running a task (killed, out of memory) is replaced and the task
  run again (``processes``: a fresh pool; ``ray``: Ray's task retries), at most
  :data:`MAX_RETRIES` times; tasks are pure, so the result is the same. A task that raises a
  :class:`~quantlab.errors.QuantlabError` stops the run with that error, its class, message and
  parameter names intact (not a pickled traceback, not a Ray traceback). Ctrl-C (and SIGTERM, in
  the CLI) cancels every outstanding task and stops the workers.
* ``close()`` (or leaving the ``with`` block) stops the workers; an executor may be reused for
  several ``map`` calls until then, and its workers keep what they cached (an opened data set, a
  loaded model) from one call to the next.

Executors: ``local`` (the default: every task in this process, one after the other, exactly
today's behaviour), ``processes`` (a pool of ``workers`` processes on this machine, free of the
GIL; default one per CPU) and ``ray`` (a Ray cluster: ``address`` ``auto``, ``ray://head:10001`` or
``RAY_ADDRESS``; without one a local Ray instance is started; ``pip install 'quantlab[ray]'``; Ray
is imported only when this executor is asked for).

Data on a cluster: tasks carry the model and the data *by reference* (a path, ``module:function``)
and each worker opens them itself (:mod:`quantlab.executors.shipping`), so every worker must be able
to read the same paths (a shared filesystem, or the same files at the same place on every node)
and import the same ``module:function``; the driver never holds all samples or activations.
"""

from __future__ import annotations

import contextlib
import functools
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


def get_executor(name: str = "local", workers: Optional[int] = None, address: Optional[str] = None) -> Executor:
    """The executor called ``name`` (``local``, ``processes`` or ``ray``) with ``workers`` tasks at
    once (default: one per CPU of this machine, or of the Ray cluster); ``address``: the Ray
    cluster (default ``RAY_ADDRESS``, else a local Ray instance is started)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise QuantlabError(f"`workers` must be a positive integer, got {workers!r}", params=("workers",))
    if address is not None and name != "ray":
        raise QuantlabError(f"`address` names a Ray cluster, for `executor` ray (not {name})",
                            params=("address", "executor"))
    if name == "local":
        if workers not in (None, 1):
            raise QuantlabError(f"`executor` local runs one task at a time in this process; for `workers` {workers} "
                                "choose `executor` processes or ray", params=("workers", "executor"))
        from .local import LocalExecutor

        return LocalExecutor()
    if name == "processes":
        from .processes import ProcessExecutor

        return ProcessExecutor(workers)
    if name == "ray":
        from .ray import RayExecutor

        return RayExecutor(workers, address)
    raise QuantlabError(f"unknown `executor` {name!r}; choose one of {', '.join(EXECUTORS)}", params=("executor",))


@contextlib.contextmanager
def executor_scope(executor: Union[Executor, str, None]) -> Iterator[Executor]:
    """``executor`` as an :class:`Executor`: one given is used (and left open for its owner), a
    name or None (``local``) is made here and closed at the end of the block."""
    if isinstance(executor, Executor):
        yield executor
        return
    made = get_executor(executor or "local")
    try:
        yield made
    finally:
        made.close()


def uses_executor(function: Callable) -> Callable:
    """Decorator for pipeline functions with an ``executor`` keyword: inside, it is always an
    :class:`Executor` (one passed in is used and left open; a name or None is made for the call and
    closed after it), so one pool or cluster connection serves every stage of the call."""

    @functools.wraps(function)
    def call(*args, executor: Union[Executor, str, None] = None, **kwargs):
        with executor_scope(executor) as runner:
            return function(*args, executor=runner, **kwargs)

    return call


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
def _reporting_to(sink: Optional[Callable[[int], Any]]) -> Iterator[None]:
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
        with _reporting_to(count):
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


__all__ = ["EXECUTORS", "MAX_RETRIES", "Executor", "Failure", "Outcome", "check_picklable", "executor_scope",
           "get_executor", "in_order", "plan_shards", "report_progress", "run_task", "uses_executor"]
