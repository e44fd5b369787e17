"""Redis online store: keys per player with its state and feature vector.

Key space (``{ns}`` is the namespace, ``crmbet`` by default, and ``v1`` the
state schema version, so a new layout never reads an old one):

- ``{ns}:v1:state:{player_id}``: the packed float64 array
  ``[layout, vector_as_of, *state fields, *feature values]``, where the
  features were computed at ``vector_as_of``, the watermark when written;
- ``{ns}:v1:vector:{player_id}``: ``[layout, vector_as_of, last_ts,
  *feature values]`` alone, a quarter of the size, for large batches;
- ``{ns}:v1:applied:{player_id}``: the ids of the player's newest applied
  events as a JSON array, read only by materialisation (values written
  before the JSON form joined the ids by ``\\x1f`` and are still read);
- ``{ns}:v1:meta``: a hash with the store watermark and the fingerprint of
  the players' pseudonymisation key;
- ``{ns}:v1:invalidate``: the pub/sub channel that announces changed players.

A read is one ``GET`` for one player, or one pipeline of ``MGET``s of up
to :data:`READ_CHUNK` keys for a batch, plus the watermark unless the
invalidation subscription is live. Writes are one pipeline per chunk of
players, through redis-py with the hiredis parser over RESP2.

Reads use one dedicated connection that redis-py opens (so the URL's
password, database and TLS settings apply) and then leaves alone: the
store writes the RESP bytes of its commands with one ``sendall`` and feeds
the replies to a ``hiredis.Reader`` itself, which skips redis-py's
per-command checks, argument encoding and parser layers. A one-player
``GET`` is built from the key prefix with one bytes formatting. The
``MGET``s of a batch are sent as their key lists become ready
(:meth:`RedisOnlineStore.read_vector_chunks`), so Redis serves one while
the caller prepares the next, and each reply is decoded while Redis serves
the later ones. The fixed-size values let a reply of 1,000 values be
decoded with one ``numpy.frombuffer``.
"""

from __future__ import annotations

import logging
import math
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Any, TypeVar

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
    OnlineStoreSettingsError,
    OnlineStoreUnavailableError,
    StoredPlayers,
    StoredValueError,
    matrix_frame,
    states_matrix,
)
from crmbet.features.state import STATE_SCHEMA_VERSION, empty_states, merge

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class StoredVectors:
    """Feature vectors read for a list of players, in request order (NaN if missing).

    ``unreadable`` is True where a value exists but cannot be decoded (such
    players are not ``found``); None when every value could.
    """

    found: np.ndarray
    vectors: np.ndarray
    vector_as_of: np.ndarray
    last_ts: np.ndarray
    unreadable: np.ndarray | None = None

    @classmethod
    def join(cls, parts: Sequence[StoredVectors]) -> StoredVectors:
        """Return the reads of several lists of players as one, in order."""
        if not parts:
            return cls(
                np.zeros(0, dtype=bool),
                np.empty((0, N_FEATURES)),
                np.empty(0),
                np.empty(0),
            )
        unreadable = None
        if any(part.unreadable is not None for part in parts):
            unreadable = np.concatenate(
                [
                    np.zeros(len(part.found), dtype=bool)
                    if part.unreadable is None
                    else part.unreadable
                    for part in parts
                ]
            )
        return cls(
            np.concatenate([part.found for part in parts]),
            np.concatenate([part.vectors for part in parts]),
            np.concatenate([part.vector_as_of for part in parts]),
            np.concatenate([part.last_ts for part in parts]),
            unreadable,
        )


FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES)
N_FIELDS = len(FIELD_NAMES)
N_FEATURES = len(FEATURE_NAMES)
#: First element of every packed value; a value with another layout is rejected.
LAYOUT = float(N_FIELDS * 1000 + N_FEATURES)
ROW_LENGTH = 2 + N_FIELDS + N_FEATURES
ROW_BYTES = 8 * ROW_LENGTH
#: Layout of the vector-only values: ``[layout, vector_as_of, last_ts, *features]``.
VECTOR_LAYOUT = float(3000 + N_FEATURES)
VECTOR_LENGTH = 3 + N_FEATURES
WRITE_CHUNK = 2000
#: Keys per MGET of a pipelined read. Redis serves one chunk while the
#: client builds the next command or parses the previous reply.
READ_CHUNK = 1000
#: Separator of the event ids in applied marks written before the JSON form.
MARK_SEPARATOR = "\x1f"
#: Most unreadable keys remembered, so that each is logged once. The set is
#: cleared when it reaches this size, and a key may then be logged again.
_LOGGED_KEYS_MAX = 10_000

# Raises the stored watermark only when the new one is newer, atomically.
_RAISE_WATERMARK = """
local current = tonumber(redis.call('HGET', KEYS[1], 'watermark') or '0')
if tonumber(ARGV[1]) > current then
  redis.call('HSET', KEYS[1], 'watermark', ARGV[1])
  return ARGV[1]
end
return tostring(current)
"""


#: Field of the meta hash with the fingerprint of the players' pseudonymisation
#: key, written by materialisation.
KEY_FINGERPRINT_FIELD = "key_fingerprint"


def _pack_mget(prefix: str, player_ids: Sequence[str]) -> bytes:
    """Return the RESP bytes of ``MGET`` for the keys ``prefix + id``.

    Ids of one length in ASCII, the usual case for pseudonymised ids, are
    packed by one ``str.join``; others by hiredis.
    """
    n = len(player_ids)
    if n and min(map(len, player_ids)) == max(map(len, player_ids)):
        size = len(prefix) + len(player_ids[0])
        separator = f"\r\n${size}\r\n{prefix}"
        text = f"*{n + 1}\r\n$4\r\nMGET{separator}{separator.join(player_ids)}\r\n"
        data = text.encode()
        # Equal lengths: every character was ASCII, so each key has `size` bytes.
        if len(data) == len(text):
            return data
    return hiredis.pack_command((b"MGET", *[prefix + pid for pid in player_ids]))


def _mget(prefix: str, player_ids: Sequence[str]) -> Iterator[bytes]:
    """Yield packed ``MGET`` commands for the keys ``prefix + id``, in chunks."""
    for start in range(0, len(player_ids), READ_CHUNK):
        yield _pack_mget(prefix, player_ids[start : start + READ_CHUNK])


def _layout_hint(prefix: str, layout: float) -> str:
    return (
        f"values under {prefix}* must have the layout {layout:.0f}; if every "
        "key fails, another crmbet version wrote them, so use another namespace "
        "or re-materialise the store"
    )


def _value_problem(value: bytes, size: int, layout: float) -> str:
    """Say what is wrong with a stored value, without showing its bytes."""
    if len(value) != size:
        return f"{len(value)} bytes where {size} were expected"
    found = float(np.frombuffer(value, np.float64, 1)[0])
    return f"layout marker {found!r} where {layout:.0f} was expected"


def _refused_setting(error: BaseException) -> str | None:
    """Return which URL setting the server refused, or None for other errors.

    ``credentials`` for a wrong or missing password or user name,
    ``database`` for a database index the server does not have.
    """
    message = str(error)
    if isinstance(error, redis.AuthenticationError) or message.startswith(
        ("NOAUTH", "WRONGPASS")
    ):
        return "credentials"
    if "DB index is out of range" in message or "invalid DB index" in message:
        return "database"
    return None


#: Error replies that mean the server cannot serve now rather than a bad
#: request; they count as an outage like a refused connection.
_UNAVAILABLE_REPLIES = ("LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY")


class _ReadConnection:
    """The request path's connection: a socket and a hiredis reply reader.

    redis-py opens the connection, so the URL's password, database and TLS
    settings apply. After that, requests are written with one ``sendall``
    and replies parsed by a ``hiredis.Reader`` fed straight from the socket,
    without redis-py's per-command checks and parser layers.
    The connection opens on first use and again after :meth:`disconnect`.
    Socket errors become ``redis.ConnectionError`` or ``redis.TimeoutError``.
    """

    def __init__(
        self, connection: redis.connection.AbstractConnection, spin_seconds: float
    ) -> None:
        self._connection = connection
        self._spin_ns = int(spin_seconds * 1e9)
        self._sock: Any = None
        self._poll: Callable[[int], list[Any]] | None = None
        self._parser: hiredis.Reader | None = None
        self._buffer = bytearray(1 << 18)
        self._view = memoryview(self._buffer)

    def send(self, data: bytes) -> None:
        """Write ``data``, connecting first when needed."""
        sock = self._sock
        if sock is None:
            sock = self._connect()
        try:
            sock.sendall(data)
        except TimeoutError as error:
            raise redis.TimeoutError(f"writing to Redis timed out: {error}") from error
        except OSError as error:
            raise redis.ConnectionError(f"writing to Redis failed: {error}") from error

    def iter_replies(self, count: int) -> Iterator[Any]:
        """Yield ``count`` replies as each arrives; an error reply raises."""
        for _ in range(count):
            yield self.read_replies(1)[0]

    def read_replies(self, count: int, spin: bool = False) -> list[Any]:
        """Read ``count`` replies; an error reply raises.

        With ``spin``, poll the socket without sleeping for up to the spin
        time before the first wait. A thread that sleeps in ``recv`` must be
        woken when the reply arrives, which can take longer than a loopback
        round trip on a virtual machine, so a one-player read skips it.
        """
        parser = self._parser
        sock = self._sock
        if parser is None or sock is None:
            raise redis.ConnectionError("the read connection is closed")
        buffer = self._buffer
        view = self._view
        replies: list[Any] = []
        while len(replies) < count:
            reply = parser.gets()
            while reply is False:
                if spin and self._poll is not None:
                    spin = False
                    poll = self._poll
                    deadline = time.perf_counter_ns() + self._spin_ns
                    while not poll(0) and time.perf_counter_ns() < deadline:
                        pass
                try:
                    received = sock.recv_into(buffer)
                except TimeoutError as error:
                    raise redis.TimeoutError(
                        f"reading from Redis timed out: {error}"
                    ) from error
                except OSError as error:
                    raise redis.ConnectionError(
                        f"reading from Redis failed: {error}"
                    ) from error
                if not received:
                    raise redis.ConnectionError("Redis closed the connection")
                parser.feed(view, 0, received)
                reply = parser.gets()
            if isinstance(reply, hiredis.ReplyError):
                # Read the replies still due, so the connection stays in step.
                self._skip(count - len(replies) - 1, spin)
                raise _reply_error(str(reply))
            replies.append(reply)
        return replies

    def _skip(self, count: int, spin: bool) -> None:
        for _ in range(count):
            try:
                self.read_replies(1, spin)
            except redis.ResponseError:
                pass

    def _connect(self) -> Any:
        self._connection.connect()
        sock = self._connection._sock  # noqa: SLF001
        self._sock = sock
        self._parser = hiredis.Reader()
        self._poll = None
        # A TLS socket may hold decrypted bytes that poll does not report.
        if (
            self._spin_ns > 0
            and type(sock) is socket.socket
            and hasattr(select, "poll")
        ):
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            self._poll = poller.poll
        return sock

    def disconnect(self) -> None:
        """Close the socket and drop any reply left unread."""
        self._sock = None
        self._poll = None
        self._parser = None
        self._connection.disconnect()


def _decode_mark(value: bytes | None) -> frozenset[str]:
    """Return the event ids of an applied mark, in either stored form.

    Marks are JSON arrays; older ones joined the ids by
    :data:`MARK_SEPARATOR`, which an id may contain itself.
    """
    if not value:
        return frozenset()
    if value.startswith(b"["):
        try:
            ids = orjson.loads(value)
        except orjson.JSONDecodeError:
            ids = None
        if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
            return frozenset(ids)
    return frozenset(value.decode().split(MARK_SEPARATOR))


#: Largest lead of an announced watermark over this host's clock: the one
#: day that event validation allows, plus a day for clocks that disagree.
MAX_WATERMARK_LEAD_SECONDS = 2 * 86400.0


def _parse_announcement(data: Any) -> tuple[float | None, list[str] | None]:
    """Return the watermark and player ids of a change announcement.

    Either is None when the message lacks it or it is not of the expected
    type; the valid part is still applied.
    """
    try:
        body = orjson.loads(data)
    except (orjson.JSONDecodeError, TypeError):
        return None, None
    if not isinstance(body, dict):
        return None, None
    watermark = body.get("watermark")
    if isinstance(watermark, int | float) and not isinstance(watermark, bool):
        # Writers announce event times, and events more than a day ahead of
        # the clock are dead letters, so a later watermark is invalid. Taking
        # it would mark every player expired until a restart.
        latest = time.time() + MAX_WATERMARK_LEAD_SECONDS
        watermark = float(watermark) if 0.0 <= watermark <= latest else None
    else:
        watermark = None
    players = body.get("players")
    if not (isinstance(players, list) and all(isinstance(p, str) for p in players)):
        players = None
    return watermark, players


def _check_key_ttl(key_ttl_seconds: float | None) -> None:
    # Keys are written with PX in whole milliseconds, and Redis rejects an
    # expiry of zero or less. The floor of one second matches EXPIRE.
    if key_ttl_seconds is None:
        return
    if not (
        isinstance(key_ttl_seconds, int | float)
        and math.isfinite(key_ttl_seconds)
        and key_ttl_seconds >= 1
    ):
        raise ValueError(
            f"key_ttl_seconds must be None or a number of seconds >= 1, got "
            f"{key_ttl_seconds!r}; pass None to keep keys until they are "
            "overwritten, or the retention in seconds, for example 86400"
        )


def _reply_error(message: str) -> redis.RedisError:
    if message.startswith(_UNAVAILABLE_REPLIES):
        return redis.ConnectionError(f"Redis cannot serve reads now: {message}")
    if message.startswith(("NOAUTH", "WRONGPASS")):
        return redis.AuthenticationError(message)
    return redis.ResponseError(message)


class RedisOnlineStore:
    """Online store backed by Redis.

    Parameters
    ----------
    url:
        Redis URL, normally ``Settings.redis_url`` (``CRMBET_REDIS_URL``).
    namespace:
        First part of every key, so several stores can share one database.
    key_ttl_seconds:
        Wall-clock retention of a player's keys after its last write, at
        least 1 second; None keeps them until overwritten. Event-time expiry
        of feature views is applied on read by the feature store, not here.
    socket_timeout:
        Seconds a read may take before the store counts Redis as down.
    write_timeout:
        Seconds a write pipeline of up to 2,000 players may take. Writes
        use a connection of their own, so bulk loads do not need the short
        read timeout.
    read_spin_seconds:
        Seconds a one-player read polls the socket for the reply before the
        thread sleeps until it arrives. Zero disables polling. Polling keeps a
        core busy for up to this long per read, and saves the wake-up of a
        sleeping thread, which on a virtual machine can take longer than a
        loopback round trip. Replies from a server further away than this
        are waited for as usual.
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
        read_spin_seconds: float = 0.0002,
    ) -> None:
        _check_key_ttl(key_ttl_seconds)
        self.namespace = namespace
        self.key_ttl_seconds = key_ttl_seconds
        prefix = f"{namespace}:v{STATE_SCHEMA_VERSION}"
        self._state_prefix = f"{prefix}:state:"
        self._state_prefix_bytes = self._state_prefix.encode()
        self._applied_prefix = f"{prefix}:applied:"
        self._vector_prefix = f"{prefix}:vector:"
        self._meta_key = f"{prefix}:meta"
        self._hget_watermark = hiredis.pack_command(
            (b"HGET", self._meta_key, b"watermark")
        )
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
        self._reader = _ReadConnection(
            pool.connection_class(**pool.connection_kwargs), read_spin_seconds
        )
        self._read_lock = threading.Lock()
        self._watermark = 0.0
        self._listeners: list[InvalidationListener | Callable[[None], None]] = []
        self._listener_thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: Set while the invalidation thread has a live subscription.
        self.subscribed = threading.Event()
        self.last_error: str | None = None
        self._logged_keys: set[bytes] = set()
        try:
            self.refresh_watermark()
        except OnlineStoreSettingsError:
            # Waiting does not fix a wrong password or database: fail now.
            self.close()
            raise
        except OnlineStoreUnavailableError:
            logger.warning("Redis is unreachable at start; the store starts degraded")

    # -- plumbing ---------------------------------------------------------

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise self._unavailable(action, error) from error
        except redis.ResponseError as error:
            if _refused_setting(error) is None:
                raise
            raise self._unavailable(action, error) from error
        self.last_error = None

    def _unavailable(
        self, action: str, error: redis.RedisError
    ) -> OnlineStoreUnavailableError:
        """Record ``error`` and return the error to raise to the caller.

        The URL itself is never shown, because it may carry a password.
        """
        self.last_error = f"{type(error).__name__}: {error}"
        refused = _refused_setting(error)
        if refused == "credentials":
            return OnlineStoreSettingsError(
                f"Redis online store failed to {action}: Redis rejected the "
                f"credentials in CRMBET_REDIS_URL ({error}); fix the user name "
                "and password in the URL"
            )
        if refused == "database":
            db = self._client.connection_pool.connection_kwargs.get("db", 0)
            return OnlineStoreSettingsError(
                f"Redis online store failed to {action}: the server has no "
                f"database {db}, the database part '/{db}' of CRMBET_REDIS_URL "
                f"({error}); Redis has 16 databases by default, 0 to 15, so "
                "use one of those or raise 'databases' in the server's "
                "configuration"
            )
        return OnlineStoreUnavailableError(
            f"Redis online store failed to {action}: {error}; check that the "
            "server in CRMBET_REDIS_URL is running and reachable"
        )

    def _execute(self, commands: Iterable[bytes]) -> list[Any]:
        """Send packed commands on the read connection and return their replies.

        Each command is sent as soon as ``commands`` yields it, before any
        reply is read, so Redis works on one command while this thread
        builds the next. The caller wraps the call in :meth:`_guard`.
        """
        return self._pipeline(commands, list)

    def _pipeline(
        self, commands: Iterable[bytes], consume: Callable[[Iterator[Any]], _T]
    ) -> _T:
        """Send ``commands`` as they come, then let ``consume`` take the replies.

        ``consume`` runs while later replies are still on their way, so it
        can decode one while Redis serves the next. It must take every
        reply, and may run twice: after a dropped connection, the commands
        are sent again on a new one. Any failure drops the connection, so a
        reply left unread is never read as the reply to a later command.
        """
        pending = iter(commands)
        sent: list[bytes] = []
        with self._read_lock:
            reader = self._reader
            try:
                for command in pending:
                    reader.send(command)
                    sent.append(command)
                return consume(reader.iter_replies(len(sent)))
            except redis.ConnectionError:
                # The server may have closed an idle connection or restarted.
                # Reads are idempotent, so retry once on a new connection.
                reader.disconnect()
            except BaseException:
                reader.disconnect()
                raise
            try:
                sent.extend(pending)
                reader.send(b"".join(sent))
                return consume(reader.iter_replies(len(sent)))
            except BaseException:
                reader.disconnect()
                raise

    def _round_trip(self, packed: bytes, replies: int) -> list[Any]:
        """Send packed commands in one write and read their replies.

        The one-player path: no generator, context manager or per-command
        packing. Failures are reported as by :meth:`_guard`.
        """
        try:
            with self._read_lock:
                reader = self._reader
                try:
                    reader.send(packed)
                    result = reader.read_replies(replies, spin=True)
                except redis.ConnectionError:
                    # A dropped idle connection: retry once on a new one.
                    reader.disconnect()
                    try:
                        reader.send(packed)
                        result = reader.read_replies(replies, spin=True)
                    except redis.ResponseError:
                        raise
                    except BaseException:
                        reader.disconnect()
                        raise
                except redis.ResponseError:
                    # Every reply was read before the error was raised, so
                    # the connection is still in step.
                    raise
                except BaseException:
                    reader.disconnect()
                    raise
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise self._unavailable("read player states", error) from error
        except redis.ResponseError as error:
            if _refused_setting(error) is None:
                raise
            raise self._unavailable("read player states", error) from error
        if self.last_error is not None:
            self.last_error = None
        return result

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

    def stored_key_fingerprint(self) -> str | None:
        """Return the pseudonymisation key fingerprint in the meta hash."""
        with self._guard("read the key fingerprint"):
            value = self._writer.hget(self._meta_key, KEY_FINGERPRINT_FIELD)
        return value.decode() if isinstance(value, bytes) else value

    def record_key_fingerprint(self, fingerprint: str) -> None:
        """Write the pseudonymisation key fingerprint to the meta hash."""
        with self._guard("write the key fingerprint"):
            self._writer.hset(self._meta_key, KEY_FINGERPRINT_FIELD, fingerprint)

    def ping(self) -> bool:
        """Return True when Redis replies to a PING."""
        try:
            with self._guard("ping"):
                return bool(self._client.ping())
        except OnlineStoreUnavailableError:
            return False

    def health(self) -> dict[str, Any]:
        """Return ``healthy`` when Redis replies to a PING, else ``degraded``.

        The store is ``degraded`` too when its invalidation thread has
        stopped: L1 entries then live until their TTL.
        """
        up = self.ping()
        listening = self.listening
        last_error = self.last_error
        if not listening:
            last_error = (
                f"the invalidation thread for {self.channel} has stopped; "
                "L1 entries are dropped only by their TTL"
            )
        return {
            "status": "healthy" if up and listening else "degraded",
            "backend": self.backend,
            "namespace": self.namespace,
            "watermark": self._watermark,
            "last_error": last_error,
        }

    @property
    def listening(self) -> bool:
        """False when the invalidation thread has stopped without :meth:`close`."""
        thread = self._listener_thread
        return thread is None or thread.is_alive() or self._stop.is_set()

    def __len__(self) -> int:
        # NOTE: a SCAN over the namespace, O(keys in the database); for the CLI
        # and tests, not for request paths.
        with self._guard("count players"):
            return sum(
                1 for _ in self._client.scan_iter(self._state_prefix + "*", 1000)
            )

    # -- reads ------------------------------------------------------------

    def read_players(self, player_ids: Sequence[str]) -> StoredPlayers:
        """Read states and stored feature vectors with pipelined MGETs.

        A value that cannot be decoded is logged once per key and marked in
        ``unreadable``; the player is not ``found``.
        """
        if not player_ids:
            values: list[bytes | None] = []
        else:
            replies = self._read_values(_mget(self._state_prefix, player_ids))
            values = [*chain.from_iterable(replies)]
        rows, found, unreadable = self._decode(
            values, ROW_LENGTH, LAYOUT, self._state_prefix, player_ids
        )
        return StoredPlayers(
            states=rows[:, 2 : 2 + N_FIELDS],
            found=found,
            vectors=rows[:, 2 + N_FIELDS :],
            vector_as_of=rows[:, 1],
            unreadable=unreadable,
        )

    def read_player(
        self, player_id: str
    ) -> tuple[np.ndarray, np.ndarray, float] | None:
        """Read one player's state and stored feature vector with one ``GET``.

        Returns ``(state, vector, vector_as_of)`` as read-only views of the
        stored value, or None for an unknown player. The command is written
        with one ``sendall`` and its reply parsed by hiredis, with the
        watermark's ``HGET`` in the same write unless the subscription is
        live. A value of the wrong size, layout or Redis type raises
        :class:`StoredValueError` and is logged once per key.
        """
        key = self._state_prefix_bytes + player_id.encode()
        command = b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(key), key)
        try:
            if self.subscribed.is_set():
                (value,) = self._round_trip(command, 1)
            else:
                value, watermark = self._round_trip(command + self._hget_watermark, 2)
                if watermark is not None:
                    self._watermark = max(self._watermark, float(watermark))
        except redis.ResponseError as error:
            if not str(error).startswith("WRONGTYPE"):
                raise
            raise self._unreadable(key, "it is not a string value", False) from error
        if value is None:
            return None
        if len(value) != ROW_BYTES:
            raise self._unreadable(key, _value_problem(value, ROW_BYTES, LAYOUT))
        row = np.frombuffer(value, np.float64)
        if row[0] != LAYOUT:
            raise self._unreadable(key, _value_problem(value, ROW_BYTES, LAYOUT))
        return row[2 : 2 + N_FIELDS], row[2 + N_FIELDS :], float(row[1])

    def _unreadable(
        self, key: bytes, problem: str, layout_hint: bool = True
    ) -> StoredValueError:
        """Log an unreadable value once per key and return the error to raise."""
        text = key.decode(errors="replace")
        message = (
            f"Redis key {text[:200]!r} is unreadable: {problem}; the player is "
            "served as unavailable until the key is rewritten or deleted"
        )
        if layout_hint:
            vector = text.startswith(self._vector_prefix)
            prefix = self._vector_prefix if vector else self._state_prefix
            layout = VECTOR_LAYOUT if vector else LAYOUT
            message += f" ({_layout_hint(prefix, layout)})"
        if key not in self._logged_keys:
            if len(self._logged_keys) >= _LOGGED_KEYS_MAX:
                self._logged_keys.clear()
            self._logged_keys.add(key)
            logger.warning("%s", message)
        return StoredValueError(message)

    def _read_values(self, commands: Iterable[bytes]) -> list[Any]:
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
                    chain(commands, [self._hget_watermark])
                )
        if watermark is not None:
            self._watermark = max(self._watermark, float(watermark))
        return replies

    def read_vectors(self, player_ids: Sequence[str]) -> StoredVectors:
        """Read only the stored feature vectors, a quarter of the state values' size.

        A batch whose as-of time equals the vectors' needs nothing else; the
        feature store reads the states of the other players.
        """
        parts: dict[int, StoredVectors] = {}
        self.read_vector_chunks(
            (
                player_ids[start : start + READ_CHUNK]
                for start in range(0, len(player_ids), READ_CHUNK)
            ),
            parts.__setitem__,
        )
        return StoredVectors.join([parts[index] for index in sorted(parts)])

    def read_vector_chunks(
        self,
        chunks: Iterable[Sequence[str]],
        receive: Callable[[int, StoredVectors], object],
    ) -> None:
        """Read the stored vectors of each chunk of ids, one ``MGET`` per chunk.

        An ``MGET`` is sent as soon as ``chunks`` yields its ids, so the
        caller can prepare the next chunk (look it up in L1, say) while
        Redis serves this one. Each reply is decoded and passed to
        ``receive(chunk_index, vectors)`` while Redis serves the later ones.
        An empty chunk costs no command and is not passed on. After a
        dropped connection the reads are sent again on a new one, so
        ``receive`` may see a chunk twice and must overwrite, not add.
        """
        sent: list[tuple[int, Sequence[str]]] = []
        prefix = self._vector_prefix

        def commands() -> Iterator[bytes]:
            for index, ids in enumerate(chunks):
                if ids:
                    sent.append((index, ids))
                    yield _pack_mget(prefix, ids)

        def decode(replies: Iterator[Any]) -> None:
            for index, ids in sent:
                rows, found, unreadable = self._decode(
                    next(replies), VECTOR_LENGTH, VECTOR_LAYOUT, prefix, ids
                )
                receive(
                    index,
                    StoredVectors(
                        found, rows[:, 3:], rows[:, 1], rows[:, 2], unreadable
                    ),
                )

        with self._guard("read feature vectors"):
            self._pipeline(commands(), decode)

    def _decode(
        self,
        values: list[bytes | None],
        length: int,
        layout: float,
        prefix: str,
        player_ids: Sequence[str],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Decode fixed-size packed values with one frombuffer call.

        Returns the rows, the found mask and the unreadable mask (None when
        every value could be decoded).
        """
        # NOTE: MGET returns nil for a key of another Redis type, so such a
        # player is decoded as missing ("unknown"), not as unreadable.
        n = len(values)
        missing = values.count(None)
        if missing == n:
            return np.full((n, length), np.nan), np.zeros(n, dtype=bool), None
        if missing:
            found = np.array([v is not None for v in values], dtype=bool)
            data = b"".join([v for v in values if v is not None])
        else:
            found = np.ones(n, dtype=bool)
            data = b"".join(values)  # type: ignore[arg-type]
        if len(data) != (n - missing) * length * 8:
            return self._decode_each(values, length, layout, prefix, player_ids)
        decoded = np.frombuffer(data, np.float64).reshape(-1, length)
        if np.any(decoded[:, 0] != layout):
            return self._decode_each(values, length, layout, prefix, player_ids)
        if not missing:
            return decoded, found, None
        rows = np.full((n, length), np.nan)
        rows[found] = decoded
        return rows, found, None

    def _decode_each(
        self,
        values: list[bytes | None],
        length: int,
        layout: float,
        prefix: str,
        player_ids: Sequence[str],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode values one by one, marking the unreadable ones.

        The slow path of :meth:`_decode`, taken only when some value has the
        wrong size or layout marker.
        """
        size = length * 8
        n = len(values)
        rows = np.full((n, length), np.nan)
        found = np.zeros(n, dtype=bool)
        unreadable = np.zeros(n, dtype=bool)
        for i, value in enumerate(values):
            if value is None:
                continue
            if len(value) == size:
                row = np.frombuffer(value, np.float64)
                if row[0] == layout:
                    rows[i] = row
                    found[i] = True
                    continue
            unreadable[i] = True
            key = (prefix + player_ids[i]).encode()
            self._unreadable(key, _value_problem(value, size, layout))
        return rows, found, unreadable

    def _read_players_strictly(self, player_ids: Sequence[str]) -> StoredPlayers:
        """Read states for tools and writes, raising on an unreadable value.

        Materialisation merges new events into the stored states, so it
        must not take an unreadable value for a missing one and overwrite it.
        """
        stored = self.read_players(player_ids)
        if stored.unreadable is not None and stored.unreadable.any():
            bad = [
                self._state_prefix + player_ids[i]
                for i in np.flatnonzero(stored.unreadable)[:5].tolist()
            ]
            raise StoredValueError(
                f"{int(stored.unreadable.sum())} stored state(s) cannot be "
                f"decoded, for example {bad}; delete those keys, or "
                f"{_layout_hint(self._state_prefix, LAYOUT)}"
            )
        return stored

    def get_state(self, player_id: str) -> dict[str, float] | None:
        """Return one player's state, or None for an unknown player."""
        stored = self._read_players_strictly([player_id])
        if not stored.found[0]:
            return None
        return dict(zip(FIELD_NAMES, stored.states[0].tolist(), strict=True))

    def get_states_frame(self, player_ids: Sequence[str]) -> pl.DataFrame:
        """Return the stored states of the known players among ``player_ids``."""
        ids = list(player_ids)
        if not ids:
            return empty_states()
        stored = self._read_players_strictly(ids)
        known = [pid for pid, hit in zip(ids, stored.found, strict=True) if hit]
        return matrix_frame(known, stored.states[stored.found])

    def applied_marks(self, player_ids: Sequence[str]) -> dict[str, AppliedMark]:
        """Return the newest applied event marks of the known players."""
        ids = list(player_ids)
        marks: dict[str, AppliedMark] = {}
        for start in range(0, len(ids), WRITE_CHUNK):
            chunk = ids[start : start + WRITE_CHUNK]
            stored = self._read_players_strictly(chunk)
            with self._guard("read applied event ids"):
                applied = self._client.mget(
                    [self._applied_prefix + pid for pid in chunk]
                )
            for i, pid in enumerate(chunk):
                if stored.found[i]:
                    marks[pid] = AppliedMark(
                        float(stored.states[i, LAST_TS]), _decode_mark(applied[i])
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
                text = orjson.dumps(sorted(applied[pid].event_ids))
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
        try:
            self._listen_until_stopped()
        finally:
            # Without the subscription, reads fetch the watermark themselves.
            self.subscribed.clear()
            if not self._stop.is_set():
                logger.error(
                    "the invalidation thread for %s stopped; L1 entries are "
                    "dropped only by their TTL from now on",
                    self.channel,
                )

    def _listen_until_stopped(self) -> None:
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
            except Exception:
                # A failing listener may have left some caches unchanged, so
                # resubscribe and let every listener forget everything.
                self.subscribed.clear()
                logger.exception("invalidation on %s failed", self.channel)
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
            watermark, players = _parse_announcement(message["data"])
            if watermark is None or players is None:
                logger.warning(
                    "skipping a malformed message on %s: %.120r",
                    self.channel,
                    message["data"],
                )
            if watermark is not None:
                self._watermark = max(self._watermark, watermark)
            if players is not None:
                self._dispatch(players)

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
