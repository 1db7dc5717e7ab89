"""``local``: every task in this process, one after the other (quantlab's behaviour before executors).

Nothing is pickled and nothing is started, so a task may carry objects that cannot travel (an
in-memory data set, a model object); the task's own threads (ONNX Runtime's, the histogram
threads) use every CPU, as they always did. Progress that tasks report reaches the bar at once.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Optional

from .base import Executor, reporting_to
from .shipping import clear_worker_cache


class LocalExecutor(Executor):
    name = "local"
    workers = 1
    task_threads = None

    def imap(self, fn: Callable[[Any], Any], tasks: Iterable[Any],
             progress: Optional[Callable[[int], Any]] = None) -> Iterator[Any]:
        for task in tasks:
            with reporting_to(progress):
                value = fn(task)  # a QuantlabError propagates as it is
            self._tasks_run += 1
            self._places.add((socket.gethostname(), os.getpid()))
            yield value

    def describe(self) -> str:
        return "1 process (this one)"

    def ran(self) -> str:
        return f"{self._tasks_run} task{'' if self._tasks_run == 1 else 's'} in this process"

    def close(self) -> None:
        # This process was the worker: drop what the tasks cached here (an opened data set).
        clear_worker_cache()
