"""``processes``: a pool of worker processes on this machine, each with its share of the cores.

Why processes and not threads: ONNX Runtime releases the GIL, but everything around a run (reading
and preprocessing samples, the numpy histogram path, the metrics) holds it; separate processes share
nothing. Workers are *spawned* (a fresh interpreter each), never forked from a driver that already
runs ONNX Runtime and tqdm threads. Each task is told to use ``cpus // workers`` threads
(:attr:`task_threads`), so ``workers`` processes fill the machine without oversubscribing it.

Faults: when a worker dies (SIGKILL, ``os._exit``, out of memory), ``concurrent.futures`` breaks the
whole pool and fails every unfinished task with ``BrokenProcessPool``; this executor then starts a
fresh pool and submits those tasks again, at most :data:`~quantlab.executors.MAX_RETRIES` times per
run. Ctrl-C and SIGTERM: workers ignore SIGINT (the terminal sends it to the whole process group);
the driver cancels what has not started and kills the workers, so no task outlives the command. A
driver killed outright (SIGKILL, the OOM killer) cannot do that: each worker watches its parent and
exits within half a second of losing it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Optional

from ..errors import QuantlabError
from .base import MAX_RETRIES, Executor, Failure, check_picklable, in_order, run_task

PARENT_CHECK_S = 0.5  # how often a worker looks whether its driver is still alive


def _init_worker(driver: int) -> None:
    """Worker initializer: Ctrl-C is the driver's to handle (it stops the workers itself); and a worker
    dies with its driver however the driver dies - a SIGKILL or the OOM killer gives it no chance to
    stop them - so none is left orphaned, holding its memory."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(driver,), name="quantlab-driver-watch", daemon=True).start()


def _exit_with(driver: int) -> None:
    """Exit this process as soon as ``driver`` is no longer its parent (it died; the process was
    re-parented)."""
    while os.getppid() == driver:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)


def _cpus() -> int:
    from ..collector import available_cpus

    return available_cpus()


class ProcessExecutor(Executor):
    name = "processes"

    def __init__(self, workers: Optional[int] = None):
        super().__init__()
        cpus = _cpus()
        self.workers = workers or cpus
        self.task_threads = max(1, cpus // self.workers)
        self._cpus = cpus
        self._pool: Optional[ProcessPoolExecutor] = None

    def describe(self) -> str:
        return (f"{self.workers} process{'' if self.workers == 1 else 'es'} on this machine "
                f"({self._cpus} CPUs, {self.task_threads} thread{'' if self.task_threads == 1 else 's'} each)")

    def _fresh_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(os.getpid(),))

    def imap(self, fn: Callable[[Any], Any], tasks: Iterable[Any],
             progress: Optional[Callable[[int], Any]] = None) -> Iterator[Any]:
        tasks = list(tasks)
        return in_order(self._completed(fn, tasks, progress), len(tasks))

    def _completed(self, fn, tasks: list, progress) -> Iterator[tuple[int, Any]]:
        """(index, result) of every task as it completes; pools that break are replaced."""
        check_picklable(fn, tasks, self.name)
        if self._pool is None:
            self._pool = self._fresh_pool()
        todo = list(range(len(tasks)))
        pending: dict[Future, int] = {}
        restarts = 0
        finished = False
        try:
            while todo or pending:
                for index in todo:
                    pending[self._pool.submit(run_task, fn, tasks[index])] = index
                todo = []
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                broken = []
                for future in done:
                    settled = self._settled(future, pending.pop(future), broken, progress)
                    if settled is not None:
                        yield settled
                if broken:
                    # Every unfinished task of a broken pool fails; wait for all of them to say so.
                    for future, index in list(pending.items()):
                        del pending[future]
                        settled = self._settled(future, index, broken, progress)
                        if settled is not None:
                            yield settled
                    restarts += 1
                    if restarts > MAX_RETRIES:
                        raise QuantlabError(
                            f"worker processes died {restarts} times while running this work (killed, or out of "
                            "memory?). Run with fewer `workers`, or with executor 'local' to see the "
                            "failure in this process", params=("workers",))
                    self._retries += len(broken)
                    self._kill(self._pool)
                    self._pool = self._fresh_pool()
                    todo = sorted(broken)
            finished = True
        finally:
            if not finished:  # an error, Ctrl-C, SIGTERM, or the caller stopped reading: stop everything
                for future in pending:
                    future.cancel()
                self._kill(self._pool)
                self._pool = None

    def _settled(self, future: Future, index: int, broken: list, progress) -> Optional[tuple[int, Any]]:
        """``(index, result)`` of a finished task; None when its pool broke (``index`` joins ``broken``).
        A task that failed raises its error here."""
        try:
            outcome = future.result()
        except BrokenProcessPool:
            broken.append(index)
            return None
        if isinstance(outcome, Failure):
            raise outcome.error()
        return index, self._record(outcome, progress)

    @staticmethod
    def _kill(pool: Optional[ProcessPoolExecutor]) -> None:
        """Stop a pool now: its queued tasks cancelled, its processes killed (running tasks are not waited for)."""
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())
        manager = getattr(pool, "_executor_manager_thread", None)
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.kill()
        for process in processes:
            process.join(timeout=5)
        # The pool's manager thread notices the dead workers and closes the pool's pipes; wait for it, so
        # that interpreter exit does not find them half closed ("Exception ignored ... Bad file descriptor").
        if manager is not None and manager.is_alive():
            manager.join(timeout=5)
        if manager is not None and manager.is_alive():
            # A worker killed while writing its result leaves half a message in the result pipe, and the
            # manager thread waits for the rest forever: this process holds the pipe's write end too, so no
            # EOF comes. Interpreter exit joins that thread and would hang (seen once in a CI run). Closing
            # our write end gives the reader its EOF; the thread then marks the pool broken and ends.
            writer = getattr(getattr(pool, "_result_queue", None), "_writer", None)
            if writer is not None:
                writer.close()
            manager.join(timeout=5)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
