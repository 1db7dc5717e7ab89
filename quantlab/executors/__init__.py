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
from collections.abc import Callable, Iterator
from typing import Optional, Union

from ..errors import QuantlabError
from .base import (
    EXECUTORS,
    MAX_RETRIES,
    SHARDS_PER_WORKER,
    Executor,
    Failure,
    Outcome,
    check_picklable,
    in_order,
    plan_shards,
    report_progress,
    run_task,
)

__all__ = ["EXECUTORS", "MAX_RETRIES", "SHARDS_PER_WORKER", "Executor", "Failure", "Outcome", "check_picklable",
           "executor_scope", "get_executor", "in_order", "plan_shards", "report_progress", "run_task",
           "uses_executor"]


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


