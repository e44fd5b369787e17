"""A lost broker shows in health, and the consumer rejoins when it returns."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer
from stream_helpers import start_tansu

from crmbet.streaming import StreamConfig, StreamingMLPipeline
from crmbet.streaming.kafka import (
    ensure_topics,
    event_records,
    produce_records,
    producer_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _wait(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_broker_loss_shows_in_health(topic, raw_bustabit, settings, tmp_path):
    broker, bootstrap = start_tansu()
    records = event_records(raw_bustabit.head(1_000))
    try:
        ensure_topics(bootstrap, [topic], partitions=1)
        produce_records(Producer(producer_settings(bootstrap)), topic, records[:500])
        config = StreamConfig(
            kafka_bootstrap_servers=bootstrap,
            topic=topic,
            group_id=f"{topic}-group",
            model_ref=None,
            enable_online_learning=False,
            session_timeout_ms=6000,
            max_poll_interval_ms=10_000,
            snapshot_path=tmp_path / "state.zip",
            dead_letter_topic=f"{topic}.dlq",
            segment_topic=f"{topic}.segments",
            alert_topic=f"{topic}.alerts",
        )
        pipeline = StreamingMLPipeline(config, settings=settings).start()
        assert _wait(lambda: pipeline.records_processed == 500, 30)
        assert pipeline.health()["status"] == "ok"

        broker.kill()
        broker.wait(timeout=10)
        assert _wait(lambda: pipeline.health()["status"] == "broker_unavailable", 30)
        assert pipeline.health()["broker_error"]

        broker, _ = start_tansu(int(bootstrap.rsplit(":", 1)[1]))
        ensure_topics(bootstrap, [topic], partitions=1)
        produce_records(Producer(producer_settings(bootstrap)), topic, records[500:])
        # The new broker starts empty, so its offsets restart at 0 and the
        # stored position (500) skips its first 500 records.
        assert _wait(lambda: pipeline.health()["status"] == "ok", 60)
        pipeline.stop()
    finally:
        broker.kill()
        broker.wait(timeout=10)
