"""Redis online store: keys per player with its state and feature vector.

Key space (``{ns}`` is the namespace, ``crmbet`` by default, and ``v1`` the
state schema version, so a new layout never reads an old one):

- ``{ns}:v1:state:{player_id}``: the packed float64 array
  ``[layout, vector_as_of, *state fields, *feature values]``, where the
  features were computed at ``vector_as_of``, the watermark when written;
- ``{ns}:v1:vector:{player_id}``: ``[layout, vector_as_of, last_ts,
  *feature values]`` alone, a quarter of the size, for large batches;
- ``{ns}:v1:applied:{player_id}``: the ids of the player's newest applied
  events, joined by ``\\x1f``, read only by materialisation;
- ``{ns}:v1:meta``: a hash with the store watermark;
- ``{ns}:v1:invalidate``: the pub/sub channel that announces changed players.

A read is one ``GET`` for one player, or one pipeline of ``MGET``s of
:data:`READ_CHUNK` keys for a batch, plus the watermark unless the
invalidation subscription is live. Writes are one pipeline per chunk of
players. The client is redis-py with the hiredis
parser over RESP2. Reads go through one dedicated connection and commands
packed by hiredis, which skips the connection pool's per-command checks
and redis-py's per-argument encoding. The fixed-size values let a whole
batch be decoded with one ``numpy.frombuffer``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Any

import hiredis
import numpy as np
import orjson
import polars as pl
import redis

from crmbet.features.definitions import FEATURES, compute_columns
from crmbet.features.online import (
    FIELD_NAMES,
    LAST_TS,
    AppliedMark,
    InvalidationListener,
    OnlineStoreUnavailableError,
    StoredPlayers,
    matrix_frame,
    states_matrix,
)
from crmbet.features.state import STATE_SCHEMA_VERSION, empty_states, merge

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoredVectors:
    """Feature vectors read for a list of players, in request order (NaN if missing)."""

    found: np.ndarray
    vectors: np.ndarray
    vector_as_of: np.ndarray
    last_ts: np.ndarray


FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES)
N_FIELDS = len(FIELD_NAMES)
N_FEATURES = len(FEATURE_NAMES)
#: First element of every packed value; a value with another layout is rejected.
LAYOUT = float(N_FIELDS * 1000 + N_FEATURES)
ROW_LENGTH = 2 + N_FIELDS + N_FEATURES
#: Layout of the vector-only values: ``[layout, vector_as_of, last_ts, *features]``.
VECTOR_LAYOUT = float(3000 + N_FEATURES)
VECTOR_LENGTH = 3 + N_FEATURES
WRITE_CHUNK = 2000
#: Keys per MGET of a pipelined read. Redis serves one chunk while the
#: client builds the next command or parses the previous reply.
READ_CHUNK = 1000
MARK_SEPARATOR = "\x1f"

# Raises the stored watermark only when the new one is newer, atomically.
_RAISE_WATERMARK = """
local current = tonumber(redis.call('HGET', KEYS[1], 'watermark') or '0')
if tonumber(ARGV[1]) > current then
  redis.call('HSET', KEYS[1], 'watermark', ARGV[1])
  return ARGV[1]
end
return tostring(current)
"""


def _mget(prefix: str, player_ids: Sequence[str]) -> Iterator[tuple[bytes | str, ...]]:
    """Yield ``MGET`` commands for the keys ``prefix + id``, in chunks."""
    for start in range(0, len(player_ids), READ_CHUNK):
        chunk = player_ids[start : start + READ_CHUNK]
        yield (b"MGET", *[prefix + pid for pid in chunk])


def _layout_error(prefix: str, layout: float) -> ValueError:
    return ValueError(
        f"Redis values under {prefix}* do not have the layout {layout:.0f}; "
        "another crmbet version wrote them, so use another namespace or "
        "re-materialise the store"
    )


class RedisOnlineStore:
    """Online store backed by Redis.

    Parameters
    ----------
    url:
        Redis URL, normally ``Settings.redis_url`` (``CRMBET_REDIS_URL``).
    namespace:
        First part of every key, so several stores can share one database.
    key_ttl_seconds:
        Wall-clock retention of a player's keys after its last write; None
        keeps them until overwritten. Event-time expiry of feature views is
        applied on read by the feature store, not here.
    socket_timeout:
        Seconds a read may take before the store counts Redis as down.
    write_timeout:
        Seconds a write pipeline of up to 2,000 players may take. Writes
        use a connection of their own, so bulk loads do not need the short
        read timeout.
    """

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "crmbet",
        key_ttl_seconds: float | None = None,
        socket_timeout: float = 0.5,
        write_timeout: float = 30.0,
    ) -> None:
        self.namespace = namespace
        self.key_ttl_seconds = key_ttl_seconds
        prefix = f"{namespace}:v{STATE_SCHEMA_VERSION}"
        self._state_prefix = f"{prefix}:state:"
        self._applied_prefix = f"{prefix}:applied:"
        self._vector_prefix = f"{prefix}:vector:"
        self._meta_key = f"{prefix}:meta"
        self.channel = f"{prefix}:invalidate"
        self._client = redis.Redis.from_url(
            url,
            protocol=2,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry_on_timeout=False,
        )
        self._writer = redis.Redis.from_url(
            url,
            protocol=2,
            socket_timeout=write_timeout,
            socket_connect_timeout=socket_timeout,
            retry_on_timeout=False,
        )
        self._raise_watermark = self._writer.register_script(_RAISE_WATERMARK)
        # The request path's connection, outside the pool; it connects on
        # first use and again after any failed call.
        pool = self._client.connection_pool
        self._reader = pool.connection_class(**pool.connection_kwargs)
        self._read_lock = threading.Lock()
        self._watermark = 0.0
        self._listeners: list[InvalidationListener | Callable[[None], None]] = []
        self._listener_thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: Set while the invalidation thread has a live subscription.
        self.subscribed = threading.Event()
        self.last_error: str | None = None
        try:
            self.refresh_watermark()
        except OnlineStoreUnavailableError:
            logger.warning("Redis is unreachable at start; the store starts degraded")

    # -- plumbing ---------------------------------------------------------

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as error:
            self.last_error = f"{type(error).__name__}: {error}"
            raise OnlineStoreUnavailableError(
                f"Redis online store failed to {action}: {error}; check that the "
                "server in CRMBET_REDIS_URL is running and reachable"
            ) from error
        self.last_error = None

    def _execute(self, commands: Iterable[tuple[bytes | str, ...]]) -> list[Any]:
        """Send ``commands`` on the read connection and return their replies.

        Each command is packed by hiredis (str arguments become UTF-8) and
        sent as soon as ``commands`` yields it, before any reply is read, so
        Redis works on one command while this thread builds the next. The
        caller wraps the call in :meth:`_guard`. Any failure drops the
        connection, so a reply left unread is never read as the reply to a
        later command.
        """
        pending = iter(commands)
        packed: list[bytes] = []
        with self._read_lock:
            connection = self._reader
            try:
                for command in pending:
                    packed.append(hiredis.pack_command(command))
                    connection.send_packed_command(packed[-1:], check_health=False)
                return [connection.read_response() for _ in packed]
            except redis.ConnectionError:
                # The server may have closed an idle connection or restarted.
                # Reads are idempotent, so retry once on a new connection.
                connection.disconnect()
            except BaseException:
                connection.disconnect()
                raise
            try:
                packed.extend(hiredis.pack_command(command) for command in pending)
                connection.send_packed_command(packed, check_health=False)
                return [connection.read_response() for _ in packed]
            except BaseException:
                connection.disconnect()
                raise

    def state_key(self, player_id: str) -> str:
        """Return the Redis key of one player's state."""
        return self._state_prefix + player_id

    @property
    def watermark(self) -> float:
        """Newest event time seen by any writer, as last read from Redis."""
        return self._watermark

    def refresh_watermark(self) -> float:
        """Read the watermark from Redis and return it."""
        with self._guard("read the watermark"):
            value = self._client.hget(self._meta_key, "watermark")
        self._watermark = max(self._watermark, float(value or 0.0))
        return self._watermark

    def ping(self) -> bool:
        """Return True when Redis replies to a PING."""
        try:
            with self._guard("ping"):
                return bool(self._client.ping())
        except OnlineStoreUnavailableError:
            return False

    def health(self) -> dict[str, Any]:
        """Return ``healthy`` when Redis replies to a PING, else ``degraded``."""
        up = self.ping()
        return {
            "status": "healthy" if up else "degraded",
            "backend": self.backend,
            "namespace": self.namespace,
            "watermark": self._watermark,
            "last_error": self.last_error,
        }

    def __len__(self) -> int:
        # NOTE: a SCAN over the namespace, O(keys in the database); for the CLI
        # and tests, not for request paths.
        with self._guard("count players"):
            return sum(
                1 for _ in self._client.scan_iter(self._state_prefix + "*", 1000)
            )

    # -- reads ------------------------------------------------------------

    def read_players(self, player_ids: Sequence[str]) -> StoredPlayers:
        """Read states and stored feature vectors with pipelined MGETs."""
        if not player_ids:
            values: list[bytes | None] = []
        else:
            replies = self._read_values(_mget(self._state_prefix, player_ids))
            values = [*chain.from_iterable(replies)]
        rows, found = self._decode(values, ROW_LENGTH, LAYOUT, self._state_prefix)
        return StoredPlayers(
            states=rows[:, 2 : 2 + N_FIELDS],
            found=found,
            vectors=rows[:, 2 + N_FIELDS :],
            vector_as_of=rows[:, 1],
        )

    def read_player(
        self, player_id: str
    ) -> tuple[np.ndarray, np.ndarray, float] | None:
        """Read one player's state and stored feature vector with one ``GET``.

        Returns ``(state, vector, vector_as_of)`` as read-only views of the
        stored value, or None for an unknown player.
        """
        (value,) = self._read_values([(b"GET", self._state_prefix + player_id)])
        if value is None:
            return None
        row = np.frombuffer(value, np.float64)
        if row.size != ROW_LENGTH or row[0] != LAYOUT:
            raise _layout_error(self._state_prefix, LAYOUT)
        return row[2 : 2 + N_FIELDS], row[2 + N_FIELDS :], float(row[1])

    def _read_values(self, commands: Iterable[tuple[bytes | str, ...]]) -> list[Any]:
        """Run read commands and return their replies.

        Unless the subscription is live, the watermark is read in the same
        round trip.
        """
        with self._guard("read player states"):
            if self.subscribed.is_set():
                # The subscription delivers every new watermark with the
                # change announcements, so only the values are read.
                replies = self._execute(commands)
                watermark = None
            else:
                *replies, watermark = self._execute(
                    chain(commands, [(b"HGET", self._meta_key, b"watermark")])
                )
        if watermark is not None:
            self._watermark = max(self._watermark, float(watermark))
        return replies

    def read_vectors(self, player_ids: Sequence[str]) -> StoredVectors:
        """Read only the stored feature vectors, a quarter of the state values' size.

        A batch whose as-of time equals the vectors' needs nothing else; the
        feature store reads the states of the other players.
        """
        with self._guard("read feature vectors"):
            replies = self._execute(_mget(self._vector_prefix, player_ids))
        values = [*chain.from_iterable(replies)]
        rows, found = self._decode(
            values, VECTOR_LENGTH, VECTOR_LAYOUT, self._vector_prefix
        )
        return StoredVectors(found, rows[:, 3:], rows[:, 1], rows[:, 2])

    @staticmethod
    def _decode(
        values: list[bytes | None], length: int, layout: float, prefix: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decode fixed-size packed values with one frombuffer call."""
        n = len(values)
        missing = values.count(None)
        if missing == n:
            return np.full((n, length), np.nan), np.zeros(n, dtype=bool)
        if missing:
            found = np.array([v is not None for v in values], dtype=bool)
            data = b"".join([v for v in values if v is not None])
        else:
            found = np.ones(n, dtype=bool)
            data = b"".join(values)  # type: ignore[arg-type]
        decoded = np.frombuffer(data, np.float64)
        if decoded.size != (n - missing) * length:
            raise _layout_error(prefix, layout)
        decoded = decoded.reshape(-1, length)
        if np.any(decoded[:, 0] != layout):
            raise _layout_error(prefix, layout)
        if not missing:
            return decoded, found
        rows = np.full((n, length), np.nan)
        rows[found] = decoded
        return rows, found

    def get_state(self, player_id: str) -> dict[str, float] | None:
        """Return one player's state, or None for an unknown player."""
        stored = self.read_players([player_id])
        if not stored.found[0]:
            return None
        return dict(zip(FIELD_NAMES, stored.states[0].tolist(), strict=True))

    def get_states_frame(self, player_ids: Sequence[str]) -> pl.DataFrame:
        """Return the stored states of the known players among ``player_ids``."""
        ids = list(player_ids)
        if not ids:
            return empty_states()
        stored = self.read_players(ids)
        known = [pid for pid, hit in zip(ids, stored.found, strict=True) if hit]
        return matrix_frame(known, stored.states[stored.found])

    def applied_marks(self, player_ids: Sequence[str]) -> dict[str, AppliedMark]:
        """Return the newest applied event marks of the known players."""
        ids = list(player_ids)
        marks: dict[str, AppliedMark] = {}
        for start in range(0, len(ids), WRITE_CHUNK):
            chunk = ids[start : start + WRITE_CHUNK]
            stored = self.read_players(chunk)
            with self._guard("read applied event ids"):
                applied = self._client.mget(
                    [self._applied_prefix + pid for pid in chunk]
                )
            for i, pid in enumerate(chunk):
                if stored.found[i]:
                    text = (applied[i] or b"").decode()
                    event_ids = (
                        frozenset(text.split(MARK_SEPARATOR)) if text else frozenset()
                    )
                    marks[pid] = AppliedMark(
                        float(stored.states[i, LAST_TS]), event_ids
                    )
        return marks

    # -- writes -----------------------------------------------------------

    def put_states(
        self,
        states: pl.DataFrame,
        applied: Mapping[str, AppliedMark] | None = None,
    ) -> None:
        """Write states and their feature vectors, then announce the players."""
        if states.height == 0:
            return
        ids = states["player_id"].to_list()
        matrix = states_matrix(states)
        watermark = max(self._watermark, float(matrix[:, LAST_TS].max()))
        features = compute_columns(
            dict(zip(FIELD_NAMES, matrix.T, strict=True)), watermark
        )
        packed = np.empty((len(ids), ROW_LENGTH))
        packed[:, 0] = LAYOUT
        packed[:, 1] = watermark
        packed[:, 2 : 2 + N_FIELDS] = matrix
        packed[:, 2 + N_FIELDS :] = np.column_stack(
            [features[n] for n in FEATURE_NAMES]
        )
        expiry = (
            None if self.key_ttl_seconds is None else int(self.key_ttl_seconds * 1000)
        )
        with self._guard("write player states"):
            for start in range(0, len(ids), WRITE_CHUNK):
                chunk = ids[start : start + WRITE_CHUNK]
                self._write_chunk(
                    chunk,
                    packed[start : start + WRITE_CHUNK],
                    applied,
                    expiry,
                    watermark,
                )
        self._watermark = watermark
        self._dispatch(ids)

    def _write_chunk(
        self,
        ids: list[str],
        rows: np.ndarray,
        applied: Mapping[str, AppliedMark] | None,
        expiry_ms: int | None,
        watermark: float,
    ) -> None:
        pipe = self._writer.pipeline(transaction=False)
        vectors = np.empty((len(ids), VECTOR_LENGTH))
        vectors[:, 0] = VECTOR_LAYOUT
        vectors[:, 1] = rows[:, 1]
        vectors[:, 2] = rows[:, 2 + LAST_TS]
        vectors[:, 3:] = rows[:, 2 + N_FIELDS :]
        for pid, row, vector in zip(ids, rows, vectors, strict=True):
            pipe.set(self._state_prefix + pid, row.tobytes(), px=expiry_ms)
            pipe.set(self._vector_prefix + pid, vector.tobytes(), px=expiry_ms)
            if applied is not None and pid in applied:
                text = MARK_SEPARATOR.join(sorted(applied[pid].event_ids))
                pipe.set(self._applied_prefix + pid, text, px=expiry_ms)
        self._raise_watermark(
            keys=[self._meta_key], args=[repr(watermark)], client=pipe
        )
        pipe.publish(
            self.channel, orjson.dumps({"watermark": watermark, "players": ids})
        )
        pipe.execute()

    def merge_states(self, states: pl.DataFrame) -> None:
        """Merge a batch of newly folded states into the stored ones."""
        current = self.get_states_frame(states["player_id"].to_list())
        self.put_states(merge(current, states))

    def delete_namespace(self) -> int:
        """Delete every key of this namespace and return how many were deleted."""
        deleted = 0
        with self._guard("delete the namespace"):
            for pattern in (
                self._state_prefix,
                self._applied_prefix,
                self._vector_prefix,
            ):
                batch: list[bytes] = []
                for key in self._writer.scan_iter(pattern + "*", 1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        deleted += self._writer.delete(*batch)
                        batch = []
                if batch:
                    deleted += self._writer.delete(*batch)
            self._writer.delete(self._meta_key)
        self._watermark = 0.0
        return deleted

    # -- invalidation -----------------------------------------------------

    def add_listener(self, listener: InvalidationListener) -> None:
        """Call ``listener`` with the ids of changed players, from a pub/sub thread.

        After the subscription was lost (Redis down), announcements may have
        been missed, so the listener is called with None: forget everything.
        """
        self._listeners.append(listener)
        if self._listener_thread is None:
            self._listener_thread = threading.Thread(
                target=self._listen,
                name=f"crmbet-invalidate-{self.namespace}",
                daemon=True,
            )
            self._listener_thread.start()

    def _dispatch(self, players: list[str] | None) -> None:
        for listener in self._listeners:
            listener(players)  # type: ignore[arg-type]

    def _listen(self) -> None:
        logger.info("listening for invalidations on %s", self.channel)
        lost = False
        backoff = 0.1
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                self.subscribed.set()
                if lost:
                    logger.info(
                        "resubscribed to %s; dropping cached players", self.channel
                    )
                    self._dispatch(None)
                    lost = False
                backoff = 0.1
                self._receive(pubsub)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                self.subscribed.clear()
                if not lost:
                    logger.warning(
                        "lost the subscription to %s: %s", self.channel, error
                    )
                lost = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                pubsub.close()
        logger.info("stopped listening on %s", self.channel)

    def _receive(self, pubsub: redis.client.PubSub) -> None:
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message is None or message.get("type") != "message":
                continue
            body = orjson.loads(message["data"])
            self._watermark = max(self._watermark, float(body["watermark"]))
            self._dispatch(body["players"])

    def close(self) -> None:
        """Stop the invalidation thread and close the connections."""
        self._stop.set()
        if self._listener_thread is not None:
            self._listener_thread.join(timeout=2.0)
            self._listener_thread = None
        with self._read_lock:
            self._reader.disconnect()
        self._client.close()
        self._writer.close()
