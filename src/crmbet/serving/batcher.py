"""Dynamic micro-batching: concurrent single requests share one vectorised call.

A request waits at most ``timeout_ms`` for others to join its batch, and a
batch is sent as soon as it contains ``max_batch_size`` rows. With a timeout
of 0 the batch closes on the next event-loop turn, which still groups the
requests that arrived together without adding a fixed delay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Groups items submitted from concurrent coroutines and processes them together.

    ``process`` takes the list of items of one batch and returns one result
    per item, in order. It runs on the event loop, so it must be quick (a
    vectorised NumPy call is).

    Examples
    --------
    >>> import asyncio
    >>> batcher = MicroBatcher(lambda items: [x * 2 for x in items], 8, 1.0)
    >>> async def main():
    ...     return await asyncio.gather(*(batcher.submit(i) for i in range(3)))
    >>> asyncio.run(main())
    [0, 2, 4]
    """

    def __init__(
        self,
        process: Callable[[list[T]], Sequence[R]],
        max_batch_size: int,
        timeout_ms: float,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(
                f"max_batch_size={max_batch_size} is invalid; use 1 or more"
            )
        if timeout_ms < 0:
            raise ValueError(f"timeout_ms={timeout_ms} is invalid; use 0 or more")
        self.process = process
        self.max_batch_size = max_batch_size
        self.timeout_ms = timeout_ms
        self._items: list[T] = []
        self._futures: list[asyncio.Future[R]] = []
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self.batches = 0
        self.items = 0

    @property
    def mean_batch_size(self) -> float:
        """Mean number of items per processed batch so far."""
        return self.items / self.batches if self.batches else 0.0

    async def submit(self, item: T) -> R:
        """Add ``item`` to the open batch and return its result once processed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._items.append(item)
        self._futures.append(future)
        if len(self._items) >= self.max_batch_size:
            self._flush()
        elif self._timer is None:
            if self.timeout_ms == 0:
                self._timer = loop.call_soon(self._flush)
            else:
                self._timer = loop.call_later(self.timeout_ms / 1000.0, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, futures = self._items, self._futures
        self._items, self._futures = [], []
        if not items:
            return
        self.batches += 1
        self.items += len(items)
        try:
            results = self.process(items)
        except Exception as error:  # noqa: BLE001 - every waiter must get the error
            logger.exception("a micro-batch of %d items failed", len(items))
            for future in futures:
                if not future.done():
                    future.set_exception(error)
            return
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)
