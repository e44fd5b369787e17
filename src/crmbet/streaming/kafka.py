"""Kafka plumbing: client settings, topics, a consumer source and producer helpers.

The consumer never commits offsets to Kafka as its position
(``enable.auto.commit`` is false): positions come from the online store on
every assignment. librdkafka's prefetch queue and ``consume(num_messages)``
batches keep the Python side out of the per-record path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import overload

import orjson
import polars as pl
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from crmbet.streaming import metrics
from crmbet.streaming.config import StreamConfig
from crmbet.streaming.records import RecordBatch

logger = logging.getLogger(__name__)

#: Seconds between two warnings about the same broker error.
ERROR_LOG_INTERVAL_S = 30.0


def consumer_settings(config: StreamConfig) -> dict[str, object]:
    """Return the librdkafka settings of the stream consumer."""
    if not config.kafka_bootstrap_servers:
        raise ValueError(
            "kafka_bootstrap_servers is not set; set "
            "CRMBET_KAFKA_BOOTSTRAP_SERVERS or use "
            "'crmbet stream --replay FILE'"
        )
    settings: dict[str, object] = {
        "bootstrap.servers": config.kafka_bootstrap_servers,
        "group.id": config.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": config.session_timeout_ms,
        "heartbeat.interval.ms": max(config.session_timeout_ms // 3, 100),
        "max.poll.interval.ms": config.max_poll_interval_ms,
        "queued.min.messages": max(config.max_batch_size * 2, 100_000),
        "fetch.wait.max.ms": min(config.max_latency_ms, 100),
        "enable.partition.eof": False,
    }
    settings.update(config.consumer_options)
    return settings


def producer_settings(bootstrap_servers: str, **overrides: object) -> dict[str, object]:
    """Return librdkafka producer settings tuned for batches of small records."""
    settings: dict[str, object] = {
        "bootstrap.servers": bootstrap_servers,
        "linger.ms": 5,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 1_000_000,
        "enable.idempotence": False,
        "acks": "all",
    }
    settings.update(overrides)
    return settings


def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[str],
    partitions: int = 1,
    timeout_s: float = 15.0,
) -> None:
    """Create the topics that do not exist yet."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [
        NewTopic(name, num_partitions=partitions, replication_factor=1)
        for name in topics
        if name not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted).items():
        try:
            future.result(timeout_s)
            logger.info("created topic %s with %d partitions", name, partitions)
        except Exception as error:  # noqa: BLE001 - a concurrent creation is fine
            if "TOPIC_ALREADY_EXISTS" not in str(error):
                raise


def event_records(
    events: pl.DataFrame, player_column: str = "player_id"
) -> list[tuple[bytes, bytes]]:
    """Serialise canonical event rows as ``(key, JSON value)`` pairs keyed by player."""
    frame = events.with_columns(
        pl.col(name).dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ")
        for name, dtype in events.schema.items()
        if isinstance(dtype, pl.Datetime)
    )
    keys = frame[player_column].cast(pl.String).to_list()
    return [
        (str(key).encode(), orjson.dumps(row))
        for key, row in zip(keys, frame.iter_rows(named=True), strict=True)
    ]


def produce_records(
    producer: Producer,
    topic: str,
    records: Iterable[tuple[bytes, bytes]],
    timeout_s: float = 60.0,
) -> int:
    """Produce key/value pairs, waiting for delivery; return how many were sent."""
    sent = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 10_000 == 0:
            producer.poll(0)
    remaining = producer.flush(timeout_s)
    if remaining:
        raise TimeoutError(
            f"{remaining} of {sent} records to {topic} were not delivered "
            f"within {timeout_s} s; check that the broker is reachable"
        )
    return sent


class AdaptiveBatchSize:
    """Micro-batch size: grows while the consumer lags, shrinks while it keeps up.

    ``consume(num_messages=n, timeout=max_latency)`` returns as soon as
    ``n`` records are there, else when the timeout expires. A full batch
    means records are waiting, so the size doubles (throughput). A batch
    under half full means the call waited for the timeout, so the size
    halves and the next call returns sooner (freshness). No record waits
    longer than ``max_latency_ms`` for its batch either way.

    Examples
    --------
    >>> size = AdaptiveBatchSize(maximum=1_000, minimum=100)
    >>> size.update(100), size.update(200), size.update(10)
    (200, 400, 200)
    """

    def __init__(self, maximum: int, minimum: int = 100) -> None:
        if maximum < 1:
            raise ValueError(f"maximum={maximum} is invalid; pass at least 1")
        self.maximum = maximum
        self.minimum = max(1, min(minimum, maximum))
        self.size = self.minimum

    def update(self, received: int) -> int:
        """Record how many records the last call returned; return the next size."""
        if received >= self.size:
            self.size = min(self.size * 2, self.maximum)
        elif received < self.size // 2:
            self.size = max(self.size // 2, self.minimum)
        return self.size


class _MessageKeys(Sequence[bytes | None]):
    """The keys of consumed messages, each read on first access."""

    def __init__(self, messages: list[Message]) -> None:
        self._messages = messages

    def __len__(self) -> int:
        return len(self._messages)

    @overload
    def __getitem__(self, index: int) -> bytes | None: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes | None]: ...

    def __getitem__(self, index: int | slice) -> bytes | None | list[bytes | None]:
        if isinstance(index, slice):
            return [message.key() for message in self._messages[index]]
        return self._messages[index].key()


class KafkaSource:
    """A subscribed consumer that yields micro-batches and reports rebalances.

    Parameters
    ----------
    config:
        Stream settings.
    on_assign:
        Called with newly assigned partitions; returns the stored next
        offset of each (None to start from the beginning).
    on_revoke:
        Called with partitions taken away or lost.
    """

    def __init__(
        self,
        config: StreamConfig,
        on_assign: Callable[[list[int]], dict[int, int | None]],
        on_revoke: Callable[[list[int]], None],
    ) -> None:
        self.config = config
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self.broker_error: str | None = None
        self._last_error_log: dict[int, float] = {}
        settings = consumer_settings(config)
        settings["error_cb"] = self._error
        self.consumer = Consumer(settings)
        self.consumer.subscribe(
            [config.topic],
            on_assign=self._assign,
            on_revoke=self._revoke,
            on_lost=self._lost,
        )
        self.assigned: list[int] = []
        self._lock = threading.Lock()
        self.batch_size = AdaptiveBatchSize(
            config.max_batch_size,
            config.min_batch_size
            if config.adaptive_batch_size
            else config.max_batch_size,
        )
        metrics.BATCH_SIZE.set(self.batch_size.size)

    def _error(self, error: KafkaError) -> None:
        code = error.code()
        self.broker_error = str(error)
        now = time.monotonic()
        if now - self._last_error_log.get(code, 0.0) >= ERROR_LOG_INTERVAL_S:
            self._last_error_log[code] = now
            logger.warning(
                "Kafka client error (librdkafka retries on its own): %s", error
            )

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        # An assignment needs a working group coordinator, so the broker is back.
        self.broker_error = None
        stored = self._on_assign(numbers)
        for tp in partitions:
            offset = stored.get(tp.partition)
            tp.offset = OFFSET_BEGINNING if offset is None else offset
        consumer.assign(partitions)
        self.assigned = sorted(set(self.assigned) | set(numbers))

    def _revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        self._on_revoke(numbers)
        self.assigned = [p for p in self.assigned if p not in numbers]

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        logger.warning(
            "lost partitions %s of %s (session timed out or poll interval "
            "exceeded); the consumer rejoins the group",
            [tp.partition for tp in partitions],
            self.config.topic,
        )
        self._revoke(consumer, partitions)

    def poll_batch(self) -> RecordBatch | None:
        """Return the next micro-batch, or None when nothing arrived in time."""
        messages = self.consumer.consume(
            num_messages=self.batch_size.size,
            timeout=self.config.max_latency_ms / 1000.0,
        )
        metrics.BATCH_SIZE.set(self.batch_size.update(len(messages)))
        if not messages:
            return None
        # One pass per field costs less than appending five fields per
        # record. Keys are read only for the records that become dead letters.
        if any([message.error() is not None for message in messages]):
            for message in messages:
                error = message.error()
                if error is not None:
                    self._error(error)
            messages = [message for message in messages if message.error() is None]
            if not messages:
                return None
        self.broker_error = None
        return RecordBatch(
            topic=self.config.topic,
            values=[message.value() for message in messages],
            partitions=[message.partition() for message in messages],
            offsets=[message.offset() for message in messages],
            keys=_MessageKeys(messages),
            timestamps_ms=[message.timestamp()[1] for message in messages],
        )

    def seek(self, offsets: dict[int, int | None]) -> None:
        """Move the consumer to stored offsets after a fenced commit."""
        for partition, offset in offsets.items():
            if partition not in self.assigned:
                continue
            target = OFFSET_BEGINNING if offset is None else offset
            try:
                self.consumer.seek(TopicPartition(self.config.topic, partition, target))
            except Exception as error:  # noqa: BLE001 - the next rebalance seeks again
                logger.warning(
                    "seek of %s[%d] to %s failed: %s",
                    self.config.topic,
                    partition,
                    target,
                    error,
                )

    def update_lag(self, positions: dict[int, int | None]) -> dict[int, int]:
        """Set the lag gauges from cached high watermarks and return them.

        NOTE: lag is only as accurate as the broker's high watermark.
        """
        lags: dict[int, int] = {}
        for partition, position in positions.items():
            try:
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.config.topic, partition), cached=True
                )
            except Exception:  # noqa: BLE001 - lag is best effort
                continue
            if high < 0:
                continue
            lag = max(high - (position or 0), 0)
            lags[partition] = lag
            metrics.CONSUMER_LAG.labels(
                topic=self.config.topic, partition=str(partition)
            ).set(lag)
        return lags

    def close(self) -> None:
        """Leave the group and close the consumer."""
        self.consumer.close()
