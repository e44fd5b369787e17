"""Settings of the stream consumer, checked in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crmbet.events.validation import ColumnMapping


@dataclass
class StreamConfig:
    """Settings of one stream consumer.

    Parameters
    ----------
    kafka_bootstrap_servers:
        Broker list, ``host:port[,host:port]``. None runs without a broker
        (replay from a file only).
    topic:
        Topic of raw transactions, one JSON object per record, keyed by the
        raw player id so that a player's events stay in one partition and in
        order.
    group_id:
        Consumer group; offsets are stored per group in the online store.
    dead_letter_topic, segment_topic, alert_topic:
        Output topics for invalid records, segment changes and drift alarms.
    max_latency_ms:
        Maximum time in milliseconds a record waits for its micro-batch to fill.
    max_batch_size:
        Maximum number of records read into one micro-batch.
    adaptive_batch_size, min_batch_size:
        Request batches from Kafka that double while the consumer lags and halve
        while it keeps up, between ``min_batch_size`` and ``max_batch_size``
        records. When off, every batch requests ``max_batch_size``.
    enable_online_learning:
        Update a challenger's centroids from the stream and watch for drift.
    dedupe_window:
        Event ids remembered per partition to drop producer retries.
    session_timeout_ms, max_poll_interval_ms:
        Consumer-group liveness settings passed to librdkafka.
    redis_url:
        Online store URL; the embedded store when None.
    namespace:
        Prefix of every key this consumer writes to Redis.
    snapshot_path, snapshot_interval_s:
        Where and how often the embedded store saves states with offsets.
    challenger_interval_s:
        Seconds between registrations of the online challenger.
    drift_delta, drift_cooldown_s:
        ADWIN confidence and the quiet time after an alarm.
    model_ref:
        Registry alias or version that assigns segments; None skips them.
    column_mapping:
        How the records' own field names and event-type labels map to the
        canonical event; None reads the canonical names.
    """

    kafka_bootstrap_servers: str | None = None
    topic: str = "crmbet.transactions"
    group_id: str = "crmbet-stream"
    dead_letter_topic: str = "crmbet.transactions.dead-letters"
    segment_topic: str = "crmbet.segment-changes"
    alert_topic: str = "crmbet.stream-alerts"
    max_latency_ms: int = 50
    max_batch_size: int = 20_000
    adaptive_batch_size: bool = True
    min_batch_size: int = 100
    enable_online_learning: bool = True
    dedupe_window: int = 100_000
    session_timeout_ms: int = 10_000
    max_poll_interval_ms: int = 60_000
    redis_url: str | None = None
    namespace: str = "crmbet:stream"
    snapshot_path: Path | None = None
    snapshot_interval_s: float = 30.0
    challenger_interval_s: float = 600.0
    drift_delta: float = 0.002
    drift_cooldown_s: float = 300.0
    model_ref: str | None = "champion"
    column_mapping: ColumnMapping | None = None
    consumer_options: dict[str, str | int | float | bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        positive = {
            "max_latency_ms": self.max_latency_ms,
            "max_batch_size": self.max_batch_size,
            "min_batch_size": self.min_batch_size,
            "dedupe_window": self.dedupe_window,
            "session_timeout_ms": self.session_timeout_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name}={value} is invalid; pass a positive number")
        if not 0 < self.drift_delta < 1:
            raise ValueError(
                f"drift_delta={self.drift_delta} is invalid; pass a confidence in "
                "(0, 1), "
                "e.g. 0.002"
            )
        if self.max_poll_interval_ms < self.session_timeout_ms:
            raise ValueError(
                f"max_poll_interval_ms={self.max_poll_interval_ms} is below "
                f"session_timeout_ms={self.session_timeout_ms}; librdkafka rejects "
                "that, "
                "so raise max_poll_interval_ms"
            )
        if self.snapshot_path is not None:
            self.snapshot_path = Path(self.snapshot_path)
