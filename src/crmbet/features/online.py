"""Online store: the newest state of every player, behind one interface.

Two backends implement :class:`OnlineStore`: the embedded
:class:`MemoryOnlineStore` (in process memory, snapshot to a Parquet file so
a restart keeps it) and :class:`crmbet.features.redis_store.RedisOnlineStore`.
Both keep one state row per player, the ids of the player's newest events
(so a replayed batch is recognised) and an event-time watermark, the newest
event time seen, at which online features are read by default.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import polars as pl

from crmbet.errors import CrmbetError
from crmbet.features.state import STATE_FIELDS, empty_states, merge

logger = logging.getLogger(__name__)

#: State field names in the column order of every packed state array.
FIELD_NAMES: tuple[str, ...] = tuple(STATE_FIELDS)
FIELD_INDEX: dict[str, int] = {name: i for i, name in enumerate(FIELD_NAMES)}
LAST_TS = FIELD_INDEX["last_ts"]

#: Callback run with the ids of players whose state changed.
InvalidationListener = Callable[[list[str]], None]


class OnlineStoreUnavailableError(CrmbetError, ConnectionError):
    """Raised when the online store backend cannot be reached."""


class OnlineStoreSettingsError(OnlineStoreUnavailableError):
    """Raised when the online store rejects the connection settings.

    Wrong credentials or a database the server does not have: the server
    replies, but retrying fails until the settings are fixed.
    """


class StoredValueError(CrmbetError, ValueError):
    """Raised when one player's stored value cannot be decoded.

    The value has the wrong size, layout marker or Redis type. The other
    players are not affected; the feature store serves this one as
    ``unavailable``.
    """


@dataclass(frozen=True, slots=True)
class StoredPlayers:
    """States read for a list of players, in request order.

    ``states`` has one row per requested player (columns in
    :data:`FIELD_NAMES` order) and NaN rows where ``found`` is False.
    ``vectors`` contains feature vectors stored at write time, computed at
    ``vector_as_of``; backends that store none leave both as None.
    ``unreadable`` is True where a stored value exists but cannot be
    decoded (such players are not ``found``); None when every value could.
    """

    states: np.ndarray
    found: np.ndarray
    vectors: np.ndarray | None = None
    vector_as_of: np.ndarray | None = None
    unreadable: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class AppliedMark:
    """Newest applied event time of a player and the event ids at that time."""

    last_ts: float
    event_ids: frozenset[str]


@runtime_checkable
class OnlineStore(Protocol):
    """Interface of every online store backend."""

    backend: str

    @property
    def watermark(self) -> float:
        """Newest event time seen, Unix seconds."""
        ...

    def __len__(self) -> int: ...

    def read_players(self, player_ids: Sequence[str]) -> StoredPlayers:
        """Read the states of ``player_ids`` in one round trip."""
        ...

    def get_state(self, player_id: str) -> dict[str, float] | None:
        """Return one player's state, or None for an unknown player."""
        ...

    def get_states_frame(self, player_ids: Sequence[str]) -> pl.DataFrame:
        """Return the stored states of the known players among ``player_ids``."""
        ...

    def put_states(
        self,
        states: pl.DataFrame,
        applied: Mapping[str, AppliedMark] | None = None,
    ) -> None:
        """Replace the stored states of the players in ``states``."""
        ...

    def merge_states(self, states: pl.DataFrame) -> None:
        """Merge a batch of newly folded states into the stored ones."""
        ...

    def applied_marks(self, player_ids: Sequence[str]) -> dict[str, AppliedMark]:
        """Return the newest applied event marks of the known players."""
        ...

    def add_listener(self, listener: InvalidationListener) -> None:
        """Call ``listener`` with the ids of players whose state changed."""
        ...

    def stored_key_fingerprint(self) -> str | None:
        """Return the fingerprint of the pseudonymisation key of the players."""
        ...

    def record_key_fingerprint(self, fingerprint: str) -> None:
        """Record the fingerprint of the pseudonymisation key of the players."""
        ...

    def health(self) -> dict[str, Any]:
        """Return the backend's status, ``healthy`` or ``degraded``."""
        ...


def states_matrix(states: pl.DataFrame) -> np.ndarray:
    """Return the state fields of a state table as one float64 matrix."""
    if states.height == 0:
        return np.empty((0, len(FIELD_NAMES)))
    columns = [
        states.get_column(name).fill_null(0.0).to_numpy() for name in FIELD_NAMES
    ]
    return np.ascontiguousarray(np.column_stack(columns), dtype=np.float64)


def matrix_frame(player_ids: Sequence[str], matrix: np.ndarray) -> pl.DataFrame:
    """Build a state table from player ids and a state matrix."""
    if len(player_ids) == 0:
        return empty_states()
    data = {"player_id": list(player_ids)}
    data |= {name: matrix[:, i] for i, name in enumerate(FIELD_NAMES)}
    return pl.DataFrame(data, schema=empty_states().schema)


class MemoryOnlineStore:
    """Player states in a dict, merged batch by batch with the merge law.

    Examples
    --------
    >>> store = MemoryOnlineStore()
    >>> store.get_state("nobody") is None
    True
    """

    backend = "memory"

    def __init__(self) -> None:
        self._states: dict[str, np.ndarray] = {}
        self._marks: dict[str, frozenset[str]] = {}
        self._listeners: list[InvalidationListener] = []
        self._lock = threading.Lock()
        self.watermark = 0.0
        #: Fingerprint of the pseudonymisation key of the stored players.
        self.key_fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self._states)

    def put_states(
        self,
        states: pl.DataFrame,
        applied: Mapping[str, AppliedMark] | None = None,
    ) -> None:
        """Replace the stored states of the players in ``states``."""
        ids = states["player_id"].to_list() if states.height else []
        matrix = states_matrix(states)
        with self._lock:
            for player, row in zip(ids, matrix, strict=True):
                self._states[player] = row
                if applied is not None and player in applied:
                    self._marks[player] = applied[player].event_ids
            if states.height:
                self.watermark = max(self.watermark, float(matrix[:, LAST_TS].max()))
        self._notify(ids)

    def merge_states(self, states: pl.DataFrame) -> None:
        """Merge a batch of newly folded states into the stored ones."""
        ids = states["player_id"].to_list()
        current = self.get_states_frame(ids)
        self.put_states(merge(current, states))

    def read_players(self, player_ids: Sequence[str]) -> StoredPlayers:
        """Read the states of ``player_ids`` (NaN rows for unknown players)."""
        matrix = np.full((len(player_ids), len(FIELD_NAMES)), np.nan)
        found = np.zeros(len(player_ids), dtype=bool)
        states = self._states
        for i, player in enumerate(player_ids):
            row = states.get(player)
            if row is not None:
                matrix[i] = row
                found[i] = True
        return StoredPlayers(matrix, found)

    def read_player(self, player_id: str) -> tuple[np.ndarray, None, float] | None:
        """Return ``(state, None, NaN)`` for a known player, or None.

        The embedded store keeps no feature vectors, so the vector and its
        as-of time are missing and the caller computes the features.
        """
        row = self._states.get(player_id)
        if row is None:
            return None
        state = row.copy()
        state.setflags(write=False)
        return state, None, float("nan")

    def get_state(self, player_id: str) -> dict[str, float] | None:
        """Return one player's state, or None for an unknown player."""
        row = self._states.get(player_id)
        if row is None:
            return None
        return dict(zip(FIELD_NAMES, row.tolist(), strict=True))

    def get_states_frame(self, player_ids: Sequence[str]) -> pl.DataFrame:
        """Return the stored states of the known players among ``player_ids``."""
        known = [pid for pid in player_ids if pid in self._states]
        if not known:
            return empty_states()
        return matrix_frame(known, np.vstack([self._states[pid] for pid in known]))

    def applied_marks(self, player_ids: Sequence[str]) -> dict[str, AppliedMark]:
        """Return the newest applied event marks of the known players."""
        marks: dict[str, AppliedMark] = {}
        for player in player_ids:
            row = self._states.get(player)
            if row is not None:
                ids = self._marks.get(player, frozenset())
                marks[player] = AppliedMark(float(row[LAST_TS]), ids)
        return marks

    def add_listener(self, listener: InvalidationListener) -> None:
        """Call ``listener`` with the ids of players whose state changed."""
        self._listeners.append(listener)

    def _notify(self, player_ids: list[str]) -> None:
        for listener in self._listeners:
            listener(player_ids)

    def stored_key_fingerprint(self) -> str | None:
        """Return the fingerprint of the pseudonymisation key of the players."""
        return self.key_fingerprint

    def record_key_fingerprint(self, fingerprint: str) -> None:
        """Record the fingerprint of the pseudonymisation key of the players."""
        self.key_fingerprint = fingerprint

    def health(self) -> dict[str, Any]:
        """Return the backend's status; an in-process store is always healthy."""
        return {"status": "healthy", "backend": self.backend, "players": len(self)}

    def to_frame(self) -> pl.DataFrame:
        """Return every stored state as a state table."""
        return self.get_states_frame(list(self._states))

    def snapshot(self, path: str | Path) -> Path:
        """Write every state and applied-event mark to a Parquet file.

        The key fingerprint goes in the file's metadata. The file is written
        beside ``path`` and renamed over it, so a reader never sees half a
        snapshot.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = self.to_frame()
        marks = [
            sorted(self._marks.get(pid, ())) for pid in frame["player_id"].to_list()
        ]
        frame = frame.with_columns(
            pl.Series("last_event_ids", marks, dtype=pl.List(pl.String))
        )
        metadata = (
            {_FINGERPRINT_METADATA: self.key_fingerprint}
            if self.key_fingerprint is not None
            else None
        )
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        frame.write_parquet(partial, metadata=metadata)
        os.replace(partial, path)
        logger.info("wrote a snapshot of %d player states to %s", len(self), path)
        return path

    @classmethod
    def from_snapshot(cls, path: str | Path) -> MemoryOnlineStore:
        """Load a store from a snapshot written by :meth:`snapshot`."""
        store = cls()
        frame = pl.read_parquet(path)
        missing = [name for name in STATE_FIELDS if name not in frame.columns]
        if missing:
            raise ValueError(
                f"snapshot {path} lacks state fields {missing[:5]}; it was written by "
                "another state schema version, so rebuild it with 'crmbet train'"
            )
        applied = None
        if "last_event_ids" in frame.columns:
            applied = {
                pid: AppliedMark(last_ts, frozenset(ids or ()))
                for pid, last_ts, ids in frame.select(
                    "player_id", "last_ts", "last_event_ids"
                ).iter_rows()
            }
        store.put_states(frame, applied)
        store.key_fingerprint = pl.read_parquet_metadata(path).get(
            _FINGERPRINT_METADATA
        )
        return store


#: Parquet metadata key of a snapshot's pseudonymisation key fingerprint.
_FINGERPRINT_METADATA = "crmbet.pseudonym_key_fingerprint"


@contextmanager
def snapshot_lock(snapshot: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``snapshot`` for a read-merge-write of it.

    The lock is ``fcntl.flock`` on a file beside the snapshot, so a second
    materialisation waits for the first and merges on top of its result
    instead of overwriting it. The lock is released when the process ends.
    """
    path = Path(snapshot)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning(
                "waiting for another process to release the lock %s", lock_path
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
