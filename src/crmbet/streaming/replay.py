"""Replay a transactions file as a stream, with no broker.

The file's records become micro-batches of one partition whose offsets are
record numbers, and they go through the same processor, store and sinks as
records from Kafka. With the embedded store's snapshot, a replay that stops
resumes at the stored offset.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import polars as pl

from crmbet.events.adapters import bustabit_to_raw, detect_format
from crmbet.streaming.records import RecordBatch


class ReplaySource:
    """Micro-batches of a JSON-lines, CSV, Parquet or bustabit file.

    Parameters
    ----------
    path:
        The file; JSON lines are sent as they are, other formats are
        converted to one JSON object per row.
    batch_size:
        Records per micro-batch.
    rate:
        Records per second to replay at; None replays as fast as possible.
    """

    def __init__(
        self, path: str | Path, batch_size: int = 20_000, rate: float | None = None
    ) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(
                f"replay file {self.path} not found; check the path"
            )
        if batch_size <= 0:
            raise ValueError(
                f"batch_size={batch_size} is invalid; pass a positive number"
            )
        if rate is not None and rate <= 0:
            raise ValueError(f"rate={rate} is invalid; pass records per second above 0")
        self.batch_size = batch_size
        self.rate = rate
        self.topic = f"replay:{self.path.name}"

    def _values(self) -> Iterator[bytes]:
        fmt = detect_format(self.path)
        if fmt == "jsonl":
            opener = gzip.open if self.path.name.endswith(".gz") else open
            with opener(self.path, "rb") as handle:
                for line in handle:
                    if line.strip():
                        yield line.rstrip(b"\r\n")
            return
        if fmt == "parquet":
            frame = pl.read_parquet(self.path)
        else:
            separator = "\t" if self.path.name.lower().endswith(".tsv") else ","
            frame = pl.read_csv(
                self.path,
                infer_schema=False,
                null_values=["NA", ""],
                separator=separator,
            )
            if fmt == "bustabit":
                frame = bustabit_to_raw(frame)
        frame = frame.with_columns(
            pl.col(name).cast(pl.String)
            for name, dtype in frame.schema.items()
            if dtype.is_temporal()
        )
        for row in frame.iter_rows(named=True):
            yield orjson.dumps(row)

    def batches(self, start: int = 0) -> Iterator[RecordBatch]:
        """Yield micro-batches from record number ``start`` (0-based) on."""
        started = time.monotonic()
        batch = self._empty()
        for offset, value in enumerate(self._values()):
            if offset < start:
                continue
            batch.values.append(value)
            batch.partitions.append(0)
            batch.offsets.append(offset)
            batch.timestamps_ms.append(int(time.time() * 1000))
            if len(batch) >= self.batch_size:
                self._pace(started, offset + 1 - start)
                yield batch
                batch = self._empty()
        if len(batch):
            yield batch

    def _pace(self, started: float, sent: int) -> None:
        if self.rate is None:
            return
        wait = started + sent / self.rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def _empty(self) -> RecordBatch:
        return RecordBatch(
            topic=self.topic,
            values=[],
            partitions=[],
            offsets=[],
            keys=[],
            timestamps_ms=[],
        )
