"""The micro-batcher groups concurrent submissions and keeps results in order."""

from __future__ import annotations

import asyncio

import pytest

from crmbet.serving.batcher import MicroBatcher


def _recording() -> tuple[list[list[int]], MicroBatcher[int, int]]:
    batches: list[list[int]] = []

    def process(items: list[int]) -> list[int]:
        batches.append(list(items))
        return [item * 10 for item in items]

    return batches, MicroBatcher(process, max_batch_size=4, timeout_ms=50.0)


async def test_concurrent_items_share_batch() -> None:
    batches, batcher = _recording()
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
    assert results == [0, 10, 20]
    assert batches == [[0, 1, 2]]


async def test_full_batch_flushes_at_once() -> None:
    batches, batcher = _recording()
    loop = asyncio.get_running_loop()
    start = loop.time()
    results = await asyncio.gather(*(batcher.submit(i) for i in range(8)))
    assert results == [i * 10 for i in range(8)]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert loop.time() - start < 0.045


async def test_lone_item_waits_timeout() -> None:
    batches, batcher = _recording()
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await batcher.submit(5) == 50
    assert loop.time() - start >= 0.045
    assert batcher.mean_batch_size == 1.0


async def test_zero_timeout_groups_same_tick() -> None:
    batches: list[list[int]] = []

    def process(items: list[int]) -> list[int]:
        batches.append(list(items))
        return items

    batcher = MicroBatcher(process, 100, 0.0)
    await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    assert batches == [[0, 1, 2, 3, 4]]


async def test_error_reaches_every_waiter() -> None:
    def fail(items: list[int]) -> list[int]:
        raise RuntimeError("model failed")

    batcher = MicroBatcher(fail, 4, 1.0)
    results = await asyncio.gather(
        *(batcher.submit(i) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)


@pytest.mark.parametrize(("size", "timeout"), [(0, 1.0), (1, -1.0)])
def test_invalid_limits_rejected(size: int, timeout: float) -> None:
    with pytest.raises(ValueError, match="invalid"):
        MicroBatcher(lambda items: items, size, timeout)
