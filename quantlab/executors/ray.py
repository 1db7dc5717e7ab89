"""``ray``: tasks on a Ray cluster (``pip install 'quantlab[ray]'``; Ray is imported only here).

Which cluster: ``address`` (``auto`` for the one ``ray start`` runs on this machine,
``ray://head:10001`` for Ray Client, ``host:6379``), else ``RAY_ADDRESS``, else a Ray instance
started here for this command (and stopped at the end). A Ray that this process already joined
(``ray.init`` called by the user) is used as it is and left running.

Every node must have quantlab (and the data set adapters and metric plugins the work uses)
installed, and must see the model and the data at the same paths (a shared filesystem); see
:mod:`quantlab.executors.shipping`.

Each task asks Ray for ``task_threads`` CPUs (the cluster's CPUs divided by ``workers``, at least 1)
and uses that many threads, so Ray packs tasks onto nodes without oversubscribing them; at most
``workers`` tasks are in flight. Faults: a task whose worker process or node dies is retried by Ray
(``max_retries``); a task that raises a QuantlabError comes back as data
(:class:`~quantlab.executors.Failure`) and stops the run with the worker's message; a cancelled run
(an error, Ctrl-C, SIGTERM) cancels every outstanding task with ``force=True``.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Optional

from ..errors import QuantlabError
from .base import MAX_RETRIES, Executor, Failure, in_order, run_task

INSTALL_HINT = "pip install 'quantlab[ray]'"


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise QuantlabError(f"`executor` 'ray' needs Ray, which is not installed here ({exc}); {INSTALL_HINT}, "
                            "or use executor 'processes' on one machine", params=("executor",)) from None
    return ray


def _ray_task(fn: Callable[[Any], Any], task: Any):
    """What runs on a Ray worker: the task, reporting the node it ran on."""
    import ray

    return run_task(fn, task, node=ray.get_runtime_context().get_node_id())


CONNECT_TIMEOUT = 5.0  # seconds a cluster's address has to answer before Ray is asked to join it
TOKEN_HINT = ("give this client the cluster's token: copy the head's ~/.ray/auth_token to ~/.ray/auth_token here "
              "(or set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH) and set RAY_AUTH_MODE=token; see "
              "https://docs.ray.io/en/latest/ray-security/token-auth.html")


def endpoint(address: str) -> Optional[tuple[str, int]]:
    """``(host, port)`` of an address Ray will dial (``host:port`` or ``ray://host:port``); None for
    ``auto``/``local`` and what is not an address (Ray reports those itself)."""
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Refuse, within ``timeout`` seconds, an address where nothing listens: Ray itself would retry for
    minutes, printing its own warnings, before it gave up."""
    found = endpoint(address)
    if found is None:
        return
    try:
        socket.create_connection(found, timeout=timeout).close()
    except OSError as exc:
        why = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise QuantlabError(f"no Ray cluster answers at {address} ({why}, tried for {timeout:g} s): start one "
                            "with 'ray start --head' on that machine, or check `address` (auto, host:6379 or "
                            "ray://head:10001) and RAY_ADDRESS", params=("address",)) from None


def _join_error(ray, exc: Exception, where: str) -> QuantlabError:
    """One line for why Ray could not start or join ``where``, with what to do."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    authentication = getattr(ray.exceptions, "AuthenticationError", ())
    if authentication and isinstance(exc, authentication):
        return QuantlabError(f"the Ray cluster at {where} uses token authentication and this client has no token: "
                             f"{TOKEN_HINT}", params=("address",))
    if first.startswith("Failed to connect to Ray cluster"):
        return QuantlabError(f"the Ray cluster at {where} answers but refused this client. With token authentication "
                             f"on (RAY_AUTH_MODE=token on the head), {TOKEN_HINT}. Otherwise check that this client's "
                             f"Ray ({ray.__version__}) is the head's version", params=("address",))
    if "Initialization failure from server" in first:
        return QuantlabError(f"the Ray Client server at {where} could not start a session for this client (its "
                             "per-client server process exited; the head's logs/ray_client_server*.err say why); try "
                             "again, or join with host:6379 from a node of the cluster", params=("address",))
    if "ray[client]" in first:
        return QuantlabError(f"a ray:// address uses Ray Client, which needs packages not installed here: "
                             f"{INSTALL_HINT} (it installs ray[client]), or join with host:6379 from a cluster node",
                             params=("address",))
    return QuantlabError(f"cannot start or join the Ray cluster at {where}: {first}; check `address` "
                         "(auto, host:6379 or ray://head:10001) or RAY_ADDRESS", params=("address",))


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, workers: Optional[int] = None, address: Optional[str] = None):
        super().__init__()
        ray = self._ray = _import_ray()
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self._started_here = False
        if not ray.is_initialized():
            self._init(ray, workers)
            self._joined = True
        else:
            self._joined = False  # the user's own Ray session: use it, leave it running
        resources = ray.cluster_resources()
        self.cpus = max(1, int(resources.get("CPU", 1)))
        self.nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        largest = max((int(node.get("Resources", {}).get("CPU", 0)) for node in ray.nodes() if node.get("Alive")),
                      default=self.cpus)
        self.workers = workers or self.cpus
        self.task_threads = max(1, min(self.cpus // self.workers, largest or 1))
        # SPREAD: shards go to every node rather than filling the node whose workers are already warm.
        self._remote = ray.remote(_ray_task).options(num_cpus=self.task_threads, max_retries=MAX_RETRIES,
                                                     retry_exceptions=False, scheduling_strategy="SPREAD")

    def _init(self, ray, workers: Optional[int]) -> None:
        """Join the cluster at ``address``, else the one running on this machine, else start one here."""
        options = {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False}
        authentication = getattr(ray.exceptions, "AuthenticationError", ConnectionError)
        if self.address is not None:
            check_reachable(self.address)
        try:
            if self.address is None:
                try:
                    ray.init(num_cpus=workers, **options)
                    self._started_here = True
                except ValueError as exc:
                    if "existing cluster" not in str(exc):
                        raise
                    # `ray start` runs a cluster on this machine: join it as it is (its CPUs are its own).
                    self.address = "auto"
                    ray.init(address="auto", **options)
            else:
                ray.init(address=self.address, **options)
        except (ConnectionError, ValueError, RuntimeError, authentication) as exc:
            raise _join_error(ray, exc, self.address or "a local Ray instance") from None

    def describe(self) -> str:
        where = ("started here" if self._started_here else "running on this machine" if self.address == "auto"
                 else f"at {self.address or 'this session'}")
        return (f"ray cluster {where}: {self.nodes} node{'' if self.nodes == 1 else 's'}, {self.cpus} CPUs; "
                f"{self.workers} tasks at a time, {self.task_threads} CPU{'' if self.task_threads == 1 else 's'} each")

    def imap(self, fn: Callable[[Any], Any], tasks: Iterable[Any],
             progress: Optional[Callable[[int], Any]] = None) -> Iterator[Any]:
        tasks = list(tasks)
        return in_order(self._completed(fn, tasks, progress), len(tasks))

    def _completed(self, fn, tasks: list, progress) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        following = 0
        pending: dict[Any, int] = {}
        finished = False
        try:
            while following < len(tasks) or pending:
                while following < len(tasks) and len(pending) < self.workers:
                    pending[self._remote.remote(fn, tasks[following])] = following
                    following += 1
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    index = pending.pop(ref)
                    outcome = self._get(ref, index)
                    if isinstance(outcome, Failure):
                        raise outcome.error()
                    yield index, self._record(outcome, progress)
            finished = True
        finally:
            if not finished:
                for ref in pending:
                    try:
                        ray.cancel(ref, force=True)
                    except Exception:  # already finished, or the cluster is gone: nothing left to stop
                        pass

    def _get(self, ref, index: int):
        ray = self._ray
        try:
            # Ray hands numpy arrays back read-only, as views of its object store; the pipeline merges
            # into the results it gets, and the store must be free to drop them: a private copy.
            return copy.deepcopy(ray.get(ref))
        except ray.exceptions.RayTaskError as exc:
            # Not a QuantlabError (those come back as Failure values): a bug, shown as the error it was.
            raise exc.as_instanceof_cause() from None
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError,
                ray.exceptions.OutOfMemoryError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise QuantlabError(f"task {index} failed on the Ray cluster after {MAX_RETRIES} retries "
                                f"({type(exc).__name__}: {first}); use fewer `workers`, or check the nodes",
                                params=("workers",)) from None

    def close(self) -> None:
        if getattr(self, "_joined", False):
            self._joined = False
            self._ray.shutdown()
