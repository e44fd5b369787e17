"""The L1 TTL and LRU cache."""

from __future__ import annotations

import time

import numpy as np
import pytest

from crmbet.features.cache import CachedPlayer, L1Cache


def _entry(value: float = 0.0) -> CachedPlayer:
    return CachedPlayer(np.zeros(3), np.full(2, value), 0.0, 0.0)


def test_lru_evicts_oldest_use() -> None:
    cache = L1Cache(max_size=2, ttl_seconds=0)
    cache.put("a", _entry())
    cache.put("b", _entry())
    cache.get("a")
    cache.put("c", _entry())

    assert cache.get("b") is None
    assert cache.get("a") is not None
    assert cache.get("c") is not None
    assert cache.evictions == 1


def test_ttl_expires_entry() -> None:
    cache = L1Cache(max_size=10, ttl_seconds=0.03)
    cache.put("a", _entry())
    assert cache.get("a") is not None
    time.sleep(0.04)
    assert cache.get("a") is None
    assert len(cache) == 0


def test_invalidate_some_and_all() -> None:
    cache = L1Cache(max_size=10, ttl_seconds=60)
    for player in "abc":
        cache.put(player, _entry())
    cache.invalidate(["a"])
    assert cache.get("a") is None
    assert cache.get("b") is not None
    cache.invalidate(None)
    assert len(cache) == 0


def test_stale_generation_not_inserted() -> None:
    cache = L1Cache(max_size=10, ttl_seconds=60)
    generation = cache.generation
    cache.invalidate(["a"])

    assert cache.put("a", _entry(1.0), generation) is False
    assert cache.get("a") is None
    assert cache.put("a", _entry(2.0), cache.generation) is True


def test_zero_size_disables() -> None:
    cache = L1Cache(max_size=0, ttl_seconds=60)
    assert cache.put("a", _entry()) is False
    assert cache.get("a") is None


def test_uncounted_lookup() -> None:
    cache = L1Cache(max_size=10, ttl_seconds=60)
    cache.get("a", count=False)
    cache.put("a", _entry())
    cache.get("a")
    assert (cache.hits, cache.misses) == (1, 0)
    assert cache.hit_rate() == 1.0


def test_negative_size_rejected() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        L1Cache(max_size=-1, ttl_seconds=1)


def test_put_many_keeps_newest() -> None:
    cache = L1Cache(max_size=2, ttl_seconds=60)
    cache.put("a", _entry())
    inserted = cache.put_many([("b", _entry()), ("c", _entry()), ("d", _entry())])

    assert inserted == 2
    assert cache.get("a") is None
    assert cache.get("b") is None
    assert cache.get("d") is not None
    assert len(cache) == 2


def test_get_many_counts_and_expires() -> None:
    cache = L1Cache(max_size=10, ttl_seconds=0.03)
    cache.put("a", _entry(1.0))
    time.sleep(0.04)
    cache.put("b", _entry(2.0))

    found = cache.get_many(["a", "b", "c"])

    assert found[0] is None
    assert found[1] is not None
    assert found[2] is None
    assert (cache.hits, cache.misses) == (1, 2)
    assert len(cache) == 1
