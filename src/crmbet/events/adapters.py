"""Source adapters: CSV, Parquet, JSON lines and the bundled bustabit bets.

Each adapter reads raw records in batches and hands them to
:func:`crmbet.events.validation.normalize`, so every source gets the same
checks, the same dead-letter handling and the same pseudonymisation.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import orjson
import polars as pl

from crmbet.events.pseudonym import Pseudonymizer
from crmbet.events.schema import (
    EVENT_SCHEMA,
    OPTIONAL_TEXT_FIELDS,
    Event,
    empty_events,
)
from crmbet.events.validation import (
    DEAD_LETTER_SCHEMA,
    SOURCE_ROW_COLUMN,
    ColumnMapping,
    ValidationResult,
    normalize,
)

logger = logging.getLogger(__name__)

SourceFormat = Literal["auto", "csv", "parquet", "jsonl", "bustabit"]

#: Columns of the bustabit export; a CSV with this header is read as bustabit.
BUSTABIT_COLUMNS = (
    "Id",
    "GameID",
    "Username",
    "Bet",
    "CashedOut",
    "Bonus",
    "Profit",
    "BustedAt",
    "PlayDate",
)
DEFAULT_BATCH_SIZE = 2_000_000


def bundled_bustabit_path() -> Path:
    """Return the path of the bustabit bets shipped inside the package."""
    return Path(str(resources.files("crmbet") / "data" / "bustabit_bets.csv.gz"))


@dataclass
class IngestResult:
    """Pseudonymised canonical events and dead letters read from one source."""

    events: pl.DataFrame
    dead_letters: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema=DEAD_LETTER_SCHEMA)
    )
    extra: pl.DataFrame | None = None
    source: str = ""

    @property
    def n_read(self) -> int:
        """Number of records read, valid or not."""
        return self.events.height + self.dead_letters.height


def detect_format(path: Path) -> SourceFormat:
    """Guess a source's format from its name and, for CSV, its header.

    A file that starts with Parquet's magic number is Parquet whatever its
    name. A file named as Parquet without it raises an error, and so does a
    folder without Parquet files.
    """
    name = path.name.lower()
    if path.is_dir():
        if not any(path.rglob("*.parquet")):
            raise ValueError(
                f"folder {path} contains no .parquet files; pass a folder of Parquet "
                "files or one file"
            )
        return "parquet"
    if starts_like_parquet(path):
        return "parquet"
    if name.endswith((".parquet", ".pq")):
        raise ValueError(
            f"{path} is named as Parquet but does not start like a Parquet file; "
            "if it holds text, pass --format csv or jsonl"
        )
    if name.endswith((".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz")):
        return "jsonl"
    if name.endswith((".csv", ".csv.gz", ".tsv")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
            header = handle.readline().strip().split(",")
        if tuple(header) == BUSTABIT_COLUMNS:
            return "bustabit"
        return "csv"
    raise ValueError(
        f"input format of {path} is not recognised from its name; pass "
        "--format csv, parquet, jsonl or bustabit"
    )


_PARQUET_MAGIC = b"PAR1"


def starts_like_parquet(path: Path) -> bool:
    """Return whether the file at ``path`` starts with Parquet's magic number."""
    return _first_bytes(path) == _PARQUET_MAGIC


def _first_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(len(_PARQUET_MAGIC))
    except OSError:
        return b""  # a missing file is reported by the reader, with its path


def bustabit_to_raw(frame: pl.DataFrame) -> pl.DataFrame:
    """Convert bustabit rows (one crash bet each) to raw canonical columns.

    A won bet pays ``Bet × CashedOut + Bet × Bonus / 100``, the formula behind
    the export's ``Profit`` column (``Profit`` is that payout minus the
    stake). A lost bet (``CashedOut`` missing) pays nothing. Values are kept
    as text where possible so that validation reports the original value.
    """
    stake = pl.col("Bet").cast(pl.Float64, strict=False)
    cashed_out = pl.col("CashedOut").cast(pl.Float64, strict=False)
    bonus_pct = pl.col("Bonus").cast(pl.Float64, strict=False).fill_null(0.0)
    bonus = stake * bonus_pct / 100.0
    won = pl.col("CashedOut").is_not_null()
    return frame.select(
        pl.concat_str(pl.lit("bustabit-"), pl.col("Id").cast(pl.String)).alias(
            "event_id"
        ),
        pl.col("Username").alias("player_id"),
        pl.col("PlayDate").alias("ts"),
        pl.lit("bet").alias("event_type"),
        pl.col("Bet").alias("amount"),
        pl.when(won).then(stake * cashed_out + bonus).otherwise(0.0).alias("payout"),
        pl.when(won).then(bonus).otherwise(0.0).alias("bonus_amount"),
        pl.lit("crash").alias("product"),
        pl.col("CashedOut").alias("multiplier"),
        pl.lit("bustabit").alias("game"),
        pl.concat_str(pl.lit("round-"), pl.col("GameID").cast(pl.String)).alias(
            "session_id"
        ),
        pl.lit(None, dtype=pl.String).alias("channel"),
    )


def _csv_batches(path: Path, batch_size: int, separator: str) -> Iterator[pl.DataFrame]:
    # Every column is read as text so that validation, not the CSV parser,
    # reports a bad value together with its row.
    reader = pl.scan_csv(
        path, infer_schema=False, null_values=["NA", ""], separator=separator
    )
    offset = 0
    while True:
        try:
            batch = reader.slice(offset, batch_size).collect()
        except pl.exceptions.ComputeError as error:
            # A row with more or fewer fields than the header stops Polars'
            # reader. Read the rest row by row so that such rows become dead
            # letters and the others are processed.
            logger.warning(
                "%s: the CSV reader stopped after row %d (%s); reading the rest "
                "row by row",
                path.name,
                offset,
                str(error).splitlines()[0],
            )
            yield from _csv_batches_row_by_row(path, batch_size, separator, offset)
            return
        if batch.height == 0:
            return
        yield batch
        offset += batch.height
        if batch.height < batch_size:
            return


def _csv_batches_row_by_row(
    path: Path, batch_size: int, separator: str, skip: int
) -> Iterator[pl.DataFrame]:
    """Read CSV rows after the first ``skip``, marking rows of the wrong width."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle, delimiter=separator)
        header = next(reader, [])
        rows: list[dict[str, str | None]] = []
        for number, values in enumerate(reader, start=1):
            if number <= skip:
                continue
            if len(values) != len(header):
                rows.append(
                    {
                        "__json_error": f"row {number} has {len(values)} fields "
                        f"but the header has {len(header)}",
                        "__json_line": separator.join(values)[:2000],
                        "__record_fix": "check that row's quoting and separators",
                    }
                )
            else:
                rows.append(
                    {
                        name: None if value in ("", "NA") else value
                        for name, value in zip(header, values, strict=True)
                    }
                )
            if len(rows) >= batch_size:
                yield pl.DataFrame(rows, infer_schema_length=None)
                rows = []
    if rows:
        yield pl.DataFrame(rows, infer_schema_length=None)


def _scan_parquet(path: Path) -> pl.LazyFrame:
    source = str(path / "**" / "*.parquet") if path.is_dir() else str(path)
    return pl.scan_parquet(source)


def _parquet_batches(
    frame: pl.LazyFrame, batch_size: int, leave_out: list[str]
) -> Iterator[pl.DataFrame]:
    total = frame.select(pl.len()).collect().item()
    for offset in range(0, total, batch_size):
        batch = frame.slice(offset, batch_size)
        if leave_out:
            batch = batch.select(pl.all().exclude(leave_out))
        yield batch.collect()


def _unread_free_text(
    scan: pl.LazyFrame, mapping: ColumnMapping, keep_columns: tuple[str, ...]
) -> list[str]:
    """Return the free-text columns of a Parquet source that need not be read.

    Only columns named like the free-text fields are left out, and only when
    the mapping and ``keep_columns`` do not name them.
    """
    named = set(mapping.columns) | set(mapping.columns.values()) | set(keep_columns)
    present = scan.collect_schema().names()
    return [
        name for name in OPTIONAL_TEXT_FIELDS if name in present and name not in named
    ]


def _jsonl_batches(path: Path, batch_size: int) -> Iterator[pl.DataFrame]:
    opener = gzip.open if path.name.endswith(".gz") else open
    rows: list[dict[str, object]] = []
    with opener(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
                if not isinstance(record, dict):
                    raise orjson.JSONDecodeError(
                        "not an object", line.decode(errors="replace"), 0
                    )
            except orjson.JSONDecodeError as error:
                record = {
                    "__json_error": f"line {number}: {error}",
                    "__json_line": line.decode(errors="replace")[:2000],
                }
            rows.append(
                {
                    key: None if value is None else str(value)
                    for key, value in record.items()
                }
            )
            if len(rows) >= batch_size:
                yield pl.DataFrame(rows, infer_schema_length=None)
                rows = []
    if rows:
        yield pl.DataFrame(rows, infer_schema_length=None)


def _split_json_errors(
    batch: pl.DataFrame, offset: int, source: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    if "__json_error" not in batch.columns:
        return batch, pl.DataFrame(schema=DEAD_LETTER_SCHEMA)
    numbered = batch.with_row_index("row", offset=offset + 1)
    broken = numbered.filter(pl.col("__json_error").is_not_null())
    json_message = pl.format(
        "record={} is not a JSON object; {}",
        pl.col("__json_error"),
        pl.lit("fix the producer to write one JSON object per line"),
    )
    message = (
        pl.when(pl.col("__record_fix").is_not_null())
        .then(pl.format("{}; {}", pl.col("__json_error"), pl.col("__record_fix")))
        .otherwise(json_message)
        if "__record_fix" in broken.columns
        else json_message
    )
    dead = broken.select(
        pl.col("row").cast(pl.Int64),
        pl.concat_list(message).alias("errors"),
        pl.col("__json_line").alias("record"),
        pl.lit(source).alias("source"),
    )
    good = (
        numbered.filter(pl.col("__json_error").is_null())
        .drop("__json_error", "__json_line", "__record_fix", strict=False)
        .rename({"row": SOURCE_ROW_COLUMN})
    )
    return good, dead.cast(DEAD_LETTER_SCHEMA)


def iter_ingest(
    path: str | Path,
    *,
    pseudonymizer: Pseudonymizer,
    source_format: SourceFormat = "auto",
    mapping: ColumnMapping | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    keep_columns: tuple[str, ...] = (),
    free_text: bool = True,
) -> Iterator[IngestResult]:
    """Read a source in batches of validated, pseudonymised canonical events.

    ``keep_columns`` names source columns to carry beside the events in
    ``IngestResult.extra`` (the synthetic generator's ``archetype``, say);
    they never enter the features. With ``free_text=False`` the events'
    free-text fields are left null (see :func:`normalize`).
    """
    for part in _iter_validated(
        path,
        source_format=source_format,
        mapping=mapping,
        batch_size=batch_size,
        keep_columns=keep_columns,
        free_text=free_text,
    ):
        part.events = pseudonymizer.pseudonymize_column(part.events)
        yield part


def _iter_validated(
    path: str | Path,
    *,
    source_format: SourceFormat,
    mapping: ColumnMapping | None,
    batch_size: int,
    keep_columns: tuple[str, ...],
    free_text: bool,
) -> Iterator[IngestResult]:
    """Read a source in batches of validated events with raw player ids."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} not found; check the path")
    fmt = detect_format(path) if source_format == "auto" else source_format
    if fmt == "bustabit" and mapping is not None and mapping != ColumnMapping():
        raise ValueError(
            f"{path} is read as the bustabit format, which maps bustabit's "
            "columns itself, so a column mapping does not apply; read the file "
            "as csv (--format csv) to map its columns yourself"
        )
    if fmt == "parquet" and path.is_file() and not starts_like_parquet(path):
        raise ValueError(
            f"{path} is not a Parquet file (it does not start with PAR1); pass "
            "its real format (--format csv or jsonl), or --format auto to detect it"
        )
    source = f"{fmt}:{path.name}"
    # Free-text columns of a Parquet source left unread (see below).
    leave_out: list[str] = []
    if fmt in ("csv", "bustabit"):
        separator = "\t" if path.name.lower().endswith(".tsv") else ","
        batches = _csv_batches(path, batch_size, separator)
    elif fmt == "parquet":
        scan = _scan_parquet(path)
        if not free_text:
            column_mapping = mapping or ColumnMapping()
            leave_out = _unread_free_text(scan, column_mapping, keep_columns)
        batches = _parquet_batches(scan, batch_size, leave_out)
    elif fmt == "jsonl":
        batches = _jsonl_batches(path, batch_size)
    else:
        raise ValueError(
            f"source format {fmt!r} is not supported; "
            "use csv, parquet, jsonl or bustabit"
        )

    offset = 0
    for batch in batches:
        batch_rows = batch.height
        batch, json_dead = _split_json_errors(batch, offset, source)
        raw = bustabit_to_raw(batch) if fmt == "bustabit" else batch
        result = normalize(
            raw,
            mapping,
            row_offset=offset,
            source=source,
            keep_columns=keep_columns,
            free_text=free_text,
        )
        if leave_out and result.dead_letters.height:
            # A dead letter keeps the whole raw record, so a batch with
            # invalid rows is read again with every column.
            raw = scan.slice(offset, batch_rows).collect()
            result = normalize(
                raw,
                mapping,
                row_offset=offset,
                source=source,
                keep_columns=keep_columns,
                free_text=free_text,
            )
        dead = (
            pl.concat([json_dead, result.dead_letters])
            if json_dead.height
            else (result.dead_letters)
        )
        offset += batch_rows
        yield IngestResult(
            events=result.events, dead_letters=dead, extra=result.extra, source=source
        )


def ingest(
    path: str | Path,
    *,
    pseudonymizer: Pseudonymizer,
    source_format: SourceFormat = "auto",
    mapping: ColumnMapping | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    strict: bool = False,
    dead_letter_path: str | Path | None = None,
    keep_columns: tuple[str, ...] = (),
    free_text: bool = True,
) -> IngestResult:
    """Read a whole source into one table of canonical events.

    Invalid records go to the dead letters (written to ``dead_letter_path``
    as JSON lines when given) and the rest is returned. With ``strict=True``
    the first invalid batch raises :class:`crmbet.errors.EventValidationError`
    instead. ``IngestResult.extra`` lines up with the events row for row.
    With ``free_text=False`` the events' free-text fields are left null.
    """
    result = ingest_raw_ids(
        path,
        source_format=source_format,
        mapping=mapping,
        batch_size=batch_size,
        strict=strict,
        dead_letter_path=dead_letter_path,
        keep_columns=keep_columns,
        free_text=free_text,
    )
    # Pseudonymised once for the whole source, so each player's id is
    # hashed once and not once per batch.
    result.events = pseudonymizer.pseudonymize_column(result.events)
    return result


def ingest_raw_ids(
    path: str | Path,
    *,
    source_format: SourceFormat = "auto",
    mapping: ColumnMapping | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    strict: bool = False,
    dead_letter_path: str | Path | None = None,
    keep_columns: tuple[str, ...] = (),
    free_text: bool = True,
) -> IngestResult:
    """Read a whole source like :func:`ingest` but keep the raw player ids.

    It serves a job that pseudonymises its per-player results instead of
    every event, such as :func:`crmbet.training.run_training`. The events
    it returns carry raw ids and must not leave the process.
    """
    parts: list[IngestResult] = []
    for part in _iter_validated(
        path,
        source_format=source_format,
        mapping=mapping,
        batch_size=batch_size,
        keep_columns=keep_columns,
        free_text=free_text,
    ):
        if strict and part.dead_letters.height:
            ValidationResult(part.events, part.dead_letters).raise_if_invalid()
        parts.append(part)
    events = pl.concat([p.events for p in parts]) if parts else empty_events()
    dead = (
        pl.concat([p.dead_letters for p in parts])
        if parts
        else pl.DataFrame(schema=DEAD_LETTER_SCHEMA)
    )
    extras = [p.extra for p in parts if p.extra is not None]
    extra = pl.concat(extras) if extras else None
    source = parts[0].source if parts else str(path)
    if dead.height and dead_letter_path is not None:
        write_dead_letters(dead, dead_letter_path)
    logger.info(
        "read %d events from %s (%d invalid)", events.height, source, dead.height
    )
    return IngestResult(events=events, dead_letters=dead, extra=extra, source=source)


def ingest_frame(
    frame: pl.DataFrame,
    *,
    pseudonymizer: Pseudonymizer,
    mapping: ColumnMapping | None = None,
    source: str = "dataframe",
) -> IngestResult:
    """Validate and pseudonymise an in-memory table of raw transactions."""
    result = normalize(frame, mapping, source=source)
    events = pseudonymizer.pseudonymize_column(result.events)
    return IngestResult(events=events, dead_letters=result.dead_letters, source=source)


def write_dead_letters(dead_letters: pl.DataFrame, path: str | Path) -> Path:
    """Append dead letters to a JSON-lines file and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Dead letters keep the raw record, raw player id included, so only the
    # owner may read them.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "ab") as handle:
        for row in dead_letters.iter_rows(named=True):
            handle.write(orjson.dumps(row) + b"\n")
    logger.warning("wrote %d dead letters to %s", dead_letters.height, path)
    return path


def iter_events(events: pl.DataFrame) -> Iterator[Event]:
    """Yield each row of a canonical event table as an :class:`Event`."""
    for row in events.select(list(EVENT_SCHEMA)).iter_rows(named=True):
        yield Event.model_validate(row)
