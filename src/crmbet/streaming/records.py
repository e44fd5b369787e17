"""Micro-batches of raw records and their decoding into a raw table.

A record's value is one JSON object with the canonical event fields and the
raw player id; the free-text fields are not read (see :data:`RAW_SCHEMA`).
Decoding reads the whole batch with Polars' NDJSON reader and falls back to
one record at a time only when the batch contains broken JSON, so the common
case costs one parse for thousands of records.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
import polars as pl

from crmbet.events.schema import EVENT_SCHEMA, OPTIONAL_TEXT_FIELDS

#: Every field is read as text, so that validation reports the value as sent.
#: The free-text fields (game, session, channel) are not read, because the
#: fold does not use them and they are never invalid. Skipping them saves
#: about a tenth of the read. Dead letters keep the whole record value.
RAW_SCHEMA: dict[str, pl.DataType] = {
    name: pl.String() for name in EVENT_SCHEMA if name not in OPTIONAL_TEXT_FIELDS
}


@dataclass
class RecordBatch:
    """Records read from one source, as parallel lists."""

    topic: str
    values: list[bytes | None]
    partitions: list[int]
    offsets: list[int]
    keys: Sequence[bytes | None] = field(default_factory=list)
    timestamps_ms: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class DeadLetter:
    """One invalid record, with the reason and where it came from."""

    reason: str
    error: str
    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int

    def headers(self) -> list[tuple[str, bytes]]:
        """Return the Kafka headers that describe the failure and the source."""
        return [
            ("reason", self.reason.encode()),
            ("error", self.error.encode()[:1000]),
            ("source_topic", self.topic.encode()),
            ("source_partition", str(self.partition).encode()),
            ("source_offset", str(self.offset).encode()),
        ]


def _read(
    values: list[bytes],
    joined: bytes | None = None,
    schema: dict[str, pl.DataType] = RAW_SCHEMA,
) -> pl.DataFrame:
    if joined is None:
        joined = b"\n".join(values)
    frame = pl.read_ndjson(io.BytesIO(joined), schema=schema)
    if frame.height != len(values):
        raise ValueError(f"read {frame.height} rows from {len(values)} records")
    return frame


def _parse_one(value: bytes) -> str | None:
    """Return why one record is not a JSON object, or None when it is."""
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as error:
        return f"record is not valid JSON ({error}); send one JSON object per record"
    if not isinstance(parsed, dict):
        return (
            f"record is JSON of type {type(parsed).__name__}, not an object; "
            "send one JSON object per record"
        )
    return None


def decode(
    batch: RecordBatch, schema: dict[str, pl.DataType] | None = None
) -> tuple[pl.DataFrame, list[int], list[DeadLetter]]:
    """Decode a batch into a raw table of the fields in ``schema``.

    ``schema`` defaults to :data:`RAW_SCHEMA`; a consumer with a column
    mapping passes the source's names instead.

    Returns
    -------
    (polars.DataFrame, list[int], list[DeadLetter])
        The raw table (text columns of the canonical fields), the batch
        index of each of its rows, and the records that are not JSON objects.
    """
    schema = RAW_SCHEMA if schema is None else schema
    values = batch.values
    # A batch without empty values and without newlines inside a value has
    # exactly one newline between each two records once joined.
    clean = None not in values and b"" not in values
    if clean:
        joined = b"\n".join(values)  # type: ignore[arg-type]
        clean = joined.count(b"\n") == len(values) - 1
    if clean:
        try:
            return _read(values, joined, schema), list(range(len(values))), []  # type: ignore[arg-type]
        except (pl.exceptions.ComputeError, ValueError, TypeError):
            pass
    kept: list[bytes] = []
    index: list[int] = []
    dead: list[DeadLetter] = []
    for position, value in enumerate(values):
        problem = (
            "record is empty; send one JSON object per record"
            if not value
            else (_parse_one(value))
        )
        if problem is not None:
            dead.append(_dead_letter(batch, position, "invalid_json", problem))
            continue
        # Re-serialising removes newlines inside the object, which NDJSON forbids.
        kept.append(orjson.dumps(orjson.loads(value)) if b"\n" in value else value)  # type: ignore[operator]
        index.append(position)
    frame = _read(kept, schema=schema) if kept else pl.DataFrame(schema=schema)
    return frame, index, dead


def _dead_letter(
    batch: RecordBatch, position: int, reason: str, error: str
) -> DeadLetter:
    return DeadLetter(
        reason=reason,
        error=error,
        value=batch.values[position],
        key=batch.keys[position] if batch.keys else None,
        topic=batch.topic,
        partition=batch.partitions[position],
        offset=batch.offsets[position],
    )


def reason_code(errors: list[str]) -> str:
    """Map validation messages to one short reason for the dead-letter header."""
    first = errors[0] if errors else ""
    field_name, _, rest = first.partition("=")
    if field_name == "player_id":
        return "missing_player_id"
    if field_name == "event_type":
        return "unknown_event_type"
    if field_name == "ts" and "future" in rest:
        return "future_timestamp"
    if field_name in ("amount", "payout", "bonus_amount"):
        return "invalid_amount"
    return f"invalid_{field_name}" if field_name else "invalid_record"


def dead_letter_at(batch: RecordBatch, position: int, errors: list[str]) -> DeadLetter:
    """Build the dead letter of the record at ``position`` from its messages."""
    return _dead_letter(batch, position, reason_code(errors), "; ".join(errors))
