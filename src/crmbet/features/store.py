"""The feature store: registered features for one or many players, fast.

:class:`EnterpriseFeatureStore` reads player states from an online store
(embedded or Redis, see :mod:`crmbet.features.online`), computes features
with the same functions the offline training path uses
(:func:`crmbet.features.definitions.compute_columns`) and keeps the computed
vectors in an in-process L1 cache (:mod:`crmbet.features.cache`).

Every value is exactly as of the response's ``as_of`` time, which defaults
to the store watermark (the newest event time seen). A player whose newest
event is older than the feature view's TTL, measured in event time from
``as_of``, is reported ``expired``. When the online store is unreachable
the store reports ``degraded`` and serves the players cached in L1. It
marks the other players ``unavailable`` and does not raise to the caller.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl

from crmbet.features.cache import (
    AS_OF_FIELD,
    LAST_EVENT_TS_FIELD,
    LAST_TS_FIELD,
    STATE_FIELD,
    VALUES_FIELD,
    VECTOR_FIELD,
    CachedEntry,
    L1Cache,
)
from crmbet.features.definitions import (
    FEATURES,
    RG_FEATURES,
    SEGMENTATION_FEATURES,
    compute_columns,
    lineage,
)
from crmbet.features.online import (
    FIELD_NAMES,
    LAST_TS,
    MemoryOnlineStore,
    OnlineStore,
    OnlineStoreUnavailableError,
    StoredValueError,
)

logger = logging.getLogger(__name__)

FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES)
_FEATURE_POSITION = {name: i for i, name in enumerate(FEATURE_NAMES)}
_DAY = 86400.0

Status = Literal["fresh", "expired", "unknown", "unavailable"]
Tier = Literal["l1", "l2", "none"]

# Codes of the batch path's per-player tier and status arrays, turned into
# the response's lists of names at the end by indexing these object arrays.
_NONE, _L1, _L2 = 0, 1, 2
_TIER_NAMES = np.array(["none", "l1", "l2"], dtype=object)
_UNKNOWN, _FRESH, _EXPIRED, _UNAVAILABLE = 0, 1, 2, 3
_STATUS_NAMES = np.array(["unknown", "fresh", "expired", "unavailable"], dtype=object)
#: Players per chunk of a large batch. Each chunk's L1 misses are one read.
BATCH_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class FeatureView:
    """A named set of features with an event-time TTL.

    ``ttl_seconds`` is compared with ``as_of - last_ts``, the time since the
    player's newest event; None means the view never expires.
    """

    name: str
    features: tuple[str, ...]
    ttl_seconds: float | None = None


#: Views every store starts with.
DEFAULT_VIEWS: dict[str, FeatureView] = {
    "all": FeatureView("all", FEATURE_NAMES, None),
    "segmentation": FeatureView("segmentation", SEGMENTATION_FEATURES, 180 * _DAY),
    "responsible_gambling": FeatureView("responsible_gambling", RG_FEATURES, 30 * _DAY),
}


@dataclass(frozen=True, slots=True)
class FeatureRequest:
    """Features requested for one or many players.

    Parameters
    ----------
    player_ids:
        One pseudonymised player id or a sequence of them.
    view:
        Feature view whose features and TTL apply.
    features:
        Subset of the view's features; all of them when None.
    features:
        Subset of the view's features, as a sequence of names or one name;
        all of them when None. Stored as a tuple.
    as_of:
        Unix time (seconds) at which to read the features; the store
        watermark when None. The online store keeps each player's newest
        state, so an ``as_of`` before a player's newest event gives values
        that include the later events. Build features at past times with
        :func:`crmbet.features.pit.point_in_time_features`.
    include_expired:
        Return the values of expired players too (still marked expired);
        by default their values are NaN.

    Raises
    ------
    TypeError
        When ``player_ids`` or ``features`` is of a type not listed above.
    ValueError
        When ``as_of`` is not a finite time from 0 to :data:`MAX_AS_OF`.
    """

    player_ids: str | Sequence[str]
    view: str = "all"
    features: tuple[str, ...] | None = None
    as_of: float | None = None
    include_expired: bool = False

    def __post_init__(self) -> None:
        # The one-player request with defaults passes three identity checks.
        if type(self.player_ids) is not str:
            _check_player_ids(self.player_ids)
        if self.features is not None:
            object.__setattr__(self, "features", _feature_names(self.features))
        if self.as_of is not None:
            _check_as_of(self.as_of)


#: Latest ``as_of`` accepted: 3000-01-01 in Unix seconds. A time in
#: milliseconds is larger than this for any date after 1971.
MAX_AS_OF = 32_503_680_000.0


def _check_player_ids(ids: object) -> None:
    # Only the first id's type is checked, so that a batch of 10,000 ids
    # costs no loop here. A list of numbers is the usual mistake.
    if (
        isinstance(ids, (bytes, bytearray, memoryview))
        or not isinstance(ids, (Sequence, np.ndarray, pl.Series))
        or (len(ids) and not isinstance(ids[0], str))
    ):
        raise TypeError(
            f"FeatureRequest.player_ids must be a str or a sequence of str, got "
            f"{type(ids).__name__} {ids!r:.60}"
        )


def _feature_names(features: object) -> tuple[str, ...]:
    if isinstance(features, str):
        return (features,)
    if isinstance(features, (Sequence, np.ndarray, pl.Series)) and not isinstance(
        features, (bytes, bytearray, memoryview)
    ):
        names = tuple(features)
        if not names:
            raise ValueError(
                "FeatureRequest.features is empty; name at least one feature, "
                "or pass None for every feature of the view"
            )
        if all(isinstance(name, str) for name in names):
            return names
    raise TypeError(
        f"FeatureRequest.features must be None, a feature name or a sequence of "
        f"feature names (str), got {type(features).__name__} {features!r:.60}"
    )


def _check_as_of(as_of: object) -> None:
    if isinstance(as_of, bool) or not isinstance(as_of, (int, float, np.number)):
        raise TypeError(
            f"FeatureRequest.as_of must be None or a number of Unix seconds, got "
            f"{type(as_of).__name__} {as_of!r:.60}"
        )
    if not 0.0 <= as_of <= MAX_AS_OF:
        hint = (
            "; it looks like milliseconds, so divide it by 1000"
            if as_of > MAX_AS_OF and math.isfinite(as_of)
            else ""
        )
        raise ValueError(
            f"FeatureRequest.as_of={as_of!r} is not a valid time: expected Unix "
            f"seconds, a finite number from 0 to {MAX_AS_OF:.0f} (year 3000)"
            f"{hint}"
        )


@dataclass(slots=True)
class FeatureResponse:
    """Feature values of the requested players, in request order.

    ``values`` has one row per player and one column per name in
    ``feature_names``, and rows of players without a value are NaN. The
    array may be read-only because it can share memory with the L1 cache,
    so copy it before changing it. ``status`` is ``fresh``, ``expired``,
    ``unknown`` (no events) or ``unavailable`` (the online store could not
    be reached). ``tier`` is where the value came from: ``l1``, ``l2`` (the
    online store) or ``none``.
    """

    player_ids: Sequence[str]
    feature_names: tuple[str, ...]
    values: np.ndarray
    status: list[Status]
    tier: list[Tier]
    last_event_ts: np.ndarray
    as_of: float
    degraded: bool = False

    def __len__(self) -> int:
        return len(self.player_ids)

    @property
    def freshness_seconds(self) -> np.ndarray:
        """Seconds from each player's newest event to ``as_of`` (NaN if unknown)."""
        return self.as_of - self.last_event_ts

    def get(self, player_id: str) -> dict[str, float] | None:
        """Return one player's values as a dict, or None without values."""
        try:
            row = list(self.player_ids).index(player_id)
        except ValueError:
            return None
        return self.row(row)

    def row(self, index: int) -> dict[str, float] | None:
        """Return the values of the ``index``-th player, or None without values."""
        values = self.values[index]
        if np.isnan(values).all() and len(values):
            return None
        return dict(zip(self.feature_names, values.tolist(), strict=True))

    def to_polars(self) -> pl.DataFrame:
        """Return the response as a table with status, tier and freshness."""
        columns = {name: self.values[:, i] for i, name in enumerate(self.feature_names)}
        return pl.DataFrame(
            {
                "player_id": list(self.player_ids),
                **columns,
                "status": self.status,
                "tier": self.tier,
                "freshness_seconds": self.freshness_seconds,
            }
        )


@dataclass
class _Latencies:
    """Recent request latencies per tier, in nanoseconds."""

    samples: dict[str, deque[int]] = field(
        default_factory=lambda: {
            name: deque(maxlen=100_000) for name in ("l1", "l2", "batch")
        }
    )

    def percentiles(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name, values in self.samples.items():
            if not values:
                continue
            micros = np.fromiter(values, dtype=np.float64) / 1000.0
            p50, p95, p99 = np.percentile(micros, [50, 95, 99])
            out[name] = {
                "count": len(micros),
                "p50_us": p50,
                "p95_us": p95,
                "p99_us": p99,
            }
        return out


class EnterpriseFeatureStore:
    """Registered features served from an L1 cache in front of an online store.

    Parameters
    ----------
    backend:
        The online store; an empty embedded store when None.
    l1_cache_size:
        Most players kept in the L1 cache; 0 disables it.
    l1_ttl_seconds:
        Wall-clock lifetime of an L1 entry. It bounds staleness when a
        change announcement is lost; normally an entry is dropped as soon as
        the player's state changes.
    views:
        Feature views by name; :data:`DEFAULT_VIEWS` when None.
    retry_interval_s:
        After a failed online-store call, seconds to serve L1 only before
        trying the online store again.
    l1_fill_max_players:
        Requests for more players than this read L1 but do not fill it, so
        a bulk scoring job does not evict the players that online traffic
        keeps asking for.

    Examples
    --------
    >>> import asyncio
    >>> store = EnterpriseFeatureStore()
    >>> response = asyncio.run(store.get_features(FeatureRequest("nobody")))
    >>> response.status
    ['unknown']
    """

    def __init__(
        self,
        backend: OnlineStore | None = None,
        *,
        l1_cache_size: int = 100_000,
        l1_ttl_seconds: float = 60.0,
        views: Mapping[str, FeatureView] | None = None,
        retry_interval_s: float = 1.0,
        l1_fill_max_players: int = 1000,
    ) -> None:
        self.backend: OnlineStore = (
            backend if backend is not None else MemoryOnlineStore()
        )
        self.l1 = L1Cache(l1_cache_size, l1_ttl_seconds)
        self.views = dict(views or DEFAULT_VIEWS)
        self.retry_interval_s = retry_interval_s
        self.l1_fill_max_players = l1_fill_max_players
        self._models: dict[str, tuple[str, ...]] = {}
        self._columns: dict[
            tuple[str, tuple[str, ...] | None],
            tuple[FeatureView, tuple[str, ...], np.ndarray | None],
        ] = {}
        self._latencies = _Latencies()
        self._l1_latencies = self._latencies.samples["l1"]
        self._l2_latencies = self._latencies.samples["l2"]
        self._counts = {
            "l2_hits": 0,
            "l2_unknown": 0,
            "unavailable": 0,
            "errors": 0,
            "expired": 0,
            "requests": 0,
        }
        self._degraded = False
        self._retry_at = 0.0
        self._last_error: str | None = None
        self.backend.add_listener(self.l1.invalidate)

    @classmethod
    def from_settings(
        cls, settings: Any, optimization: Any | None = None, **kwargs: Any
    ) -> EnterpriseFeatureStore:
        """Build a store from ``Settings`` (Redis when ``redis_url`` is set).

        ``optimization`` is any object with ``l1_cache_size`` and
        ``l1_ttl_seconds`` attributes, such as the pipeline's
        ``OptimizationConfig``. Without Redis, the embedded store loads the
        snapshot ``online_store.parquet`` under ``settings.home`` if present.
        """
        if optimization is not None:
            kwargs.setdefault("l1_cache_size", optimization.l1_cache_size)
            kwargs.setdefault("l1_ttl_seconds", optimization.l1_ttl_seconds)
        return cls(open_backend(settings), **kwargs)

    # -- requests ---------------------------------------------------------

    async def get_features(self, request: FeatureRequest) -> FeatureResponse:
        """Return the requested features, without raising when the store is down.

        An unreachable online store marks the players ``unavailable``
        instead. The work is synchronous and runs on the caller's loop,
        because an L1 hit takes microseconds and an online-store read one
        network round trip.

        Values are computed from each player's newest state. With a
        ``request.as_of`` earlier than a player's newest event they include
        events after ``as_of`` (``freshness_seconds`` is then negative); use
        :func:`crmbet.features.pit.point_in_time_features` for features as
        they were at a past time.
        """
        return self.get_features_sync(request)

    def get_features_sync(self, request: FeatureRequest) -> FeatureResponse:
        """Synchronous form of :meth:`get_features`."""
        started = time.perf_counter_ns()
        looked_up = isinstance(request.player_ids, str)
        if looked_up:
            served = self._serve_one(request, started)
            if served is not None:
                return served
        view, names, columns = self._resolve(request)
        ids = (
            (request.player_ids,)
            if isinstance(request.player_ids, str)
            else request.player_ids
        )
        as_of = (
            float(request.as_of)
            if request.as_of is not None
            else self.backend.watermark
        )
        n = len(ids)
        vectors = np.full((n, len(FEATURE_NAMES)), np.nan)
        last_ts = np.full(n, np.nan)
        tier_codes = np.zeros(n, dtype=np.int8)
        status_codes = np.zeros(n, dtype=np.int8)

        # L1 first; an entry computed at another as-of time is recomputed
        # from its cached state without a trip to the online store.
        fill_l1 = n <= self.l1_fill_max_players
        read_chunks = getattr(self.backend, "read_vector_chunks", None)
        pipelined = not (
            fill_l1 or read_chunks is None or time.monotonic() < self._retry_at
        )
        if pipelined:
            misses = self._read_large_batch(
                read_chunks, ids, as_of, vectors, last_ts, tier_codes, status_codes
            )
        else:
            cached = self.l1.get_many(ids, count=not looked_up, update=fill_l1)
            misses = [i for i, entry in enumerate(cached) if entry is None]
            if len(misses) < n:
                self._take_cached(cached, as_of, vectors, last_ts, tier_codes)
        if misses:
            self._read_misses(
                ids,
                misses,
                as_of,
                vectors,
                last_ts,
                tier_codes,
                status_codes,
                vectors_read=pipelined,
            )

        status_codes[tier_codes != _NONE] = _FRESH
        self._apply_ttl(
            view, as_of, last_ts, status_codes, request.include_expired, vectors
        )
        tiers: list[Tier] = _TIER_NAMES[tier_codes].tolist()
        response = FeatureResponse(
            player_ids=ids,
            feature_names=names,
            values=vectors if columns is None else vectors[:, columns],
            status=_STATUS_NAMES[status_codes].tolist(),
            tier=tiers,
            last_event_ts=last_ts,
            as_of=as_of,
            degraded=self._degraded,
        )
        self._record(started, n, tiers)
        return response

    def _read_large_batch(
        self,
        read_chunks: Any,
        ids: Sequence[str],
        as_of: float,
        vectors: np.ndarray,
        last_ts: np.ndarray,
        tier_codes: np.ndarray,
        status_codes: np.ndarray,
    ) -> list[int]:
        """Serve a large batch from L1 and its misses' stored vectors, overlapped.

        The batch goes in chunks of :data:`BATCH_CHUNK` players. Each chunk
        is looked up in L1 without changing what L1 keeps. Its hits are
        copied into the response and its misses sent to the online store as
        one read before the next chunk is looked up, so the store serves one
        chunk while this thread prepares the next. Fills the rows of the L1
        hits and of the players whose stored vector is as of ``as_of``, and
        returns the rows still to read.
        """
        n = len(ids)
        get_many = self.l1.get_many
        take_cached = self._take_cached
        miss_rows: list[np.ndarray] = []
        # Per chunk, the rows left for a state read and the rows served. A
        # chunk may arrive twice after a reconnection, so these overwrite.
        unserved: dict[int, np.ndarray] = {}
        served_counts: dict[int, int] = {}
        unreadable_counts: dict[int, int] = {}

        # A short first chunk, so that the store starts working sooner.
        bounds = [0, *range(min(BATCH_CHUNK // 4, n), n, BATCH_CHUNK), n]

        def miss_chunks() -> Iterator[list[str]]:
            for start, end in itertools.pairwise(bounds):
                found = get_many(ids[start:end], update=False)
                rows = [start + j for j, entry in enumerate(found) if entry is None]
                if len(rows) < len(found):
                    take_cached(
                        found,
                        as_of,
                        vectors[start:end],
                        last_ts[start:end],
                        tier_codes[start:end],
                    )
                miss_rows.append(np.array(rows, dtype=np.intp))
                yield [ids[i] for i in rows]

        def receive(index: int, got: Any) -> None:
            rows = miss_rows[index]
            if got.unreadable is not None:
                # Those players' states are read next, and served from them.
                unreadable_counts[index] = int(got.unreadable.sum())
            usable = got.found & (got.vector_as_of == as_of)
            if usable.all():
                vectors[rows] = got.vectors
                last_ts[rows] = got.last_ts
                tier_codes[rows] = _L2
                served_counts[index] = len(rows)
                return
            targets = rows[usable]
            vectors[targets] = got.vectors[usable]
            last_ts[targets] = got.last_ts[usable]
            tier_codes[targets] = _L2
            served_counts[index] = len(targets)
            unserved[index] = rows[~usable]

        chunks = miss_chunks()
        try:
            read_chunks(chunks, receive)
        except OnlineStoreUnavailableError as error:
            # Finish the L1 lookups, then serve what L1 has.
            for _ in chunks:
                pass
            self._enter_degraded(error)
            self._counts["l2_hits"] += sum(served_counts.values())
            unread = [
                int(i) for rows in miss_rows for i in rows if tier_codes[i] == _NONE
            ]
            self._mark_unavailable(unread, status_codes)
            return []
        if self._degraded:
            self._leave_degraded()
        self._counts["l2_hits"] += sum(served_counts.values())
        self._counts["errors"] += sum(unreadable_counts.values())
        left = [unserved[index] for index in sorted(unserved)]
        return np.concatenate(left).tolist() if left else []

    @staticmethod
    def _take_cached(
        cached: list[CachedEntry | None],
        as_of: float,
        vectors: np.ndarray,
        last_ts: np.ndarray,
        tier_codes: np.ndarray,
    ) -> None:
        """Copy the L1 entries into the batch arrays, recomputing other as-of times."""
        rows = [i for i, entry in enumerate(cached) if entry is not None]
        entries: list[CachedEntry] = [cached[i] for i in rows]  # type: ignore[misc]
        tier_codes[rows] = _L1
        last_ts[rows] = [entry[LAST_TS_FIELD] for entry in entries]
        current = [j for j, entry in enumerate(entries) if entry[AS_OF_FIELD] == as_of]
        if current:
            vectors[[rows[j] for j in current]] = [
                entries[j][VECTOR_FIELD] for j in current
            ]
        if len(current) < len(rows):
            stale = [
                j for j, entry in enumerate(entries) if entry[AS_OF_FIELD] != as_of
            ]
            vectors[[rows[j] for j in stale]] = compute_matrix(
                np.vstack([entries[j][STATE_FIELD] for j in stale]), as_of
            )
            # NOTE: the recomputed vectors are not cached; a request at
            # another as-of time should not evict the watermark vectors.

    def _resolve(
        self, request: FeatureRequest
    ) -> tuple[FeatureView, tuple[str, ...], np.ndarray | None]:
        """Return the view, the feature names and their columns (None: all)."""
        key = (request.view, request.features)
        resolved = self._columns.get(key)
        if resolved is not None:
            return resolved
        view = self.views.get(request.view)
        if view is None:
            raise KeyError(
                f"unknown feature view {request.view!r}; "
                f"choose one of {sorted(self.views)}"
            )
        names = request.features if request.features is not None else view.features
        outside = [name for name in names if name not in view.features]
        if outside:
            raise KeyError(
                f"feature(s) {outside} are not in view {view.name!r}; request them "
                f"through view 'all' or one of {sorted(self.views)}"
            )
        positions = [_FEATURE_POSITION[name] for name in names]
        columns = (
            None
            if positions == list(range(len(FEATURE_NAMES)))
            else np.array(positions, dtype=np.intp)
        )
        resolved = (view, tuple(names), columns)
        self._columns[key] = resolved
        return resolved

    def _serve_one(
        self, request: FeatureRequest, started: int
    ) -> FeatureResponse | None:
        """Serve a one-player request from L1 or one online-store read.

        This path builds no per-request arrays on an L1 hit. It returns None
        when the batch path must serve the request: the L1 entry is at
        another as-of time or expired, the backend has no one-player read,
        or the store waits out the retry interval after a failure.
        """
        resolved = self._columns.get((request.view, request.features))
        if resolved is None:
            resolved = self._resolve(request)
        player_id: str = request.player_ids  # type: ignore[assignment]
        entry = self.l1.get(player_id)
        if entry is None:
            return self._serve_one_from_l2(request, player_id, resolved, started)
        as_of = self.backend.watermark if request.as_of is None else request.as_of
        if entry[AS_OF_FIELD] != as_of:
            return None
        view, names, columns = resolved
        ttl = view.ttl_seconds
        if ttl is not None and as_of - entry[LAST_TS_FIELD] > ttl:
            return None
        values = entry[VALUES_FIELD]
        last_event_ts = entry[LAST_EVENT_TS_FIELD]
        if values is None or columns is not None:
            vector = entry[VECTOR_FIELD]
            if columns is not None:
                vector = vector[columns]
            values = vector.reshape(1, -1)
        if last_event_ts is None:
            last_event_ts = np.array([entry[LAST_TS_FIELD]])
        response = FeatureResponse(
            (player_id,),
            names,
            values,
            ["fresh"],
            ["l1"],
            last_event_ts,
            as_of,
            self._degraded,
        )
        self._counts["requests"] += 1
        self._l1_latencies.append(time.perf_counter_ns() - started)
        return response

    def _serve_one_from_l2(
        self,
        request: FeatureRequest,
        player_id: str,
        resolved: tuple[FeatureView, tuple[str, ...], np.ndarray | None],
        started: int,
    ) -> FeatureResponse | None:
        """Serve an L1 miss with the backend's one-player read, then cache it."""
        read_player = getattr(self.backend, "read_player", None)
        if read_player is None or time.monotonic() < self._retry_at:
            return None
        view, names, columns = resolved
        generation = self.l1.generation
        try:
            stored = read_player(player_id)
        except OnlineStoreUnavailableError as error:
            self._enter_degraded(error)
            self._counts["unavailable"] += 1
            return self._one_without_value(request, names, "unavailable", started)
        except StoredValueError:
            # The backend logged the key. Redis is reachable, so the store
            # does not enter degraded mode.
            self._counts["errors"] += 1
            self._counts["unavailable"] += 1
            return self._one_without_value(request, names, "unavailable", started)
        if self._degraded:
            self._leave_degraded()
        if stored is None:
            self._counts["l2_unknown"] += 1
            return self._one_without_value(request, names, "unknown", started)

        state, vector, vector_as_of = stored
        as_of = (
            self.backend.watermark if request.as_of is None else float(request.as_of)
        )
        if vector is None or vector_as_of != as_of:
            vector = compute_matrix(state.reshape(1, -1), as_of)[0]
            vector.setflags(write=False)
        last_ts = float(state[LAST_TS])
        # Responses share these arrays with the cache, so they are read-only.
        # The state's view is used when the state is read-only already.
        last_event_ts = state[LAST_TS : LAST_TS + 1]
        if last_event_ts.flags.writeable:
            last_event_ts = np.array([last_ts])
            last_event_ts.setflags(write=False)
        row = vector.reshape(1, -1)
        counts = self._counts
        counts["l2_hits"] += 1
        self.l1.put(
            player_id,
            (state, vector, as_of, last_ts, row, last_event_ts),
            generation,
        )

        status: Status = "fresh"
        values = row if columns is None else vector[columns].reshape(1, -1)
        ttl = view.ttl_seconds
        if ttl is not None and as_of - last_ts > ttl:
            status = "expired"
            counts["expired"] += 1
            if not request.include_expired:
                values = np.full((1, len(names)), np.nan)
        response = FeatureResponse(
            (player_id,),
            names,
            values,
            [status],
            ["l2"],
            last_event_ts,
            as_of,
            self._degraded,
        )
        counts["requests"] += 1
        self._l2_latencies.append(time.perf_counter_ns() - started)
        return response

    def _one_without_value(
        self,
        request: FeatureRequest,
        names: tuple[str, ...],
        status: Status,
        started: int,
    ) -> FeatureResponse:
        """Build the response for one unknown or unavailable player."""
        as_of = (
            float(request.as_of)
            if request.as_of is not None
            else self.backend.watermark
        )
        response = FeatureResponse(
            (request.player_ids,),  # type: ignore[arg-type]
            names,
            np.full((1, len(names)), np.nan),
            [status],
            ["none"],
            np.full(1, np.nan),
            as_of,
            self._degraded,
        )
        self._record(started, 1, response.tier)
        return response

    def _read_misses(
        self,
        ids: Sequence[str],
        misses: list[int],
        as_of: float,
        vectors: np.ndarray,
        last_ts: np.ndarray,
        tier_codes: np.ndarray,
        status_codes: np.ndarray,
        vectors_read: bool = False,
    ) -> None:
        # Within the retry interval after a failure, do not wait on Redis.
        if time.monotonic() < self._retry_at:
            self._mark_unavailable(misses, status_codes)
            return

        # Large batches read the vector-only values first, then the states of
        # the players whose vector is not as of the requested time.
        generation = self.l1.generation
        fill_l1 = len(ids) <= self.l1_fill_max_players
        try:
            if not (fill_l1 or vectors_read) and hasattr(self.backend, "read_vectors"):
                misses = self._read_stored_vectors(
                    ids, misses, as_of, vectors, last_ts, tier_codes
                )
            miss_ids = [ids[i] for i in misses]
            stored = self.backend.read_players(miss_ids) if misses else None
        except OnlineStoreUnavailableError as error:
            self._enter_degraded(error)
            unread = [i for i in misses if tier_codes[i] == _NONE]
            self._mark_unavailable(unread, status_codes)
            return
        if self._degraded:
            self._leave_degraded()
        if stored is None:
            return
        unreadable = getattr(stored, "unreadable", None)
        bad = 0
        if unreadable is not None and unreadable.any():
            bad_rows = np.flatnonzero(unreadable)
            bad = len(bad_rows)
            self._counts["errors"] += bad
            self._mark_unavailable(
                np.asarray(misses, dtype=np.intp)[bad_rows].tolist(), status_codes
            )

        # Compute or take the vectors of the players found, then cache them.
        found = stored.found
        hit_rows = np.flatnonzero(found)
        self._counts["l2_hits"] += len(hit_rows)
        self._counts["l2_unknown"] += len(misses) - len(hit_rows) - bad
        if not len(hit_rows):
            return
        states = stored.states[hit_rows]
        computed = self._vectors_for(stored, hit_rows, states, as_of)
        # Cached rows are shared with callers of the one-player path.
        computed.setflags(write=False)
        targets = np.asarray(misses, dtype=np.intp)[hit_rows]
        vectors[targets] = computed
        last_ts[targets] = states[:, LAST_TS]
        tier_codes[targets] = _L2
        if fill_l1:
            found_ids = [miss_ids[row] for row in hit_rows.tolist()]
            self._fill_l1(found_ids, states, computed, as_of, generation)

    def _fill_l1(
        self,
        player_ids: list[str],
        states: np.ndarray,
        computed: np.ndarray,
        as_of: float,
        generation: int,
    ) -> None:
        # One-row views for the one-player path; both arrays are read-only
        # because responses share them with the cache.
        last_ts = states[:, LAST_TS].copy()
        last_ts.setflags(write=False)
        entries = [
            (
                player,
                (
                    states[j],
                    computed[j],
                    as_of,
                    float(last_ts[j]),
                    computed[j : j + 1],
                    last_ts[j : j + 1],
                ),
            )
            for j, player in enumerate(player_ids)
        ]
        self.l1.put_many(entries, generation)

    def _read_stored_vectors(
        self,
        ids: Sequence[str],
        misses: list[int],
        as_of: float,
        vectors: np.ndarray,
        last_ts: np.ndarray,
        tier_codes: np.ndarray,
    ) -> list[int]:
        """Serve the misses whose stored vector is as of ``as_of``; return the rest."""
        got = self.backend.read_vectors([ids[i] for i in misses])  # type: ignore[attr-defined]
        if got.unreadable is not None:
            # Those players' states are read next, and served from them.
            self._counts["errors"] += int(got.unreadable.sum())
        usable = got.found & (got.vector_as_of == as_of)
        served = np.flatnonzero(usable)
        targets = np.asarray(misses, dtype=np.intp)[served]
        vectors[targets] = got.vectors[served]
        last_ts[targets] = got.last_ts[served]
        tier_codes[targets] = _L2
        self._counts["l2_hits"] += len(served)
        return [misses[k] for k in np.flatnonzero(~usable).tolist()]

    @staticmethod
    def _vectors_for(
        stored: Any, hit_rows: np.ndarray, states: np.ndarray, as_of: float
    ) -> np.ndarray:
        """Use the vectors stored at write time where their as-of matches."""
        if stored.vectors is None:
            return compute_matrix(states, as_of)
        vectors = stored.vectors[hit_rows].copy()
        recompute = stored.vector_as_of[hit_rows] != as_of
        if recompute.any():
            vectors[recompute] = compute_matrix(states[recompute], as_of)
        return vectors

    def _enter_degraded(self, error: Exception) -> None:
        self._retry_at = time.monotonic() + self.retry_interval_s
        self._counts["errors"] += 1
        self._last_error = str(error)
        if not self._degraded:
            logger.warning("online store unreachable, serving L1 only: %s", error)
        self._degraded = True

    def _leave_degraded(self) -> None:
        self._degraded = False
        logger.info(
            "online store %s is reachable again; leaving degraded mode",
            self.backend.backend,
        )

    def _mark_unavailable(self, rows: list[int], status_codes: np.ndarray) -> None:
        status_codes[rows] = _UNAVAILABLE
        self._counts["unavailable"] += len(rows)

    def _apply_ttl(
        self,
        view: FeatureView,
        as_of: float,
        last_ts: np.ndarray,
        status_codes: np.ndarray,
        include_expired: bool,
        vectors: np.ndarray,
    ) -> None:
        if view.ttl_seconds is None:
            return
        with np.errstate(invalid="ignore"):
            expired = np.flatnonzero(as_of - last_ts > view.ttl_seconds)
        status_codes[expired] = _EXPIRED
        if len(expired) and not include_expired:
            vectors[expired] = np.nan
        self._counts["expired"] += len(expired)

    def _record(self, started: int, n: int, tiers: list[Tier]) -> None:
        elapsed = time.perf_counter_ns() - started
        self._counts["requests"] += 1
        if n == 1:
            self._latencies.samples["l1" if tiers[0] == "l1" else "l2"].append(elapsed)
        else:
            self._latencies.samples["batch"].append(elapsed)

    # -- writes -----------------------------------------------------------

    def refresh(self, player_ids: Sequence[str] | None = None) -> None:
        """Drop L1 entries so the next reads go to the online store."""
        self.l1.invalidate(player_ids)

    # -- lineage and statistics ---------------------------------------------

    def register_model(self, name: str, feature_names: Sequence[str]) -> None:
        """Record that model ``name`` reads ``feature_names``, for lineage."""
        self._models[name] = tuple(feature_names)

    def get_feature_lineage(self, name: str) -> dict[str, Any]:
        """Return raw fields, state fields, related features, views and models."""
        info: dict[str, Any] = lineage(name)
        info["dependent_features"] = info["features_sharing_state"]
        info["feature_views"] = sorted(
            view.name for view in self.views.values() if name in view.features
        )
        models = sorted(model for model, names in self._models.items() if name in names)
        if info["in_segmentation"]:
            models.append("segmentation (default feature set)")
        if info["in_responsible_gambling"]:
            models.append("responsible-gambling risk scores")
        info["models"] = models
        return info

    def get_performance_stats(self) -> dict[str, Any]:
        """Return L1 and L2 hit rates, latency percentiles and error counts."""
        counts = dict(self._counts)
        l2_lookups = counts["l2_hits"] + counts["l2_unknown"]
        return {
            "l1": {
                "hits": self.l1.hits,
                "misses": self.l1.misses,
                "hit_rate": self.l1.hit_rate(),
                "size": len(self.l1),
                "max_size": self.l1.max_size,
                "ttl_seconds": self.l1.ttl_seconds,
                "evictions": self.l1.evictions,
                "invalidations": self.l1.invalidations,
            },
            "l2": {
                "backend": self.backend.backend,
                "hits": counts["l2_hits"],
                "unknown": counts["l2_unknown"],
                "hit_rate": counts["l2_hits"] / l2_lookups if l2_lookups else 0.0,
            },
            "latency": self._latencies.percentiles(),
            "requests": counts["requests"],
            "expired": counts["expired"],
            "unavailable": counts["unavailable"],
            "errors": counts["errors"],
        }

    def close(self) -> None:
        """Stop the backend's invalidation thread and close its connections."""
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def health(self) -> dict[str, Any]:
        """Return ``healthy``, or ``degraded`` with the last online-store error.

        A healthy online store ends degraded mode at once, so the next
        request reads it without waiting out the retry interval.
        """
        backend = self.backend.health()
        if self._degraded and backend["status"] == "healthy":
            self._retry_at = 0.0
            self._leave_degraded()
        degraded = self._degraded or backend["status"] != "healthy"
        return {
            "status": "degraded" if degraded else "healthy",
            "online_store": backend,
            "l1_size": len(self.l1),
            "last_error": self._last_error if degraded else None,
        }


def compute_matrix(states: np.ndarray, as_of: float) -> np.ndarray:
    """Compute every registered feature for a state matrix at ``as_of``."""
    columns = compute_columns(dict(zip(FIELD_NAMES, states.T, strict=True)), as_of)
    return np.column_stack([columns[name] for name in FEATURE_NAMES])


def open_backend(settings: Any) -> OnlineStore:
    """Open the online store the settings select: Redis or the embedded one."""
    if settings.redis_url is not None:
        from crmbet.features.redis_store import RedisOnlineStore

        return RedisOnlineStore(settings.redis_url.get_secret_value())
    snapshot = settings.home / "online_store.parquet"
    if snapshot.exists():
        return MemoryOnlineStore.from_snapshot(snapshot)
    return MemoryOnlineStore()
