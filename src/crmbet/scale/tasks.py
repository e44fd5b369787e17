"""The units of work a scale-out job runs on an engine, one bucket or batch each.

Each task is a top-level function of picklable arguments that reads its
input from the work folder and writes its output there, so the local
engine and Dask workers run exactly the same code. Tasks are idempotent: a
task that runs again after a worker died rewrites the same files.

Players are assigned to buckets from their pseudonym, which is 20 hex
characters of an HMAC-SHA256 digest after ``p_``. Digits 1-8 choose the
bucket and digits 9-16 the training sample, so the two are independent and
the same player lands in the same bucket on every run and every machine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from crmbet.events.adapters import (
    SourceFormat,
    detect_format,
    iter_ingest,
    write_dead_letters,
)
from crmbet.events.pseudonym import Pseudonymizer
from crmbet.events.schema import EVENT_SCHEMA
from crmbet.events.validation import ColumnMapping, normalize
from crmbet.features.definitions import compute_features
from crmbet.features.state import STATE_SCHEMA, empty_states, fold, merge
from crmbet.scale.output import (
    JobLayout,
    write_atomic,
    write_bucket_features,
    write_bucket_segments,
)

logger = logging.getLogger(__name__)

_HEX_RANGE = float(16**8)


def bucket_of(n_buckets: int) -> pl.Expr:
    """Return the bucket of each row's pseudonymised ``player_id``."""
    digits = pl.col("player_id").str.slice(2, 8).str.to_integer(base=16, strict=False)
    # Ids that are not crmbet pseudonyms fall back to Polars' hash, which is
    # stable within one Polars version only.
    fallback = pl.col("player_id").hash(seed=0)
    return (digits.cast(pl.UInt64).fill_null(fallback) % n_buckets).cast(pl.Int64)


def in_sample(fraction: float) -> pl.Expr:
    """Return True for a deterministic ``fraction`` of players."""
    digits = pl.col("player_id").str.slice(10, 8).str.to_integer(base=16, strict=False)
    fallback = pl.col("player_id").hash(seed=1) % (16**8)
    return (
        digits.cast(pl.UInt64).fill_null(fallback).cast(pl.Float64)
        < fraction * _HEX_RANGE
    )


@dataclass(frozen=True)
class IngestTask:
    """One batch of a source: a row range of a Parquet file, or a whole other file."""

    task_id: int
    path: str
    source_format: SourceFormat
    offset: int = 0
    length: int | None = None


@dataclass(frozen=True)
class IngestStats:
    """Counts of one ingest task: valid events and dead letters."""

    n_events: int
    n_dead_letters: int


@dataclass(frozen=True)
class BucketStats:
    """Counts of one folded bucket: players and the newest event time."""

    bucket: int
    n_players: int
    last_ts: float | None


def plan_ingest(
    source: str | Path, source_format: SourceFormat, batch_size: int
) -> list[IngestTask]:
    """Split a source into ingest tasks of at most ``batch_size`` rows.

    Parquet files, and folders of them, split by row range; CSV, JSON lines
    and bustabit files are read by a single task each, batch by batch.
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"input {path} not found; check the path")
    fmt = detect_format(path) if source_format == "auto" else source_format
    if fmt != "parquet":
        return [IngestTask(0, str(path), fmt)]
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(
            f"folder {path} contains no .parquet files; check the path"
        )
    tasks: list[IngestTask] = []
    for file in files:
        rows = pl.scan_parquet(file).select(pl.len()).collect().item()
        for offset in range(0, rows, batch_size):
            length = min(batch_size, rows - offset)
            tasks.append(IngestTask(len(tasks), str(file), "parquet", offset, length))
    return tasks


def _write_events(
    events: pl.DataFrame, layout: JobLayout, n_buckets: int, name: str
) -> None:
    bucketed = events.with_columns(bucket_of(n_buckets).alias("__bucket"))
    for (bucket,), part in bucketed.partition_by("__bucket", as_dict=True).items():
        # The fold reads each bucket file once, so write speed matters more
        # than size. LZ4 takes about 70% of zstd's CPU time, for files about
        # twice the size.
        write_atomic(
            part.drop("__bucket"),
            layout.event_bucket(int(bucket)) / name,
            compression="lz4",
        )


def run_ingest(
    task: IngestTask,
    *,
    layout: JobLayout,
    n_buckets: int,
    pseudonymizer: Pseudonymizer,
    mapping: ColumnMapping | None = None,
    batch_size: int = 2_000_000,
) -> IngestStats:
    """Validate, pseudonymise and bucket one batch of a source.

    Valid events go to ``events/bucket=NNNNN/part-TTTTT.parquet``; invalid
    records to ``dead_letters/part-TTTTT.jsonl``.
    """
    name = f"part-{task.task_id:05d}"
    dead_path = layout.dead_letters / f"{name}.jsonl"
    dead_path.unlink(missing_ok=True)
    n_events = n_dead = 0
    if task.source_format == "parquet":
        source = f"parquet:{Path(task.path).name}"
        raw = pl.scan_parquet(task.path).slice(task.offset, task.length).collect()
        result = normalize(raw, mapping, row_offset=task.offset, source=source)
        batches = [
            (pseudonymizer.pseudonymize_column(result.events), result.dead_letters)
        ]
    else:
        batches = (
            (part.events, part.dead_letters)
            for part in iter_ingest(
                task.path,
                pseudonymizer=pseudonymizer,
                source_format=task.source_format,
                mapping=mapping,
                batch_size=batch_size,
            )
        )
    for index, (events, dead) in enumerate(batches):
        _write_events(events, layout, n_buckets, f"{name}-{index:04d}.parquet")
        if dead.height:
            write_dead_letters(dead, dead_path)
        n_events += events.height
        n_dead += dead.height
    return IngestStats(n_events, n_dead)


def run_fold(
    bucket: int, *, layout: JobLayout, previous: JobLayout | None = None
) -> BucketStats:
    """Fold one bucket's events into player states, merging earlier states.

    Every event of a player is in this bucket, so the fold is exact. States
    of an earlier job (``previous``) merge with the merge law, which is
    exact when the new events all come after the earlier ones.
    """
    folder = layout.event_bucket(bucket)
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    states = (
        fold(pl.scan_parquet(files, schema=EVENT_SCHEMA)) if files else empty_states()
    )
    if previous is not None and previous.state_file(bucket).exists():
        states = merge(pl.read_parquet(previous.state_file(bucket)), states)
    write_atomic(states.cast(STATE_SCHEMA), layout.state_file(bucket))
    last_ts = states["last_ts"].max() if states.height else None
    return BucketStats(
        bucket, states.height, None if last_ts is None else float(last_ts)
    )


def run_features(bucket: int, *, layout: JobLayout, as_of: float) -> int:
    """Compute one bucket's features as of ``as_of`` and return the player count."""
    states = pl.read_parquet(layout.state_file(bucket))
    features = compute_features(states, as_of=as_of)
    write_bucket_features(features, layout, bucket)
    return features.height


def run_assign(bucket: int, *, layout: JobLayout, model: object) -> dict[int, int]:
    """Assign one bucket's players to segments; return players per segment."""
    features = pl.read_parquet(layout.feature_file(bucket))
    if features.height == 0:
        return {}
    labels, confidence, _ = model.assign(model.matrix(features))  # type: ignore[attr-defined]
    names = [profile.name for profile in model.profiles]  # type: ignore[attr-defined]
    assignments = pl.DataFrame(
        {
            "player_id": features["player_id"],
            "cluster_id": pl.Series(labels, dtype=pl.Int64),
            "segment": [names[label] for label in labels],
            "confidence": confidence,
        }
    ).with_columns(
        pl.lit(model.version, dtype=pl.String).alias("model_version")  # type: ignore[attr-defined]
    )
    write_bucket_segments(assignments, layout, bucket)
    counts = assignments.group_by("cluster_id").len()
    return dict(
        zip(counts["cluster_id"].to_list(), counts["len"].to_list(), strict=True)
    )
