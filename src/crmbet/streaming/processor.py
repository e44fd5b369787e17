"""One micro-batch, from raw records to a commit: the heart of the stream.

:class:`BatchProcessor` validates, pseudonymises and deduplicates the
records, folds them into states, merges those into the stored states,
assigns segments and prepares one :class:`~crmbet.streaming.stores.Commit`.
The Kafka loop and the file replay both drive it, so they share every step.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, overload

import numpy as np
import orjson
import polars as pl

from crmbet.events.pseudonym import Pseudonymizer
from crmbet.events.validation import ColumnMapping, normalize
from crmbet.features.definitions import compute_columns
from crmbet.streaming import metrics
from crmbet.streaming.dedupe import DedupeWindow
from crmbet.streaming.records import (
    RAW_SCHEMA,
    DeadLetter,
    RecordBatch,
    dead_letter_at,
    decode,
)
from crmbet.streaming.state_matrix import (
    FIELD_NAMES,
    StateMatrix,
    fold_events,
    merge_states,
)
from crmbet.streaming.stores import Commit, StreamStateStore

if TYPE_CHECKING:
    from crmbet.serving.predictor import SegmentPredictor

logger = logging.getLogger(__name__)

#: Distinct raw ids whose pseudonyms are cached before the cache is reset.
PSEUDONYM_CACHE_SIZE = 1_000_000
#: Rows up to which a batch's player ids are pseudonymised as a Python list.
SMALL_BATCH_ROWS = 2_000


@dataclass(frozen=True)
class SegmentChange:
    """A player whose segment changed, for CRM triggers."""

    player_id: str
    old_segment: str | None
    new_segment: str
    cluster_id: int
    model_version: str | None
    event_time: float
    changed_at: float

    def to_dict(self) -> dict[str, object]:
        """Return the change as JSON-ready data with ISO 8601 times."""
        return {
            "player_id": self.player_id,
            "old_segment": self.old_segment,
            "new_segment": self.new_segment,
            "cluster_id": self.cluster_id,
            "model_version": self.model_version,
            "event_time": _isoformat(self.event_time),
            "changed_at": _isoformat(self.changed_at),
        }


@functools.lru_cache(maxsize=4096)
def _isoformat(seconds: float) -> str:
    # Cached because every change of a batch has the same changed_at, and
    # datetime.fromtimestamp costs microseconds per call.
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def _isoformat_many(seconds: np.ndarray) -> list[str]:
    """Return :func:`_isoformat` of each value, whole seconds without a loop.

    NumPy writes whole seconds exactly as ``datetime.isoformat`` does; other
    values (rare: event times are mostly whole seconds) go through it.
    """
    seconds = np.asarray(seconds, dtype=np.float64)
    whole = np.isfinite(seconds) & (seconds == np.floor(seconds))
    text = np.datetime_as_string(
        np.where(whole, seconds, 0.0).astype("datetime64[s]"), unit="s"
    ).astype(object)
    out = (text + "+00:00").tolist()
    for i in np.flatnonzero(~whole).tolist():
        out[i] = _isoformat(float(seconds[i]))
    return out


class SegmentChanges(Sequence[SegmentChange]):
    """The segment changes of one batch, held as columns.

    A batch can change the segments of thousands of players. Keeping them
    as columns and writing their JSON in one pass costs a fraction of one
    :class:`SegmentChange` object and one ``to_dict`` per player. Indexing
    and iteration still give :class:`SegmentChange` objects.
    """

    def __init__(
        self,
        player_ids: list[str],
        old_segments: list[str | None],
        new_segments: list[str],
        cluster_ids: np.ndarray,
        model_version: str | None,
        event_times: np.ndarray,
        changed_at: float,
    ) -> None:
        self.player_ids = player_ids
        self.old_segments = old_segments
        self.new_segments = new_segments
        self.cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
        self.model_version = model_version
        self.event_times = np.asarray(event_times, dtype=np.float64)
        self.changed_at = changed_at

    @classmethod
    def empty(cls) -> SegmentChanges:
        """Return a batch without changes."""
        return cls([], [], [], np.empty(0, np.int64), None, np.empty(0), 0.0)

    def __len__(self) -> int:
        return len(self.player_ids)

    @overload
    def __getitem__(self, index: int) -> SegmentChange: ...

    @overload
    def __getitem__(self, index: slice) -> list[SegmentChange]: ...

    def __getitem__(self, index: int | slice) -> SegmentChange | list[SegmentChange]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return SegmentChange(
            player_id=self.player_ids[index],
            old_segment=self.old_segments[index],
            new_segment=self.new_segments[index],
            cluster_id=int(self.cluster_ids[index]),
            model_version=self.model_version,
            event_time=float(self.event_times[index]),
            changed_at=self.changed_at,
        )

    def __iter__(self) -> Iterator[SegmentChange]:
        return (self[i] for i in range(len(self)))

    def keys(self) -> list[bytes]:
        """Return each change's record key, the player id."""
        return [player_id.encode() for player_id in self.player_ids]

    def values(self) -> list[bytes]:
        """Return each change as the JSON of :meth:`SegmentChange.to_dict`."""
        if not self.player_ids:
            return []
        token: dict[str | None, bytes] = {None: b"null"}
        for name in {*self.old_segments, *self.new_segments}:
            if name is not None:
                token[name] = orjson.dumps(name)
        version = orjson.dumps(self.model_version)
        changed_at = _isoformat(self.changed_at).encode()
        times = _isoformat_many(self.event_times)
        dumps = orjson.dumps
        return [
            b'{"player_id":%b,"old_segment":%b,"new_segment":%b,"cluster_id":%d,'
            b'"model_version":%b,"event_time":"%b","changed_at":"%b"}'
            % (
                dumps(player_id),
                token[old],
                token[new],
                cluster_id,
                version,
                time_text.encode(),
                changed_at,
            )
            for player_id, old, new, cluster_id, time_text in zip(
                self.player_ids,
                self.old_segments,
                self.new_segments,
                self.cluster_ids.tolist(),
                times,
                strict=True,
            )
        ]


@dataclass
class BatchResult:
    """Outputs of one processed micro-batch, before its commit."""

    commit: Commit | None
    dead_letters: list[DeadLetter] = field(default_factory=list)
    segment_changes: Sequence[SegmentChange] = field(
        default_factory=SegmentChanges.empty
    )
    n_records: int = 0
    n_events: int = 0
    n_duplicates: int = 0
    n_skipped: int = 0
    features: np.ndarray | None = None
    confidence: np.ndarray | None = None
    timestamps_ms: list[int] = field(default_factory=list)


class _PseudonymCache:
    """Pseudonyms of the raw ids of a batch, each distinct id hashed once.

    The cache skips ids seen in recent batches; new ids go through
    :meth:`Pseudonymizer.pseudonymize_many` in one call.
    """

    def __init__(self, pseudonymizer: Pseudonymizer) -> None:
        self._pseudonymizer = pseudonymizer
        self._cache: dict[str, str] = {}

    def pseudonymize(self, raw_ids: list[str]) -> list[str]:
        """Return the pseudonym of each id, hashing only ids not in the cache."""
        cache = self._cache
        if len(cache) > PSEUDONYM_CACHE_SIZE:
            cache.clear()
        missing = list({raw_id: None for raw_id in raw_ids if raw_id not in cache})
        if missing:
            cache.update(
                zip(
                    missing, self._pseudonymizer.pseudonymize_many(missing), strict=True
                )
            )
        return [cache[raw_id] for raw_id in raw_ids]

    def column(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Replace the ``player_id`` column with pseudonyms."""
        if frame.height == 0:
            return frame
        raw = frame["player_id"]
        if frame.height <= SMALL_BATCH_ROWS:
            # Looking up a short list costs less than the two Polars queries
            # of the path below.
            pseudonyms = self.pseudonymize(raw.to_list())
            return frame.with_columns(
                pl.Series("player_id", pseudonyms, dtype=pl.String)
            )
        distinct = raw.unique()
        pseudonyms = pl.Series(self.pseudonymize(distinct.to_list()), dtype=pl.String)
        return frame.with_columns(
            raw.replace_strict(distinct, pseudonyms, return_dtype=pl.String)
        )


class BatchProcessor:
    """Turn micro-batches of raw records into commits for one consumer.

    Parameters
    ----------
    store:
        Online store holding states, offsets and dedupe windows.
    pseudonymizer:
        Keyed hash applied to every raw player id.
    group_id, topic:
        Names under which offsets and windows are stored.
    predictor:
        Assigns segments to updated players; None keeps states only.
    dedupe_window:
        Event ids remembered per partition.
    mapping:
        The records' own field names and event-type labels; None when the
        records use the canonical names.
    """

    def __init__(
        self,
        store: StreamStateStore,
        pseudonymizer: Pseudonymizer,
        *,
        group_id: str,
        topic: str,
        predictor: SegmentPredictor | None = None,
        dedupe_window: int = 100_000,
        mapping: ColumnMapping | None = None,
    ) -> None:
        self.mapping = mapping
        # The fields are read under the names the records use.
        self.raw_schema = (
            RAW_SCHEMA
            if mapping is None
            else {
                mapping.source_column(name): kind for name, kind in RAW_SCHEMA.items()
            }
        )
        self.store = store
        self.group_id = group_id
        self.topic = topic
        self.predictor = predictor
        self.dedupe_window = dedupe_window
        self.positions: dict[int, int | None] = {}
        self.windows: dict[int, DedupeWindow] = {}
        self.watermark = 0.0
        self._pseudonyms = _PseudonymCache(pseudonymizer)

    # Partition ownership -------------------------------------------------

    def assign(self, partitions: list[int]) -> dict[int, int | None]:
        """Load the stored offsets and windows of newly owned partitions."""
        offsets = self.store.load_offsets(self.group_id, self.topic, partitions)
        for partition in partitions:
            self.positions[partition] = offsets[partition]
            ids = self.store.load_dedupe_ids(self.group_id, self.topic, partition)
            self.windows[partition] = DedupeWindow(self.dedupe_window, ids)
        logger.info(
            "assigned %s[%s] at stored offsets %s", self.topic, partitions, offsets
        )
        return offsets

    def revoke(self, partitions: list[int]) -> None:
        """Forget partitions this consumer no longer owns."""
        for partition in partitions:
            self.positions.pop(partition, None)
            self.windows.pop(partition, None)
        logger.info("revoked %s%s", self.topic, partitions)

    # Processing -----------------------------------------------------------

    def process(self, batch: RecordBatch) -> BatchResult:
        """Validate, fold and merge a micro-batch into a commit (not yet applied)."""
        keep = self._owned_positions(batch)
        result = BatchResult(
            commit=None, n_records=len(batch), n_skipped=len(batch) - len(keep)
        )
        if not keep:
            return result
        if len(keep) < len(batch):
            batch = _subset(batch, keep)
        result.timestamps_ms = batch.timestamps_ms

        # Step 1: parse, validate and set invalid records aside.
        raw, index, result.dead_letters = decode(batch, self.raw_schema)
        checked = normalize(raw, self.mapping, source=f"kafka:{batch.topic}")
        positions = np.asarray(index, dtype=np.intp)
        if checked.dead_letters.height:
            dead_rows = []
            for row, errors in checked.dead_letters.select("row", "errors").iter_rows():
                dead_rows.append(row - 1)
                result.dead_letters.append(
                    dead_letter_at(batch, index[row - 1], errors)
                )
            positions = np.delete(positions, dead_rows)

        # Step 2: pseudonymise and drop event ids seen within the window.
        events = self._pseudonyms.column(checked.events)
        events, new_ids, result.n_duplicates = self._dedupe(events, positions, batch)
        result.n_events = events.height

        # Step 3: fold, merge with the stored states and assign segments.
        offsets = self._next_offsets(batch)
        commit = Commit(
            group_id=self.group_id,
            topic=self.topic,
            states=StateMatrix.empty(),
            offsets=offsets,
            expected={p: self.positions[p] for p in offsets},
            new_ids=new_ids,
        )
        if events.height:
            # NumPy fold and merge: the Polars ones cost milliseconds of query
            # planning per call, more than the work on a small batch.
            batch_states = fold_events(events)
            # States and segments come back in one round trip.
            stored, segments = self.store.get_states_and_segments(
                batch_states.player_ids
            )
            merged = merge_states(stored, batch_states)
            last_ts = float(merged.column("last_ts").max())
            self.watermark = max(self.watermark, last_ts)
            commit.states = merged
            if self.predictor is not None:
                self._assign_segments(merged, segments, commit, result)
        result.commit = commit
        return result

    def apply(self, result: BatchResult) -> None:
        """Commit a processed batch and advance the positions and windows.

        Raises
        ------
        StaleOffsetError
            When another consumer stored different offsets; nothing is written.
        """
        commit = result.commit
        if commit is None:
            return
        self.store.commit(commit, self.dedupe_window)
        for partition, offset in commit.offsets.items():
            self.positions[partition] = offset
            window = self.windows.get(partition)
            if window is not None:
                window.extend(commit.new_ids.get(partition, []))

    def _owned_positions(self, batch: RecordBatch) -> list[int]:
        """Return the indexes of records of owned partitions at or past the position."""
        partitions = np.asarray(batch.partitions, dtype=np.int64)
        offsets = np.asarray(batch.offsets, dtype=np.int64)
        keep = np.zeros(len(partitions), dtype=bool)
        for partition in np.unique(partitions).tolist():
            if partition not in self.positions:
                continue
            in_partition = partitions == partition
            stored = self.positions[partition]
            if stored is not None:
                in_partition &= offsets >= stored
            keep |= in_partition
        if keep.all():
            return list(range(len(partitions)))
        return np.flatnonzero(keep).tolist()

    def _next_offsets(self, batch: RecordBatch) -> dict[int, int]:
        partitions = np.asarray(batch.partitions, dtype=np.int64)
        offsets = np.asarray(batch.offsets, dtype=np.int64)
        return {
            partition: int(offsets[partitions == partition].max()) + 1
            for partition in np.unique(partitions).tolist()
        }

    def _dedupe(
        self, events: pl.DataFrame, positions: np.ndarray, batch: RecordBatch
    ) -> tuple[pl.DataFrame, dict[int, list[str]], int]:
        """Drop events whose id was seen in the batch or the partition's window.

        Returns the kept events, their ids per partition (the ids new to the
        windows) and how many events were dropped.
        """
        partitions = np.asarray(batch.partitions, dtype=np.int64)[positions]
        ids = events.get_column("event_id")
        keep = ids.is_first_distinct().to_numpy()
        id_array = ids.to_numpy().astype(object, copy=False)
        owned = np.unique(partitions).tolist()
        rows = {
            partition: (
                np.arange(len(partitions))
                if len(owned) == 1
                else np.flatnonzero(partitions == partition)
            )
            for partition in owned
        }
        for partition, where in rows.items():
            window = self.windows.get(partition)
            if window is None or not len(window):
                continue
            # Each id is looked up in its own partition's window only.
            seen = window.intersection(id_array[where].tolist())
            if seen:
                keep[where] &= ~np.isin(id_array[where], list(seen))
        duplicates = events.height - int(keep.sum())
        if duplicates:
            events = events.filter(pl.Series(keep))
            logger.debug("dropped %d duplicate events", duplicates)
        new_ids = {
            partition: id_array[where[keep[where]]].tolist()
            for partition, where in rows.items()
        }
        return events, new_ids, duplicates

    def _assign_segments(
        self,
        merged: StateMatrix,
        stored: dict[str, str],
        commit: Commit,
        result: BatchResult,
    ) -> None:
        from crmbet.models.risk import RISK_FEATURES

        predictor = self.predictor
        assert predictor is not None  # checked by the caller
        model = predictor.model
        needed = list(dict.fromkeys([*model.feature_names, *RISK_FEATURES]))
        start = time.perf_counter()
        # Missing values (a player without bets) read as 0, as in a state
        # table with its nulls filled.
        matrix = np.where(np.isnan(merged.values), 0.0, merged.values)
        state = {name: matrix[:, i] for i, name in enumerate(FIELD_NAMES)}
        players = merged.player_ids
        features = compute_columns(state, self.watermark, needed)
        prediction = predictor.predict_batch(features, players)
        metrics.INFERENCE_LATENCY.observe(time.perf_counter() - start)
        result.features = np.column_stack(
            [features[name] for name in model.feature_names]
        )
        result.confidence = prediction.confidence

        # Compare names, not cluster ids, so that a stored name of an older
        # model with the same name does not count as a change.
        names = [profile.name for profile in model.profiles]
        code_of = {name: i for i, name in enumerate(names)}
        new_codes = np.array([code_of[name] for name in names], dtype=np.int64)[
            prediction.cluster_ids
        ]
        old_names = [stored.get(player_id) for player_id in players]
        old_codes = np.fromiter(
            (code_of.get(name, -1) for name in old_names),  # type: ignore[arg-type]
            dtype=np.int64,
            count=len(old_names),
        )
        changed = np.flatnonzero(old_codes != new_codes).tolist()
        if not changed:
            return
        changed_ids = [players[i] for i in changed]
        cluster_ids = np.asarray(prediction.cluster_ids)[changed]
        new_names = [names[label] for label in cluster_ids.tolist()]
        commit.segments.update(zip(changed_ids, new_names, strict=True))
        result.segment_changes = SegmentChanges(
            player_ids=changed_ids,
            old_segments=[old_names[i] for i in changed],
            new_segments=new_names,
            cluster_ids=cluster_ids,
            model_version=model.version,
            event_times=merged.column("last_ts")[changed],
            changed_at=time.time(),
        )


def _subset(batch: RecordBatch, keep: list[int]) -> RecordBatch:
    return RecordBatch(
        topic=batch.topic,
        values=[batch.values[i] for i in keep],
        partitions=[batch.partitions[i] for i in keep],
        offsets=[batch.offsets[i] for i in keep],
        keys=[batch.keys[i] for i in keep] if batch.keys else [],
        timestamps_ms=[batch.timestamps_ms[i] for i in keep]
        if batch.timestamps_ms
        else [],
    )
