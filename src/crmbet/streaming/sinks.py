"""Output sinks of the stream: Kafka topics or local files.

Outputs are sent and flushed before the batch's commit, so each is
delivered at least once: a crash after the flush and before the commit
sends them again when the batch is replayed. A batch's segment changes
arrive as :class:`~crmbet.streaming.processor.SegmentChanges`, whose JSON
the sinks take in one call.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import orjson

from crmbet.streaming.drift import DriftAlarm
from crmbet.streaming.processor import SegmentChange, SegmentChanges
from crmbet.streaming.records import DeadLetter

logger = logging.getLogger(__name__)


def _change_values(changes: Sequence[SegmentChange]) -> list[bytes]:
    """Return the JSON of each change, written in one pass for SegmentChanges."""
    if isinstance(changes, SegmentChanges):
        return changes.values()
    return [orjson.dumps(change.to_dict()) for change in changes]


class OutputSink(Protocol):
    """Receives dead letters, segment changes and drift alarms."""

    def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Send invalid records with their reasons."""
        ...

    def send_segment_changes(self, changes: Sequence[SegmentChange]) -> None:
        """Send segment changes for CRM triggers."""
        ...

    def send_alarms(self, alarms: Sequence[DriftAlarm]) -> None:
        """Send drift alarms."""
        ...

    def flush(self) -> None:
        """Block until everything sent so far is delivered."""
        ...

    def close(self) -> None:
        """Flush and release resources."""
        ...


class LocalSink:
    """Keeps the latest outputs in memory and appends them to JSON-lines files.

    Parameters
    ----------
    folder:
        Where ``dead_letters.jsonl``, ``segment_changes.jsonl`` and
        ``alarms.jsonl`` are appended; None keeps outputs in memory only.
    keep:
        Outputs of each kind kept in memory.
    """

    def __init__(self, folder: str | Path | None = None, keep: int = 10_000) -> None:
        self.folder = Path(folder) if folder else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.dead_letters: deque[DeadLetter] = deque(maxlen=keep)
        self.segment_changes: deque[SegmentChange] = deque(maxlen=keep)
        self.alarms: deque[DriftAlarm] = deque(maxlen=keep)

    def _append(self, name: str, rows: list[dict[str, object]]) -> None:
        if self.folder is None or not rows:
            return
        with (self.folder / name).open("ab") as handle:
            handle.write(b"".join(orjson.dumps(row) + b"\n" for row in rows))

    def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Keep invalid records and append them to ``dead_letters.jsonl``."""
        self.dead_letters.extend(letters)
        self._append(
            "dead_letters.jsonl",
            [
                {
                    "reason": letter.reason,
                    "error": letter.error,
                    "record": (letter.value or b"").decode(errors="replace"),
                    "source_topic": letter.topic,
                    "source_partition": letter.partition,
                    "source_offset": letter.offset,
                }
                for letter in letters
            ],
        )

    def send_segment_changes(self, changes: Sequence[SegmentChange]) -> None:
        """Keep segment changes and append them to ``segment_changes.jsonl``."""
        keep = self.segment_changes.maxlen
        self.segment_changes.extend(
            changes[-keep:] if keep is not None and len(changes) > keep else changes
        )
        if self.folder is None or not changes:
            return
        with (self.folder / "segment_changes.jsonl").open("ab") as handle:
            handle.write(b"".join(value + b"\n" for value in _change_values(changes)))

    def send_alarms(self, alarms: Sequence[DriftAlarm]) -> None:
        """Keep drift alarms and append them to ``alarms.jsonl``."""
        self.alarms.extend(alarms)
        self._append("alarms.jsonl", [alarm.to_dict() for alarm in alarms])

    def flush(self) -> None:
        """Nothing to do: files are written synchronously."""

    def close(self) -> None:
        """Nothing to release."""


class KafkaSink:
    """Produces outputs to the dead-letter, segment-change and alert topics."""

    def __init__(
        self,
        producer: object,
        dead_letter_topic: str,
        segment_topic: str,
        alert_topic: str,
        flush_timeout_s: float = 30.0,
    ) -> None:
        self.producer = producer
        self.dead_letter_topic = dead_letter_topic
        self.segment_topic = segment_topic
        self.alert_topic = alert_topic
        self.flush_timeout_s = flush_timeout_s
        self._pending = 0
        self._failed: list[str] = []

    def _delivered(self, error: object, message: object) -> None:
        if error is not None:
            self._failed.append(str(error))

    def _produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        while True:
            try:
                self.producer.produce(  # type: ignore[attr-defined]
                    topic,
                    value=value,
                    key=key,
                    headers=headers,
                    on_delivery=self._delivered,
                )
                break
            except BufferError:
                # The local queue is full; serve delivery reports to drain it.
                self.producer.poll(0.1)  # type: ignore[attr-defined]
        self._pending += 1

    def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Produce each invalid record unchanged, with reason and source in headers."""
        for letter in letters:
            self._produce(
                self.dead_letter_topic,
                letter.value or b"",
                letter.key,
                letter.headers(),
            )

    def send_segment_changes(self, changes: Sequence[SegmentChange]) -> None:
        """Produce one JSON record per change, keyed by the player."""
        if isinstance(changes, SegmentChanges):
            keys = changes.keys()
        else:
            keys = [change.player_id.encode() for change in changes]
        self._produce_many(self.segment_topic, keys, _change_values(changes))

    def _produce_many(self, topic: str, keys: list[bytes], values: list[bytes]) -> None:
        """Produce many records, retrying one only when the local queue is full."""
        produce = self.producer.produce  # type: ignore[attr-defined]
        delivered = self._delivered
        for key, value in zip(keys, values, strict=True):
            try:
                produce(topic, value=value, key=key, on_delivery=delivered)
            except BufferError:
                self._produce(topic, value, key)
                continue
            self._pending += 1

    def send_alarms(self, alarms: Sequence[DriftAlarm]) -> None:
        """Produce one JSON record per drift alarm, keyed by the signal."""
        for alarm in alarms:
            self._produce(
                self.alert_topic, orjson.dumps(alarm.to_dict()), alarm.signal.encode()
            )

    def flush(self) -> None:
        """Wait for delivery of everything produced since the last flush."""
        if not self._pending:
            return
        remaining = self.producer.flush(self.flush_timeout_s)  # type: ignore[attr-defined]
        if remaining:
            raise TimeoutError(
                f"{remaining} output records were not delivered within "
                f"{self.flush_timeout_s} s; check that the broker is reachable"
            )
        self._pending = 0
        if self._failed:
            failed, self._failed = self._failed, []
            raise RuntimeError(
                f"{len(failed)} output records failed delivery, first: {failed[0]}; "
                "the batch is not committed and will be processed again"
            )

    def close(self) -> None:
        """Flush outstanding records."""
        self.flush()
