"""L1 cache: an in-process TTL and LRU cache of computed feature vectors.

The cache sits in front of the online store. An entry contains a player's
state, its full feature vector and the as-of time the vector was computed
at. It leaves the cache when the player's state changes (the online store
announces changed players), when it is older than ``ttl_seconds``, or when
it is the least recently used entry of a full cache.

A generation counter closes the race between a reader that fetched a state
from the online store and a writer that changed it meanwhile: the reader
inserts only when no invalidation happened since it started reading.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class CachedPlayer:
    """One player's state and feature vector, computed at ``as_of``."""

    state: np.ndarray
    vector: np.ndarray
    as_of: float
    last_ts: float


class L1Cache:
    """Thread-safe TTL and LRU cache of :class:`CachedPlayer` entries.

    Parameters
    ----------
    max_size:
        Most entries kept; 0 disables the cache.
    ttl_seconds:
        Wall-clock lifetime of an entry; 0 means entries never age out.

    Examples
    --------
    >>> import numpy as np
    >>> cache = L1Cache(max_size=1, ttl_seconds=60)
    >>> cache.put("p1", CachedPlayer(np.zeros(2), np.zeros(3), 0.0, 0.0))
    True
    >>> cache.get("p1") is not None, cache.get("p2")
    (True, None)
    """

    def __init__(self, max_size: int, ttl_seconds: float) -> None:
        if max_size < 0 or ttl_seconds < 0:
            raise ValueError(
                f"L1 cache size {max_size} and TTL {ttl_seconds} s must be >= 0; "
                "set l1_cache_size and l1_ttl_seconds to non-negative values"
            )
        self.max_size = max_size
        self.ttl_seconds = ttl_seconds
        self._entries: OrderedDict[str, tuple[float, CachedPlayer]] = OrderedDict()
        self._lock = threading.Lock()
        self.generation = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.invalidations = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, player_id: str, count: bool = True) -> CachedPlayer | None:
        """Return the live entry of a player and mark it recently used.

        ``count=False`` leaves the hit and miss counters alone, for a second
        lookup of the same request.
        """
        with self._lock:
            item = self._entries.get(player_id)
            if item is not None and item[0] and time.monotonic() > item[0]:
                del self._entries[player_id]
                item = None
            if item is None:
                self.misses += count
                return None
            self._entries.move_to_end(player_id)
            self.hits += count
            return item[1]

    def get_many(
        self, player_ids: Sequence[str], count: bool = True
    ) -> list[CachedPlayer | None]:
        """Return the live entries of several players under one lock."""
        now = time.monotonic()
        entries = self._entries
        found: list[CachedPlayer | None] = []
        with self._lock:
            for player_id in player_ids:
                item = entries.get(player_id)
                if item is not None and item[0] and now > item[0]:
                    del entries[player_id]
                    item = None
                if item is None:
                    found.append(None)
                    continue
                entries.move_to_end(player_id)
                found.append(item[1])
            if count:
                hits = len(found) - found.count(None)
                self.hits += hits
                self.misses += len(found) - hits
        return found

    def put(
        self, player_id: str, entry: CachedPlayer, generation: int | None = None
    ) -> bool:
        """Insert an entry; skip it when an invalidation followed ``generation``.

        Returns True when the entry was inserted.
        """
        if self.max_size == 0:
            return False
        expires_at = time.monotonic() + self.ttl_seconds if self.ttl_seconds else 0.0
        with self._lock:
            if generation is not None and generation != self.generation:
                return False
            self._entries[player_id] = (expires_at, entry)
            self._entries.move_to_end(player_id)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)
                self.evictions += 1
        return True

    def put_many(
        self, entries: list[tuple[str, CachedPlayer]], generation: int | None = None
    ) -> int:
        """Insert several entries under one lock; return how many were inserted."""
        if self.max_size == 0 or not entries:
            return 0
        expires_at = time.monotonic() + self.ttl_seconds if self.ttl_seconds else 0.0
        # Entries beyond the capacity would be evicted by the later ones.
        kept = entries[-self.max_size :]
        with self._lock:
            if generation is not None and generation != self.generation:
                return 0
            for player_id, entry in kept:
                self._entries[player_id] = (expires_at, entry)
                self._entries.move_to_end(player_id)
            overflow = len(self._entries) - self.max_size
            for _ in range(max(overflow, 0)):
                self._entries.popitem(last=False)
            self.evictions += max(overflow, 0)
        return len(kept)

    def invalidate(self, player_ids: Iterable[str] | None) -> None:
        """Drop the entries of ``player_ids``, or every entry when None."""
        with self._lock:
            self.generation += 1
            if player_ids is None:
                self.invalidations += len(self._entries)
                self._entries.clear()
                return
            for player_id in player_ids:
                if self._entries.pop(player_id, None) is not None:
                    self.invalidations += 1

    def hit_rate(self) -> float:
        """Return hits divided by lookups, 0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0
