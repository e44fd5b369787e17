"""The L1 cache: TTL, W-TinyLFU eviction, invalidation."""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
import pytest

from crmbet.features.cache import MAX_COUNT, CachedPlayer, FrequencySketch, L1Cache


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


def test_put_many_inserts_every_entry() -> None:
    cache = L1Cache(max_size=100, ttl_seconds=60)
    inserted = cache.put_many([("b", _entry()), ("c", _entry()), ("d", _entry())])

    assert inserted == 3
    assert len(cache) == 3
    assert all(cache.get(player) is not None for player in "bcd")


def _request(cache: L1Cache, player: str) -> bool:
    """Look a player up and insert it on a miss, as the feature store does."""
    if cache.get(player) is not None:
        return True
    cache.put(player, _entry())
    return False


def test_frequent_key_survives_scan() -> None:
    cache = L1Cache(max_size=100, ttl_seconds=0)
    for _ in range(5):
        _request(cache, "hot")
    scan = [f"once-{i}" for i in range(1000)]
    for player in scan:
        _request(cache, player)

    # A plain LRU of 100 entries would have evicted "hot" 100 requests into
    # the scan of 1,000 players requested once each.
    assert len(scan) > cache.max_size
    assert cache.get("hot") is not None
    assert len(cache) == cache.max_size
    assert cache.rejections > 0


def test_hit_rate_beats_lru_on_zipf() -> None:
    players, size, requests = 20_000, 1_000, 100_000
    rng = np.random.default_rng(7)
    weights = np.arange(1, players + 1, dtype=np.float64) ** -1.0
    stream = [f"p{i}" for i in rng.choice(players, requests, p=weights / weights.sum())]
    cache = L1Cache(max_size=size, ttl_seconds=0)
    lru: OrderedDict[str, None] = OrderedDict()
    cache_hits = lru_hits = 0
    for player in stream:
        cache_hits += _request(cache, player)
        if player in lru:
            lru_hits += 1
            lru.move_to_end(player)
        else:
            lru[player] = None
            if len(lru) > size:
                lru.popitem(last=False)

    assert cache_hits > lru_hits * 1.05


def test_second_hit_promotes_from_probation() -> None:
    cache = L1Cache(max_size=100, ttl_seconds=60)
    for player in ["a", "b", "c"]:
        cache.put(player, _entry())
    # The window has room for one entry, so "a" and "b" went on to probation.
    assert cache.get("a") is not None
    for i in range(200):
        _request(cache, f"once-{i}")

    assert cache.get("a") is not None
    assert cache.get("b") is None


def test_expired_protected_entry_dropped() -> None:
    cache = L1Cache(max_size=100, ttl_seconds=0.03)
    cache.put("a", _entry())
    cache.put("b", _entry())
    assert cache.get("a") is not None
    time.sleep(0.04)

    assert cache.get("a") is None
    assert cache.get_many(["b"]) == [None]
    assert len(cache) == 0


def test_invalidate_every_segment() -> None:
    cache = L1Cache(max_size=100, ttl_seconds=60)
    for player in "abc":
        cache.put(player, _entry())
    cache.get("a")
    cache.invalidate(["a", "b", "c"])

    assert len(cache) == 0
    assert cache.invalidations == 3


def test_bulk_read_leaves_policy_alone() -> None:
    cache = L1Cache(max_size=100, ttl_seconds=60)
    cache.put("a", _entry())
    cache.put("b", _entry())
    samples = cache._sketch.samples

    found = cache.get_many(["a", "b", "c"], update=False)

    assert [entry is not None for entry in found] == [True, True, False]
    assert cache._sketch.samples == samples
    assert (cache.hits, cache.misses) == (2, 1)


def test_sketch_counts_and_ages() -> None:
    sketch = FrequencySketch(width=1024, sample_size=10_000)
    for _ in range(3):
        sketch.increment(hash("a"))
    for _ in range(40):
        sketch.increment(hash("b"))

    assert sketch.estimate(hash("a")) >= 3
    assert sketch.estimate(hash("b")) == MAX_COUNT
    assert sketch.estimate(hash("never")) <= 3
    sketch.age()
    assert sketch.estimate(hash("b")) == MAX_COUNT // 2
    assert sketch.samples == 43 // 2


def test_sketch_width_is_power_of_two() -> None:
    assert FrequencySketch(width=1000, sample_size=1).width == 1024
    assert FrequencySketch(width=1, sample_size=1).width == 2


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
