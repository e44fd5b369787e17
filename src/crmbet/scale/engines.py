"""Engines that run a job's tasks: in this process, or on a Dask cluster.

Both engines run the same task functions from :mod:`crmbet.scale.tasks` on
the same inputs, so they write the same files and give the same features.
The local engine runs one task at a time, so its memory is bounded by the
largest batch or bucket rather than by the data set. The Dask engine sends
each task to a worker and gathers the small per-task statistics. When a
worker dies mid-task, the scheduler reruns its tasks on another worker.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[str, int], None]


class Engine(Protocol):
    """Runs a function over task arguments and returns the results in order."""

    name: str

    @property
    def parallelism(self) -> int:
        """Number of tasks that run at once."""
        ...

    def map(
        self,
        function: Callable[..., T],
        items: Sequence[Any],
        *,
        step: str,
        progress: Progress | None = None,
        **kwargs: Any,
    ) -> list[T]:
        """Return ``[function(item, **kwargs) for item in items]``."""
        ...


class LocalEngine:
    """Run tasks one after another in the calling process (Polars inside each task)."""

    name = "local"

    @property
    def parallelism(self) -> int:
        return 1

    def map(
        self,
        function: Callable[..., T],
        items: Sequence[Any],
        *,
        step: str,
        progress: Progress | None = None,
        **kwargs: Any,
    ) -> list[T]:
        results = []
        for item in items:
            results.append(function(item, **kwargs))
            if progress:
                progress(step, 1)
        logger.debug("local engine ran %d %s tasks", len(items), step)
        return results


class DaskEngine:
    """Run tasks on the workers of a Dask cluster."""

    name = "dask"

    def __init__(self, client: Client) -> None:
        self.client = client

    @property
    def parallelism(self) -> int:
        identity = self.client.sync(self.client.scheduler.identity, n_workers=-1)
        workers = identity["workers"]
        return max(sum(w.get("nthreads", 1) for w in workers.values()), 1)

    def map(
        self,
        function: Callable[..., T],
        items: Sequence[Any],
        *,
        step: str,
        progress: Progress | None = None,
        **kwargs: Any,
    ) -> list[T]:
        from distributed import as_completed

        if not items:
            return []
        # Unique keys: a task's output is files, so two submissions of the
        # same arguments in one session must both run.
        run_id = uuid.uuid4().hex[:8]
        keys = [f"crmbet-{step}-{run_id}-{index}" for index in range(len(items))]
        # Bind the keyword arguments first: Client.map would take some of
        # them (batch_size, key, pure, ...) as its own options.
        task = functools.partial(function, **kwargs)
        futures = self.client.map(task, items, key=keys)
        for _ in as_completed(futures):
            if progress:
                progress(step, 1)
        results = self.client.gather(futures)
        logger.debug("dask engine ran %d %s tasks", len(items), step)
        return list(results)
