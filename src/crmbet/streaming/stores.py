"""Online stores that keep player states and consumed offsets together.

Each micro-batch ends with one :meth:`StreamStateStore.commit` that writes
the merged player states, the next offset of every partition in the batch,
the new event ids of the dedupe windows and the players' segments in one
atomic step. On start and on every rebalance the consumer reads the offsets
back and seeks to them, so Kafka's own committed offsets are never the
source of truth and a crash between two batches neither loses nor repeats
an event.

The commit is also a compare-and-set on the offsets: it carries the offset
each partition had when the consumer read it, and fails with
:class:`StaleOffsetError` when another consumer has stored a different one
since. That fences a consumer that lost a partition in a rebalance but has
not noticed yet.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import orjson
import polars as pl

from crmbet.errors import CrmbetError
from crmbet.features.online import MemoryOnlineStore
from crmbet.features.state import (
    STATE_FIELDS,
    STATE_SCHEMA_VERSION,
    empty_states,
)
from crmbet.streaming.state_matrix import StateMatrix

logger = logging.getLogger(__name__)

_FIELD_NAMES = list(STATE_FIELDS)


class StaleOffsetError(CrmbetError, RuntimeError):
    """Raised when a commit expects offsets that another consumer has changed."""


@dataclass
class Commit:
    """Everything one micro-batch writes, applied all at once or not at all.

    ``states`` is a state table or, as the stream builds it, a
    :class:`~crmbet.streaming.state_matrix.StateMatrix`.
    """

    group_id: str
    topic: str
    states: pl.DataFrame | StateMatrix
    offsets: dict[int, int]
    expected: dict[int, int | None]
    new_ids: dict[int, list[str]] = field(default_factory=dict)
    segments: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class StreamStateStore(Protocol):
    """Player states, per-partition offsets and dedupe windows of a consumer."""

    def load_offsets(
        self, group_id: str, topic: str, partitions: list[int]
    ) -> dict[int, int | None]:
        """Return the stored next offset of each partition (None when not stored)."""
        ...

    def load_dedupe_ids(self, group_id: str, topic: str, partition: int) -> list[str]:
        """Return the event ids of a partition's dedupe window, oldest first."""
        ...

    def get_states(self, player_ids: list[str]) -> pl.DataFrame:
        """Return the stored states of the known players among ``player_ids``."""
        ...

    def get_state_matrix(self, player_ids: list[str]) -> StateMatrix:
        """Return the stored states of the known players as a matrix."""
        ...

    def get_segments(self, player_ids: list[str]) -> dict[str, str]:
        """Return the stored segment name of the known players among ``player_ids``."""
        ...

    def get_states_and_segments(
        self, player_ids: list[str]
    ) -> tuple[StateMatrix, dict[str, str]]:
        """Return the stored states and segments of ``player_ids`` together."""
        ...

    def commit(self, commit: Commit, window: int) -> None:
        """Apply a commit atomically, keeping at most ``window`` ids per partition."""
        ...

    def states_frame(self) -> pl.DataFrame:
        """Return every stored state as a state table."""
        ...

    def close(self) -> None:
        """Release connections and write any final snapshot."""
        ...


def _stale(commit: Commit, partition: int, stored: int | None) -> StaleOffsetError:
    return StaleOffsetError(
        f"offset of {commit.topic}[{partition}] for group {commit.group_id} is "
        f"{stored} in the store but this consumer expected "
        f"{commit.expected[partition]}; another "
        "consumer owns the partition now, so this batch is discarded and the consumer "
        "seeks to the stored offset"
    )


class EmbeddedStateStore:
    """In-process store: states, offsets and windows, snapshotted to one file.

    The snapshot is a zip archive with the states as Parquet and the
    offsets, dedupe windows and segments as JSON. It is written to a
    temporary file and renamed over the old one. A crash therefore leaves
    either the old or the new snapshot, never states without their offsets.
    """

    def __init__(self, snapshot_path: str | Path | None = None) -> None:
        self.snapshot_path = Path(snapshot_path) if snapshot_path else None
        self.states = MemoryOnlineStore()
        self._offsets: dict[str, int] = {}
        self._windows: dict[str, list[str]] = {}
        self._segments: dict[str, str] = {}
        self._lock = threading.Lock()
        self._last_snapshot = time.monotonic()
        if self.snapshot_path is not None and self.snapshot_path.exists():
            self._load(self.snapshot_path)

    @staticmethod
    def _key(group_id: str, topic: str, partition: int) -> str:
        return f"{group_id}\t{topic}\t{partition}"

    def load_offsets(
        self, group_id: str, topic: str, partitions: list[int]
    ) -> dict[int, int | None]:
        """Return the stored next offset of each partition (None when not stored)."""
        with self._lock:
            return {
                p: self._offsets.get(self._key(group_id, topic, p)) for p in partitions
            }

    def load_dedupe_ids(self, group_id: str, topic: str, partition: int) -> list[str]:
        """Return the event ids of a partition's dedupe window, oldest first."""
        with self._lock:
            return list(self._windows.get(self._key(group_id, topic, partition), []))

    def get_states(self, player_ids: list[str]) -> pl.DataFrame:
        """Return the stored states of the known players among ``player_ids``."""
        return self.states.get_states_frame(player_ids)

    def get_state_matrix(self, player_ids: list[str]) -> StateMatrix:
        """Return the stored states of the known players as a matrix."""
        return StateMatrix.from_frame(self.get_states(player_ids))

    def get_segments(self, player_ids: list[str]) -> dict[str, str]:
        """Return the stored segment name of the known players among ``player_ids``."""
        return {p: self._segments[p] for p in player_ids if p in self._segments}

    def get_states_and_segments(
        self, player_ids: list[str]
    ) -> tuple[StateMatrix, dict[str, str]]:
        """Return the stored states and segments of ``player_ids`` together."""
        return self.get_state_matrix(player_ids), self.get_segments(player_ids)

    def commit(self, commit: Commit, window: int) -> None:
        """Apply a commit atomically, keeping at most ``window`` ids per partition."""
        with self._lock:
            for partition in commit.offsets:
                stored = self._offsets.get(
                    self._key(commit.group_id, commit.topic, partition)
                )
                if stored != commit.expected[partition]:
                    raise _stale(commit, partition, stored)
            states = commit.states
            if isinstance(states, StateMatrix):
                states = states.to_frame()
            self.states.put_states(states)
            self._segments.update(commit.segments)
            for partition, offset in commit.offsets.items():
                key = self._key(commit.group_id, commit.topic, partition)
                self._offsets[key] = offset
                ids = commit.new_ids.get(partition)
                if ids:
                    self._windows[key] = (self._windows.get(key, []) + ids)[-window:]

    def states_frame(self) -> pl.DataFrame:
        """Return every stored state as a state table."""
        return self.states.to_frame()

    def maybe_snapshot(self, interval_s: float) -> Path | None:
        """Write a snapshot when ``interval_s`` seconds passed since the last one."""
        if (
            self.snapshot_path is None
            or time.monotonic() - self._last_snapshot < interval_s
        ):
            return None
        return self.snapshot()

    def snapshot(self, path: str | Path | None = None) -> Path:
        """Write states, offsets, windows and segments to one file atomically."""
        target = Path(path) if path else self.snapshot_path
        if target is None:
            raise ValueError(
                "no snapshot path; pass one or set StreamConfig.snapshot_path"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            frame = self.states.to_frame()
            meta = {
                "state_schema_version": STATE_SCHEMA_VERSION,
                "offsets": self._offsets,
                "windows": self._windows,
                "segments": self._segments,
            }
            handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
            os.close(handle)
            with zipfile.ZipFile(
                temporary, "w", compression=zipfile.ZIP_DEFLATED
            ) as archive:
                with archive.open("states.parquet", "w") as states_file:
                    frame.write_parquet(states_file)
                archive.writestr("meta.json", json.dumps(meta))
            with open(temporary, "rb") as written:
                os.fsync(written.fileno())
            os.replace(temporary, target)
            self._last_snapshot = time.monotonic()
        logger.info(
            "wrote a stream snapshot of %d players and %d offsets to %s",
            frame.height,
            len(meta["offsets"]),
            target,
        )
        return target

    def _load(self, path: Path) -> None:
        with zipfile.ZipFile(path) as archive:
            meta = json.loads(archive.read("meta.json"))
            with archive.open("states.parquet") as states_file:
                frame = pl.read_parquet(states_file)
        if meta.get("state_schema_version") != STATE_SCHEMA_VERSION:
            raise ValueError(
                f"snapshot {path} has state schema version "
                f"{meta.get('state_schema_version')}, this crmbet uses "
                f"{STATE_SCHEMA_VERSION}; delete the snapshot and replay the stream"
            )
        self.states.put_states(frame)
        self._offsets = {key: int(value) for key, value in meta["offsets"].items()}
        self._windows = meta["windows"]
        self._segments = meta["segments"]
        logger.info(
            "loaded a stream snapshot of %d players from %s", frame.height, path
        )

    def close(self) -> None:
        """Write a final snapshot when a snapshot path is set."""
        if self.snapshot_path is not None:
            self.snapshot()


# The commit script checks every expected offset before it writes anything,
# so a fenced commit changes nothing. KEYS: offsets hash, segments hash, m
# dedupe lists. ARGV starts with m and m triples (field, expected, next).
# Per partition follow the batch's ids as one JSON list and how many
# trailing lists to keep. Then come the state key prefix, the player ids as
# one JSON list, their states concatenated in that order, the length of one
# state, and the changed segments as one flat JSON list of player id and
# segment pairs. The script builds the state keys itself, so the client
# sends a few large arguments instead of one per player: encoding 50,000
# keys cost the client about 40 ms per commit.
_COMMIT_SCRIPT = """
local m = tonumber(ARGV[1])
local pos = 2
for i = 1, m do
  local current = redis.call('HGET', KEYS[1], ARGV[pos]) or ''
  if current ~= ARGV[pos + 1] then
    return {0, ARGV[pos], current}
  end
  pos = pos + 3
end
pos = 2
for i = 1, m do
  redis.call('HSET', KEYS[1], ARGV[pos], ARGV[pos + 2])
  pos = pos + 3
end
for i = 1, m do
  if ARGV[pos] ~= '' then
    redis.call('RPUSH', KEYS[2 + i], ARGV[pos])
    redis.call('LTRIM', KEYS[2 + i], -tonumber(ARGV[pos + 1]), -1)
  end
  pos = pos + 2
end
local prefix = ARGV[pos]
local players = cjson.decode(ARGV[pos + 1])
local states = ARGV[pos + 2]
local size = tonumber(ARGV[pos + 3])
local pairs_ = {}
for i = 1, #players do
  local offset = (i - 1) * size
  pairs_[#pairs_ + 1] = prefix .. players[i]
  pairs_[#pairs_ + 1] = string.sub(states, offset + 1, offset + size)
  if #pairs_ >= 1000 or i == #players then
    redis.call('MSET', unpack(pairs_))
    pairs_ = {}
  end
end
local segments = cjson.decode(ARGV[pos + 4])
local start = 1
while start <= #segments do
  local stop = math.min(start + 999, #segments)
  redis.call('HSET', KEYS[2], unpack(segments, start, stop))
  start = stop + 1
end
return {1, '', ''}
"""

# The read script takes the segments hash as its key, the state key prefix
# and the player ids as one JSON list. It returns three strings. The first
# is a mask with '1' for each player that has a stored state and '0' for
# each that has none. The second is the found states concatenated in that
# order, and the third the players' segments as a JSON list, with false for
# a player without one. It replaces
# an MGET and an HMGET with one key or field argument per player.
_READ_SCRIPT = """
local players = cjson.decode(ARGV[2])
local prefix = ARGV[1]
local mask = {}
local blobs = {}
local segments = {}
local start = 1
while start <= #players do
  local stop = math.min(start + 999, #players)
  local keys = {}
  for i = start, stop do
    keys[#keys + 1] = prefix .. players[i]
  end
  local values = redis.call('MGET', unpack(keys))
  local names = redis.call('HMGET', KEYS[1], unpack(players, start, stop))
  for j = 1, #keys do
    if values[j] then
      mask[#mask + 1] = '1'
      blobs[#blobs + 1] = values[j]
    else
      mask[#mask + 1] = '0'
    end
    segments[#segments + 1] = names[j]
  end
  start = stop + 1
end
return {table.concat(mask), table.concat(blobs), cjson.encode(segments)}
"""


class RedisStateStore:
    """States and offsets in Redis, written by one Lua script per micro-batch.

    Key layout, with ``P = {namespace}:v{STATE_SCHEMA_VERSION}``:

    - ``P:state:{player_id}``: the state as little-endian float64 values in
      the order of ``P:fields`` (a JSON list of the state field names),
    - ``P:offsets:{group_id}``: hash of ``{topic}:{partition}`` to the next
      offset to read,
    - ``P:dedupe:{group_id}:{topic}:{partition}``: list of JSON arrays, the
      event ids of one commit each, oldest first, trimmed to the fewest
      trailing arrays that hold ``window`` ids,
    - ``P:segments``: hash of player id to segment name.

    NOTE: the scripts touch keys of many players and build the state keys
    themselves instead of declaring them, so they need a single Redis
    primary; Redis Cluster would reject them.
    """

    def __init__(self, url: str, namespace: str = "crmbet:stream") -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.prefix = f"{namespace}:v{STATE_SCHEMA_VERSION}"
        self._script = self.client.register_script(_COMMIT_SCRIPT)
        self._read_script = self.client.register_script(_READ_SCRIPT)
        self.client.set(f"{self.prefix}:fields", json.dumps(_FIELD_NAMES))
        # Sizes of the id arrays of each partition's dedupe list, oldest first.
        self._window_sizes: dict[str, list[int]] = {}

    def _state_key(self, player_id: str) -> str:
        return f"{self.prefix}:state:{player_id}"

    def _dedupe_key(self, group_id: str, topic: str, partition: int) -> str:
        return f"{self.prefix}:dedupe:{group_id}:{topic}:{partition}"

    def load_offsets(
        self, group_id: str, topic: str, partitions: list[int]
    ) -> dict[int, int | None]:
        """Return the stored next offset of each partition (None when not stored)."""
        if not partitions:
            return {}
        values = self.client.hmget(
            f"{self.prefix}:offsets:{group_id}", [f"{topic}:{p}" for p in partitions]
        )
        return {
            p: int(v) if v is not None else None
            for p, v in zip(partitions, values, strict=True)
        }

    def load_dedupe_ids(self, group_id: str, topic: str, partition: int) -> list[str]:
        """Return the event ids of a partition's dedupe window, oldest first."""
        key = self._dedupe_key(group_id, topic, partition)
        arrays = [orjson.loads(value) for value in self.client.lrange(key, 0, -1)]
        self._window_sizes[key] = [len(ids) for ids in arrays]
        return [event_id for ids in arrays for event_id in ids]

    def get_states(self, player_ids: list[str]) -> pl.DataFrame:
        """Return the stored states of the known players among ``player_ids``."""
        found, blobs = self._read_states(player_ids)
        return _decode_states(found, blobs)

    def get_state_matrix(self, player_ids: list[str]) -> StateMatrix:
        """Return the stored states of the known players as a matrix."""
        found, blobs = self._read_states(player_ids)
        if not found:
            return StateMatrix.empty()
        values = np.frombuffer(b"".join(blobs), dtype="<f8").reshape(
            len(blobs), len(_FIELD_NAMES)
        )
        return StateMatrix(found, values)

    def get_states_and_segments(
        self, player_ids: list[str]
    ) -> tuple[StateMatrix, dict[str, str]]:
        """Return the stored states and segments of ``player_ids`` in one call."""
        if not player_ids:
            return StateMatrix.empty(), {}
        mask, blobs, names = self._read_script(
            keys=[f"{self.prefix}:segments"],
            args=[f"{self.prefix}:state:", orjson.dumps(player_ids)],
        )
        found_rows = np.flatnonzero(np.frombuffer(mask, dtype=np.uint8) == ord("1"))
        if found_rows.size:
            values = np.frombuffer(blobs, dtype="<f8").reshape(
                found_rows.size, len(_FIELD_NAMES)
            )
            states = StateMatrix([player_ids[i] for i in found_rows.tolist()], values)
        else:
            states = StateMatrix.empty()
        segments = {
            player_id: name
            for player_id, name in zip(player_ids, orjson.loads(names), strict=True)
            if name is not False
        }
        return states, segments

    def _read_states(self, player_ids: list[str]) -> tuple[list[str], list[bytes]]:
        found: list[str] = []
        blobs: list[bytes] = []
        for start in range(0, len(player_ids), 10_000):
            chunk = player_ids[start : start + 10_000]
            blobs_of_chunk = self.client.mget([self._state_key(p) for p in chunk])
            for player_id, blob in zip(chunk, blobs_of_chunk, strict=True):
                if blob is not None:
                    found.append(player_id)
                    blobs.append(blob)
        return found, blobs

    def get_segments(self, player_ids: list[str]) -> dict[str, str]:
        """Return the stored segment name of the known players among ``player_ids``."""
        if not player_ids:
            return {}
        values = self.client.hmget(f"{self.prefix}:segments", player_ids)
        return {
            p: v.decode()
            for p, v in zip(player_ids, values, strict=True)
            if v is not None
        }

    def commit(self, commit: Commit, window: int) -> None:
        """Apply a commit atomically, keeping at least ``window`` ids per partition."""
        partitions = sorted(commit.offsets)
        dedupe_keys = [
            self._dedupe_key(commit.group_id, commit.topic, p) for p in partitions
        ]
        keys: list[str] = [
            f"{self.prefix}:offsets:{commit.group_id}",
            f"{self.prefix}:segments",
        ]
        keys += dedupe_keys

        # Offsets: field, expected value and new value per partition.
        args: list[bytes | str | int] = [len(partitions)]
        for p in partitions:
            expected = commit.expected[p]
            args += [
                f"{commit.topic}:{p}",
                "" if expected is None else str(expected),
                str(commit.offsets[p]),
            ]

        # Dedupe ids: one JSON array per partition and how many arrays to keep.
        sizes_after: dict[str, list[int]] = {}
        for p, key in zip(partitions, dedupe_keys, strict=True):
            ids = commit.new_ids.get(p, [])
            sizes = [*self._window_sizes.get(key, []), len(ids)] if ids else []
            keep = _arrays_to_keep(sizes, window)
            sizes_after[key] = sizes[-keep:] if ids else self._window_sizes.get(key, [])
            args += [orjson.dumps(ids) if ids else "", keep]

        # States: the key prefix, the players as one JSON list and their states
        # concatenated, then the changed segments as one flat JSON list.
        states = commit.states
        if isinstance(states, StateMatrix):
            players = states.player_ids
            encoded = np.ascontiguousarray(states.values, dtype="<f8").tobytes()
        else:
            players = states["player_id"].to_list()
            encoded = _encode_states(states)
        args += [
            f"{self.prefix}:state:",
            orjson.dumps(players),
            encoded,
            len(_FIELD_NAMES) * 8,
            orjson.dumps([item for pair in commit.segments.items() for item in pair]),
        ]

        ok, partition_field, stored = self._script(keys=keys, args=args)
        if not ok:
            partition = int(partition_field.decode().rsplit(":", 1)[1])
            raise _stale(commit, partition, int(stored) if stored else None)
        self._window_sizes.update(sizes_after)

    def states_frame(self) -> pl.DataFrame:
        """Return every stored state as a state table (scans the namespace)."""
        prefix = f"{self.prefix}:state:"
        players = [
            key.decode()[len(prefix) :]
            for key in self.client.scan_iter(match=f"{prefix}*", count=10_000)
        ]
        return self.get_states(sorted(players))

    def clear(self) -> int:
        """Delete every key of this namespace and return how many were deleted."""
        deleted = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=f"{self.prefix}:*", count=10_000):
            batch.append(key)
            if len(batch) >= 10_000:
                deleted += self.client.delete(*batch)
                batch = []
        if batch:
            deleted += self.client.delete(*batch)
        return deleted

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()


def _arrays_to_keep(sizes: list[int], window: int) -> int:
    """Return how many trailing id arrays hold at least ``window`` ids (at least 1)."""
    total = 0
    for count, size in enumerate(reversed(sizes), start=1):
        total += size
        if total >= window:
            return count
    return max(len(sizes), 1)


def _encode_states(states: pl.DataFrame) -> bytes:
    matrix = states.select(_FIELD_NAMES).to_numpy().astype("<f8", copy=False)
    return np.ascontiguousarray(matrix).tobytes()


def _decode_states(player_ids: list[str], blobs: list[bytes]) -> pl.DataFrame:
    if not player_ids:
        return empty_states()
    matrix = np.frombuffer(b"".join(blobs), dtype="<f8").reshape(
        len(blobs), len(_FIELD_NAMES)
    )
    # NaN marks a missing value (a player without bets has no first bet), and
    # the merge reads missing values as nulls.
    values = pl.from_numpy(matrix, schema=_FIELD_NAMES, orient="row").fill_nan(None)
    return values.insert_column(0, pl.Series("player_id", player_ids, dtype=pl.String))


def open_state_store(
    redis_url: str | None,
    namespace: str = "crmbet:stream",
    snapshot_path: Path | None = None,
) -> StreamStateStore:
    """Open the Redis store when ``redis_url`` is set, else the embedded one."""
    if redis_url:
        return RedisStateStore(redis_url, namespace)
    return EmbeddedStateStore(snapshot_path)
