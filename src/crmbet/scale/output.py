"""Partitioned Parquet datasets of a scale-out job.

A job writes everything under one work folder::

    events/bucket=00007/part-00012.parquet    canonical, pseudonymised events
    states/bucket=00007.parquet               player states of one bucket
    features/bucket=00007/part-0.parquet      player features (the output)
    segments/cluster_id=3/bucket-00007.parquet  player segment assignments
    dead_letters/part-00012.jsonl             invalid records
    layout.json                               bucket count and schema versions

Every player lives in exactly one bucket, chosen from its pseudonym, so
downstream tools can read one bucket, one segment or the whole dataset with
any Parquet reader that understands Hive partitioning.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from crmbet.errors import CrmbetError
from crmbet.features.definitions import FEATURE_SCHEMA_VERSION
from crmbet.features.state import STATE_SCHEMA_VERSION

if TYPE_CHECKING:
    from polars._typing import ParquetCompression

LAYOUT_FILE = "layout.json"
_OWNED = ("events", "states", "features", "segments", "dead_letters")


def write_atomic(
    frame: pl.DataFrame, path: Path, compression: ParquetCompression = "zstd"
) -> Path:
    """Write a Parquet file under a temporary name, then rename it into place.

    A task that dies half-way and runs again on another Dask worker leaves
    no truncated file behind, and the rerun replaces the same name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.write_parquet(temporary, compression=compression)
    os.replace(temporary, path)
    return path


@dataclass(frozen=True)
class JobLayout:
    """Paths of one job's work folder."""

    root: Path

    @property
    def events(self) -> Path:
        return self.root / "events"

    @property
    def states(self) -> Path:
        return self.root / "states"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def segments(self) -> Path:
        return self.root / "segments"

    @property
    def dead_letters(self) -> Path:
        return self.root / "dead_letters"

    def event_bucket(self, bucket: int) -> Path:
        return self.events / f"bucket={bucket:05d}"

    def state_file(self, bucket: int) -> Path:
        return self.states / f"bucket={bucket:05d}.parquet"

    def feature_file(self, bucket: int) -> Path:
        return self.features / f"bucket={bucket:05d}" / "part-0.parquet"

    def segment_file(self, bucket: int, cluster_id: int) -> Path:
        return (
            self.segments / f"cluster_id={cluster_id}" / f"bucket-{bucket:05d}.parquet"
        )

    def read_layout(self) -> dict[str, int]:
        """Return the saved bucket count and schema versions."""
        path = self.root / LAYOUT_FILE
        if not path.exists():
            raise CrmbetError(
                f"{self.root} is not a crmbet scale work folder ({path} "
                "is missing); pass the folder of an earlier job"
            )
        return json.loads(path.read_text())

    def prepare(self, n_buckets: int) -> None:
        """Create the work folder, clearing the outputs of an earlier job there.

        Raises
        ------
        CrmbetError
            If the folder exists, is not empty and was not written by a job,
            so that no unrelated data is deleted.
        """
        marker = self.root / LAYOUT_FILE
        if self.root.exists() and any(self.root.iterdir()) and not marker.exists():
            raise CrmbetError(
                f"work folder {self.root} is not empty and has no {LAYOUT_FILE}; "
                "pass an empty or new folder"
            )
        for name in _OWNED:
            shutil.rmtree(self.root / name, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        marker.write_text(
            json.dumps(
                {
                    "n_buckets": n_buckets,
                    "state_schema_version": STATE_SCHEMA_VERSION,
                    "feature_schema_version": FEATURE_SCHEMA_VERSION,
                }
            )
        )


def write_bucket_features(
    features: pl.DataFrame, layout: JobLayout, bucket: int
) -> Path:
    """Write the feature table of one bucket into the features dataset."""
    return write_atomic(features, layout.feature_file(bucket))


def write_bucket_segments(
    assignments: pl.DataFrame, layout: JobLayout, bucket: int
) -> None:
    """Write one bucket's segment assignments, one file per segment."""
    for (cluster_id,), part in assignments.partition_by(
        "cluster_id", as_dict=True, include_key=True
    ).items():
        write_atomic(part, layout.segment_file(bucket, int(cluster_id)))


def scan_player_features(root: str | Path) -> pl.LazyFrame:
    """Scan the features dataset of a work folder (or the dataset folder itself).

    The ``bucket`` partition column comes back as an integer column.
    """
    root = Path(root)
    folder = root / "features" if (root / "features").is_dir() else root
    return pl.scan_parquet(folder / "**" / "*.parquet", hive_partitioning=True)


def scan_segments(root: str | Path) -> pl.LazyFrame:
    """Scan the segment assignments of a work folder."""
    root = Path(root)
    folder = root / "segments" if (root / "segments").is_dir() else root
    return pl.scan_parquet(folder / "**" / "*.parquet", hive_partitioning=True)
