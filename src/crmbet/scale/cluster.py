"""Dask clusters for crmbet jobs: a scheduler address or a LocalCluster.

:func:`open_cluster` maps a :class:`crmbet.pipeline.ClusterConfig` onto a
Dask client. With ``enable_auto_scaling`` the cluster adapts between
``n_workers`` and ``max_workers``; a :class:`ScalingWatcher` logs every
worker that joins or leaves and counts it in ``scaling_events_total``.

A LocalCluster's nannies write ``OMP_NUM_THREADS=1`` and the other
variables of ``distributed.nanny.pre-spawn-environ`` into the *calling*
process's environment before each worker starts, so that the worker
inherits them. Left there, they would make scikit-learn and any BLAS loaded
later single-threaded in the calling process as well. :class:`EnvironmentGuard`
puts the caller's values back after every worker start and on close.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from crmbet.scale.metrics import SCALING_EVENTS

if TYPE_CHECKING:
    from distributed import Client

    from crmbet.pipeline import ClusterConfig

logger = logging.getLogger(__name__)

#: Variables a nanny sets in the calling process before spawning a worker.
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class EnvironmentGuard:
    """Snapshot environment variables and put them back on request."""

    def __init__(self, names: tuple[str, ...] | None = None) -> None:
        if names is None:
            import dask
            import distributed  # noqa: F401 - loads the nanny's configuration defaults

            spawn = (
                dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
            )
            names = tuple(
                dict.fromkeys([*BLAS_THREAD_VARIABLES, *spawn, "PYTHONHASHSEED"])
            )
        self.names = names
        self.saved = {name: os.environ.get(name) for name in names}
        self._lock = threading.Lock()

    def restore(self) -> list[str]:
        """Put the saved values back and return the names that had changed."""
        changed = []
        with self._lock:
            for name, value in self.saved.items():
                if os.environ.get(name) == value:
                    continue
                changed.append(name)
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        if changed:
            logger.debug(
                "restored %s in the calling process after a worker start", changed
            )
        return changed


class ScalingWatcher:
    """Log and count workers joining and leaving a cluster.

    Polls the scheduler every ``interval`` seconds from a daemon thread, so
    it works the same for a LocalCluster and a remote scheduler. A worker
    that joins and leaves between two polls is not seen.
    """

    def __init__(
        self,
        client: Client,
        interval: float = 0.25,
        guard: EnvironmentGuard | None = None,
    ) -> None:
        self.client = client
        self.interval = interval
        self.guard = guard
        self.workers = self._current()
        self.events: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="crmbet-scaling-watcher", daemon=True
        )

    def _current(self) -> set[str]:
        # Ask the scheduler directly: the client's cached identity can come
        # back without its worker list between two refreshes.
        identity = self.client.sync(self.client.scheduler.identity, n_workers=-1)
        return set(identity["workers"])

    def start(self) -> ScalingWatcher:
        """Start polling in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and wait for the thread."""
        self._stop.set()
        self._thread.join(timeout=5 * self.interval + 5)

    def poll(self) -> None:
        """Compare the worker set with the last poll and record the changes."""
        current = self._current()
        for address in sorted(current - self.workers):
            self._record("up", address, len(current))
        for address in sorted(self.workers - current):
            self._record("down", address, len(current))
        self.workers = current
        if self.guard is not None:
            self.guard.restore()

    def _record(self, direction: str, address: str, total: int) -> None:
        SCALING_EVENTS.labels(direction=direction).inc()
        self.events.append((direction, address))
        verb = "joined" if direction == "up" else "left"
        logger.info(
            "scaling event: worker %s %s, worker count %d", address, verb, total
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as error:  # noqa: BLE001 - a closing client must not kill the job
                if self._stop.is_set():
                    return
                logger.warning(
                    "scaling watcher could not read the worker list: %r", error
                )


def local_cluster_kwargs(
    config: ClusterConfig, processes: bool = True
) -> dict[str, Any]:
    """Return the LocalCluster arguments for a cluster configuration."""
    kwargs: dict[str, Any] = {
        "n_workers": config.n_workers,
        "threads_per_worker": 1,
        "memory_limit": config.memory_limit,
        "processes": processes,
        # The scheduler serves HTTP (dashboard, health, metrics) even with
        # the dashboard off; keep it on loopback, on a free port.
        "dashboard_address": "127.0.0.1:0",
    }
    if processes:
        # Listen on loopback only; thread workers talk in-process instead.
        kwargs["host"] = "127.0.0.1"
    return kwargs


@contextmanager
def open_cluster(config: ClusterConfig, *, processes: bool = True) -> Iterator[Client]:
    """Connect to ``config.scheduler_address`` or start a LocalCluster.

    Parameters
    ----------
    config:
        ``scheduler_address`` selects an existing cluster; otherwise a
        LocalCluster with ``n_workers`` single-threaded workers of
        ``memory_limit`` each starts on 127.0.0.1. ``enable_auto_scaling``
        makes it adapt between ``n_workers`` and ``max_workers``.
    processes:
        Run LocalCluster workers as processes (the default, and what a
        worker memory limit needs) or as threads of the calling process.

    Yields
    ------
    distributed.Client
    """
    from distributed import Client, LocalCluster

    guard = EnvironmentGuard()
    cluster = None
    if config.scheduler_address:
        logger.info("connecting to the Dask scheduler at %s", config.scheduler_address)
        client = Client(config.scheduler_address)
    else:
        cluster = LocalCluster(**local_cluster_kwargs(config, processes))
        guard.restore()
        client = Client(cluster)
        logger.info(
            "started a LocalCluster of %d workers (%s each, processes=%s)",
            config.n_workers,
            config.memory_limit,
            processes,
        )
    if config.enable_auto_scaling:
        maximum = max(config.max_workers, config.n_workers)
        if cluster is None:
            logger.warning(
                "auto scaling of a remote cluster is up to its deployment; "
                "watching its workers only"
            )
        else:
            cluster.adapt(minimum=config.n_workers, maximum=maximum)
            logger.info(
                "adaptive scaling between %d and %d workers", config.n_workers, maximum
            )
    watcher = ScalingWatcher(client, guard=guard).start()
    try:
        yield client
    finally:
        watcher.stop()
        client.close()
        if cluster is not None:
            cluster.close()
            logger.info("closed the LocalCluster")
        guard.restore()
