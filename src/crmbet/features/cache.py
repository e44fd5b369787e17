"""L1 cache: an in-process TTL cache of computed feature vectors.

The cache sits in front of the online store. An entry contains a player's
state, its full feature vector and the as-of time the vector was computed
at. It leaves the cache when the player's state changes (the online store
announces changed players), when it is older than ``ttl_seconds``, or when
the eviction policy picks it in a full cache.

The eviction policy is W-TinyLFU (Einziger, Friedman and Manes, "TinyLFU: A
Highly Efficient Cache Admission Policy", ACM Transactions on Storage,
2017). New entries go to a small LRU window. An entry pushed out of a full
window enters the main area only when a count-min sketch estimates that it
was requested more often than the main area's eviction victim. The main
area is a segmented LRU: entries hit once more move from its probation
segment to its protected segment. On a Zipf-distributed request stream this
keeps the popular players that a plain LRU loses to bursts of one-off
requests.

A generation counter closes the race between a reader that fetched a state
from the online store and a writer that changed it meanwhile: the reader
inserts only when no invalidation happened since it started reading.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np

#: Share of the capacity given to the LRU window that takes new entries.
WINDOW_SHARE = 0.01
#: Share of the main area kept for entries hit again after admission.
PROTECTED_SHARE = 0.8
#: Largest value of a sketch counter.
MAX_COUNT = 15
#: Sketch counters are halved after this many recorded requests per entry of
#: capacity, so the estimates follow changes in popularity.
SAMPLES_PER_ENTRY = 10
#: Counters per sketch row per entry of capacity. Between two halvings a
#: counter then takes SAMPLES_PER_ENTRY / COUNTERS_PER_ENTRY = 2.5 increments
#: on average, so keys requested once rarely look popular.
COUNTERS_PER_ENTRY = 4

# Maps every byte value to its half, to age all counters with one translate.
_HALVE = bytes(value >> 1 for value in range(256))
_MASK32 = 0xFFFFFFFF


class CachedPlayer(NamedTuple):
    """One player's state and feature vector, computed at ``as_of``.

    ``values`` and ``last_event_ts`` are the vector as a one-row matrix and
    ``last_ts`` as a one-element array, both read-only, so that a one-player
    response is built without new arrays. They are None when the writer did
    not set them.

    The cache stores and returns entries as plain tuples in this field
    order, and the ``*_FIELD`` constants index them. The garbage collector
    stops tracking a plain tuple of floats, arrays and None after its first
    pass, but keeps tracking any tuple subclass such as this one, so a full
    cache of these would lengthen every full collection.
    """

    state: np.ndarray
    vector: np.ndarray
    as_of: float
    last_ts: float
    values: np.ndarray | None = None
    last_event_ts: np.ndarray | None = None


#: A cached entry: the fields of :class:`CachedPlayer` in a plain tuple.
CachedEntry = tuple[
    np.ndarray, np.ndarray, float, float, np.ndarray | None, np.ndarray | None
]
#: Positions of the :class:`CachedPlayer` fields in a cached entry.
STATE_FIELD, VECTOR_FIELD, AS_OF_FIELD, LAST_TS_FIELD = 0, 1, 2, 3
VALUES_FIELD, LAST_EVENT_TS_FIELD = 4, 5


class FrequencySketch:
    """Count-min sketch of request counts: four rows of 4-bit-range counters.

    Each key increments one counter per row, and the estimate is the
    smallest of the four. Counters stop at :data:`MAX_COUNT`, and after
    ``sample_size`` increments every counter is halved, so old popularity
    fades. The row indices come from the key's Python ``hash`` by double
    hashing, so estimates are valid within one process only.

    Examples
    --------
    >>> sketch = FrequencySketch(width=64, sample_size=1000)
    >>> for _ in range(3):
    ...     sketch.increment(hash("p1"))
    >>> sketch.estimate(hash("p1")) >= 3
    True
    """

    def __init__(self, width: int, sample_size: int) -> None:
        # Round up to a power of two so the index is a bit mask.
        self.width = 1 << max(width - 1, 1).bit_length()
        self.sample_size = max(sample_size, 1)
        self.samples = 0
        self._mask = self.width - 1
        self._table = bytearray(4 * self.width)

    def _indices(self, key_hash: int) -> tuple[int, int, int, int]:
        low = key_hash & _MASK32
        step = ((key_hash >> 32) & _MASK32) | 1
        mask = self._mask
        width = self.width
        return (
            low & mask,
            width + ((low + step) & mask),
            2 * width + ((low + 2 * step) & mask),
            3 * width + ((low + 3 * step) & mask),
        )

    def increment(self, key_hash: int) -> None:
        """Record one request of the key with hash ``key_hash``."""
        # Unrolled: this runs on every cache lookup.
        table = self._table
        mask = self._mask
        width = self.width
        low = key_hash & _MASK32
        step = ((key_hash >> 32) & _MASK32) | 1
        index = low & mask
        if table[index] < MAX_COUNT:
            table[index] += 1
        index = width + ((low + step) & mask)
        if table[index] < MAX_COUNT:
            table[index] += 1
        index = 2 * width + ((low + 2 * step) & mask)
        if table[index] < MAX_COUNT:
            table[index] += 1
        index = 3 * width + ((low + 3 * step) & mask)
        if table[index] < MAX_COUNT:
            table[index] += 1
        self.samples += 1
        if self.samples >= self.sample_size:
            self.age()

    def estimate(self, key_hash: int) -> int:
        """Return the estimated request count of the key, at most :data:`MAX_COUNT`."""
        # Unrolled like increment, because the admission of every L1 miss runs this
        # twice.
        table = self._table
        mask = self._mask
        width = self.width
        low = key_hash & _MASK32
        step = ((key_hash >> 32) & _MASK32) | 1
        count = table[low & mask]
        other = table[width + ((low + step) & mask)]
        if other < count:
            count = other
        other = table[2 * width + ((low + 2 * step) & mask)]
        if other < count:
            count = other
        other = table[3 * width + ((low + 3 * step) & mask)]
        return other if other < count else count

    def age(self) -> None:
        """Halve every counter and the sample count."""
        self._table = self._table.translate(_HALVE)
        self.samples //= 2


class L1Cache:
    """Thread-safe TTL cache of :class:`CachedPlayer` entries, evicting by W-TinyLFU.

    Parameters
    ----------
    max_size:
        Maximum number of entries; 0 disables the cache.
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
        self.window_size = min(max(int(max_size * WINDOW_SHARE), 1), max_size)
        main_size = max_size - self.window_size
        self.protected_size = int(main_size * PROTECTED_SHARE)
        self._main_size = main_size
        # Each segment maps a player id to (expiry time or 0, entry), least
        # recently used first.
        self._window: OrderedDict[str, tuple[float, CachedEntry]] = OrderedDict()
        self._probation: OrderedDict[str, tuple[float, CachedEntry]] = OrderedDict()
        self._protected: OrderedDict[str, tuple[float, CachedEntry]] = OrderedDict()
        self._sketch = FrequencySketch(
            COUNTERS_PER_ENTRY * max_size, SAMPLES_PER_ENTRY * max_size
        )
        self._lock = threading.Lock()
        self.generation = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.rejections = 0
        self.invalidations = 0

    def __len__(self) -> int:
        return len(self._window) + len(self._probation) + len(self._protected)

    def __contains__(self, player_id: str) -> bool:
        return (
            player_id in self._protected
            or player_id in self._window
            or player_id in self._probation
        )

    def get(self, player_id: str, count: bool = True) -> CachedEntry | None:
        """Return the live entry of a player and record the request.

        ``count=False`` leaves the hit and miss counters and the frequency
        sketch alone, for a second lookup of the same request.
        """
        now = time.monotonic()
        with self._lock:
            # Fast path for the most common case, a hit in the protected
            # segment. It skips the sketch: such an entry is not an eviction
            # candidate, and its next hit after a demotion is recorded.
            protected = self._protected
            item = protected.get(player_id)
            if item is not None:
                if not item[0] or now <= item[0]:
                    protected.move_to_end(player_id)
                    self.hits += count
                    return item[1]
                del protected[player_id]
                if count:
                    self._sketch.increment(hash(player_id))
                    self.misses += 1
                return None
            if count:
                self._sketch.increment(hash(player_id))
            item = self._touch_unprotected(player_id, now)
            if item is None:
                self.misses += count
                return None
            self.hits += count
            return item[1]

    def get_many(
        self, player_ids: Sequence[str], count: bool = True, update: bool = True
    ) -> list[CachedEntry | None]:
        """Return the live entries of several players under one lock.

        ``update=False`` reads without recording the requests in the sketch
        or changing the eviction order, so a bulk job does not change which
        players the cache keeps.
        """
        now = time.monotonic()
        found: list[CachedEntry | None] = []
        append = found.append
        with self._lock:
            if update:
                self._get_many_updating(player_ids, count, now, append)
            else:
                found.extend(self._read_many(player_ids, now))
            if count:
                hits = len(found) - found.count(None)
                self.hits += hits
                self.misses += len(found) - hits
        return found

    def _read_many(
        self, player_ids: Sequence[str], now: float
    ) -> list[CachedEntry | None]:
        """Look entries up without any bookkeeping; the caller holds the lock."""
        from_protected = self._protected.get
        from_window = self._window.get
        from_probation = self._probation.get
        found: list[CachedEntry | None] = []
        append = found.append
        for player_id in player_ids:
            # A stored item is a non-empty tuple, so `or` moves on only when
            # a segment lacks the player.
            item = (
                from_protected(player_id)
                or from_window(player_id)
                or from_probation(player_id)
            )
            if item is None or (item[0] and now > item[0]):
                append(None)
            else:
                append(item[1])
        return found

    def _get_many_updating(
        self,
        player_ids: Sequence[str],
        count: bool,
        now: float,
        append: Callable[[CachedEntry | None], None],
    ) -> None:
        protected = self._protected
        touch = self._touch
        increment = self._sketch.increment if count else None
        for player_id in player_ids:
            item = protected.get(player_id)
            if item is not None and (not item[0] or now <= item[0]):
                protected.move_to_end(player_id)
                append(item[1])
                continue
            if increment is not None:
                increment(hash(player_id))
            item = touch(player_id, now)
            append(None if item is None else item[1])

    def _touch(self, player_id: str, now: float) -> tuple[float, CachedEntry] | None:
        """Find a live entry and mark it used; the caller holds the lock."""
        if self._protected.pop(player_id, None) is not None:
            # Only an expired entry reaches here: the callers serve live
            # protected entries themselves.
            return None
        return self._touch_unprotected(player_id, now)

    def _touch_unprotected(
        self, player_id: str, now: float
    ) -> tuple[float, CachedEntry] | None:
        """Find a live entry outside the protected segment and mark it used."""
        window = self._window
        item = window.get(player_id)
        if item is not None:
            if item[0] and now > item[0]:
                del window[player_id]
                return None
            window.move_to_end(player_id)
            return item
        probation = self._probation
        item = probation.get(player_id)
        if item is None:
            return None
        del probation[player_id]
        if item[0] and now > item[0]:
            return None
        # A second use after admission: promote, and demote the protected
        # segment's least recently used entry back to probation.
        protected = self._protected
        protected[player_id] = item
        if len(protected) > self.protected_size:
            demoted, demoted_item = protected.popitem(last=False)
            probation[demoted] = demoted_item
        return item

    def put(
        self, player_id: str, entry: CachedEntry, generation: int | None = None
    ) -> bool:
        """Insert an entry; skip it when an invalidation followed ``generation``.

        Returns True when the entry was inserted. An inserted entry may still
        be turned away later by the admission policy, when the window passes
        it on to a full main area.
        """
        if self.max_size == 0:
            return False
        if type(entry) is not tuple:
            entry = tuple(entry)  # type: ignore[assignment]
        expires_at = time.monotonic() + self.ttl_seconds if self.ttl_seconds else 0.0
        with self._lock:
            if generation is not None and generation != self.generation:
                return False
            self._insert(player_id, (expires_at, entry))
        return True

    def put_many(
        self, entries: list[tuple[str, CachedEntry]], generation: int | None = None
    ) -> int:
        """Insert several entries under one lock; return how many were inserted."""
        if self.max_size == 0 or not entries:
            return 0
        expires_at = time.monotonic() + self.ttl_seconds if self.ttl_seconds else 0.0
        with self._lock:
            if generation is not None and generation != self.generation:
                return 0
            for player_id, entry in entries:
                if type(entry) is not tuple:
                    entry = tuple(entry)  # type: ignore[assignment]
                self._insert(player_id, (expires_at, entry))
        return len(entries)

    def _insert(self, player_id: str, item: tuple[float, CachedEntry]) -> None:
        """Insert or replace an entry; the caller holds the lock."""
        protected = self._protected
        if player_id in protected:
            protected[player_id] = item
            protected.move_to_end(player_id)
            return
        probation = self._probation
        if player_id in probation:
            probation[player_id] = item
            probation.move_to_end(player_id)
            return
        window = self._window
        if player_id in window:
            window.move_to_end(player_id)
        window[player_id] = item
        if len(window) > self.window_size:
            candidate, candidate_item = window.popitem(last=False)
            self._admit(candidate, candidate_item)

    def _admit(self, candidate: str, item: tuple[float, CachedEntry]) -> None:
        """Move an entry from the window to the main area, or evict it."""
        probation = self._probation
        if len(probation) + len(self._protected) < self._main_size:
            probation[candidate] = item
            return
        # The victim is probation's least recently used entry, or protected's
        # when probation is empty (possible only with a tiny main area).
        victims = probation if probation else self._protected
        self.evictions += 1
        if not victims:
            return
        victim = next(iter(victims))
        estimate = self._sketch.estimate
        if estimate(hash(candidate)) > estimate(hash(victim)):
            del victims[victim]
            probation[candidate] = item
        else:
            self.rejections += 1

    def invalidate(self, player_ids: Iterable[str] | None) -> None:
        """Drop the entries of ``player_ids``, or every entry when None."""
        segments = (self._window, self._probation, self._protected)
        with self._lock:
            self.generation += 1
            if player_ids is None:
                for segment in segments:
                    self.invalidations += len(segment)
                    segment.clear()
                return
            for player_id in player_ids:
                for segment in segments:
                    if segment.pop(player_id, None) is not None:
                        self.invalidations += 1
                        break

    def hit_rate(self) -> float:
        """Return hits divided by lookups, 0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0
