"""The ``crmbet stream`` and ``crmbet stream-produce`` commands."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()
logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add the stream commands to the ``crmbet`` application."""
    app.command("stream")(stream)
    app.command("stream-produce")(stream_produce)


def stream(
    replay: Annotated[
        Path | None,
        typer.Option(
            help="Replay this transactions file (JSON lines, CSV, Parquet or bustabit) "
            "instead of consuming Kafka."
        ),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            help="Replay speed in records per second; as fast as possible when unset."
        ),
    ] = None,
    mapping: Annotated[
        str | None,
        typer.Option(
            help="JSON mapping of canonical fields to the records' own field names "
            "(and event-type labels, as for crmbet train)."
        ),
    ] = None,
    bootstrap_servers: Annotated[
        str | None,
        typer.Option(
            help="Kafka brokers, host:port[,host:port]; CRMBET_KAFKA_BOOTSTRAP_SERVERS "
            "by default."
        ),
    ] = None,
    topic: Annotated[str, typer.Option(help="Topic of raw transactions.")] = (
        "crmbet.transactions"
    ),
    group: Annotated[str, typer.Option(help="Consumer group id.")] = "crmbet-stream",
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="Redis online store URL; CRMBET_REDIS_URL by default, else the "
            "embedded "
            "store."
        ),
    ] = None,
    snapshot: Annotated[
        Path | None,
        typer.Option(
            help="Snapshot file of the embedded store; CRMBET_HOME/stream/state.zip by "
            "default."
        ),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            help="Registry alias or version that assigns segments; 'none' keeps states "
            "only."
        ),
    ] = "champion",
    online_learning: Annotated[
        bool,
        typer.Option(
            help="Update a challenger's centroids from the stream and watch for drift."
        ),
    ] = True,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Maximum number of records per micro-batch.")
    ] = (20_000),
    max_latency_ms: Annotated[
        int,
        typer.Option(
            min=1, help="Maximum wait in milliseconds for a micro-batch to fill."
        ),
    ] = 50,
    max_records: Annotated[
        int | None, typer.Option(help="Stop after this many records.")
    ] = None,
    idle_timeout: Annotated[
        float | None,
        typer.Option(help="Stop after this many seconds without a record."),
    ] = None,
    metrics_port: Annotated[
        int,
        typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT; 0 disables."),
    ] = 0,
) -> None:
    """Keep player state and segments current from Kafka or a replayed file."""
    from crmbet.cli import parse_mapping
    from crmbet.config import get_settings
    from crmbet.errors import ModelNotFoundError
    from crmbet.streaming.config import StreamConfig
    from crmbet.streaming.pipeline import StreamingMLPipeline

    settings = get_settings()
    config = StreamConfig(
        kafka_bootstrap_servers=bootstrap_servers,
        topic=topic,
        group_id=group,
        redis_url=redis_url,
        max_batch_size=batch_size,
        max_latency_ms=max_latency_ms,
        enable_online_learning=online_learning,
        snapshot_path=snapshot or settings.home / "stream" / "state.zip",
        model_ref=None if model.lower() == "none" else model,
        column_mapping=parse_mapping(mapping),
    )
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1")
        console.print(f"metrics on http://127.0.0.1:{metrics_port}/metrics")
    try:
        pipeline = StreamingMLPipeline(config, settings=settings)
    except ModelNotFoundError as error:
        console.print(f"[red]{error}[/red]\nor pass --model none to keep states only")
        raise typer.Exit(1) from error
    signal.signal(signal.SIGTERM, lambda *_: pipeline.stop(timeout_s=0))
    try:
        if replay is not None:
            pipeline.replay(replay, rate=rate)
        else:
            if not config.kafka_bootstrap_servers:
                console.print(
                    "[red]no Kafka brokers: pass --bootstrap-servers, set "
                    "CRMBET_KAFKA_BOOTSTRAP_SERVERS or use --replay FILE[/red]"
                )
                raise typer.Exit(2)
            pipeline.run(max_records=max_records, idle_timeout_s=idle_timeout)
    except KeyboardInterrupt:
        logger.info("stopping on Ctrl-C")
    _print_summary(pipeline)
    health = pipeline.health()
    if (
        replay is not None
        and health["records_processed"]
        and not health["events_processed"]
    ):
        # A scheduled replay must not report success when nothing was read.
        console.print(
            f"[red]every record of {replay} was invalid; the reasons are in "
            f"{settings.home / 'stream' / 'dead_letters.jsonl'}. Stream records "
            "use the canonical field names (event_id, player_id, ts, event_type, "
            "amount, ...) unless --mapping names the records' own.[/red]"
        )
        raise typer.Exit(1)


def _print_summary(pipeline: object) -> None:
    health = pipeline.health()  # type: ignore[attr-defined]
    sink = pipeline.sink  # type: ignore[attr-defined]
    changes = list(getattr(sink, "segment_changes", []))[-10:]
    if changes:
        table = Table(title="latest segment changes")
        for column in ("player", "old segment", "new segment", "model", "event time"):
            table.add_column(column)
        for change in changes:
            row = change.to_dict()
            table.add_row(
                str(row["player_id"]),
                str(row["old_segment"] or "-"),
                str(row["new_segment"]),
                str(row["model_version"] or "-"),
                str(row["event_time"]),
            )
        console.print(table)
    console.print(
        f"records={health['records_processed']:,} "
        f"events={health['events_processed']:,} "
        f"dead letters={health['dead_letters']:,}"
    )


def stream_produce(
    input: Annotated[
        Path, typer.Option("--input", "-i", help="Transactions file to send.")
    ],
    bootstrap_servers: Annotated[
        str | None,
        typer.Option(help="Kafka brokers; CRMBET_KAFKA_BOOTSTRAP_SERVERS by default."),
    ] = None,
    topic: Annotated[
        str, typer.Option(help="Topic to write to.")
    ] = "crmbet.transactions",
    partitions: Annotated[
        int, typer.Option(min=1, help="Partitions of the topic when it is created.")
    ] = 4,
) -> None:
    """Send a transactions file to Kafka, one JSON record per event keyed by player."""
    from confluent_kafka import Producer

    from crmbet.config import get_settings
    from crmbet.streaming.kafka import ensure_topics, produce_records, producer_settings
    from crmbet.streaming.replay import ReplaySource

    servers = bootstrap_servers or get_settings().kafka_bootstrap_servers
    if not servers:
        console.print(
            "[red]no Kafka brokers: pass --bootstrap-servers or set "
            "CRMBET_KAFKA_BOOTSTRAP_SERVERS[/red]"
        )
        raise typer.Exit(2)
    ensure_topics(servers, [topic], partitions=partitions)
    source = ReplaySource(input)
    records = (
        (_player_key(value), value)
        for batch in source.batches()
        for value in batch.values
    )
    sent = produce_records(Producer(producer_settings(servers)), topic, records)  # type: ignore[arg-type]
    console.print(f"sent {sent:,} records from {input} to {topic}")


def _player_key(value: bytes | None) -> bytes:
    import orjson

    try:
        return str(orjson.loads(value or b"{}").get("player_id", "")).encode()
    except (orjson.JSONDecodeError, AttributeError):
        return b""
