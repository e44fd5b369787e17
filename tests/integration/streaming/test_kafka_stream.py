"""The stream consumer against a real Kafka-protocol broker and a real Redis."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer
from stream_helpers import assert_same_states, read_topic

from crmbet.features.definitions import compute_features
from crmbet.serving.predictor import SegmentPredictor
from crmbet.streaming import RedisStateStore, StreamConfig, StreamingMLPipeline
from crmbet.streaming.kafka import (
    ensure_topics,
    event_records,
    produce_records,
    producer_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _config(
    bootstrap: str, topic: str, redis_url: str, namespace: str, **extra
) -> StreamConfig:
    return StreamConfig(
        kafka_bootstrap_servers=bootstrap,
        topic=topic,
        group_id=f"{topic}-group",
        redis_url=redis_url,
        namespace=namespace,
        session_timeout_ms=6000,
        max_poll_interval_ms=10_000,
        dead_letter_topic=f"{topic}.dlq",
        segment_topic=f"{topic}.segments",
        alert_topic=f"{topic}.alerts",
        **extra,
    )


def _produce(bootstrap: str, topic: str, records: list, partitions: int = 4) -> None:
    ensure_topics(
        bootstrap,
        [topic, f"{topic}.dlq", f"{topic}.segments", f"{topic}.alerts"],
        partitions=partitions,
    )
    produce_records(Producer(producer_settings(bootstrap)), topic, records)


def test_stream_equals_offline_fold(
    kafka_bootstrap,
    topic,
    redis_url,
    redis_namespace,
    raw_bustabit,
    offline_states,
    segment_model,
    settings,
):
    records = event_records(raw_bustabit)
    _produce(kafka_bootstrap, topic, records)
    config = _config(kafka_bootstrap, topic, redis_url, redis_namespace)
    pipeline = StreamingMLPipeline(
        config, settings=settings, predictor=SegmentPredictor(segment_model)
    )

    processed = pipeline.run(max_records=len(records), idle_timeout_s=30)

    assert processed == len(records)
    store = RedisStateStore(redis_url, redis_namespace)
    online = store.states_frame()
    assert_same_states(online, offline_states)
    as_of = float(offline_states["last_ts"].max())
    online_features = compute_features(online.sort("player_id"), as_of=as_of)
    offline_features = compute_features(offline_states.sort("player_id"), as_of=as_of)
    for name in offline_features.columns[1:]:
        assert np.allclose(
            online_features[name].to_numpy(),
            offline_features[name].to_numpy(),
            rtol=1e-9,
            atol=1e-9,
        ), name
    changes = read_topic(kafka_bootstrap, f"{topic}.segments", offline_states.height)
    assert len(changes) >= offline_states.height
    first = orjson.loads(changes[0].value())
    assert set(first) >= {
        "player_id",
        "old_segment",
        "new_segment",
        "model_version",
        "event_time",
    }
    assert pipeline.learner is not None and pipeline.learner.n_updates_ > 0


POISON = {
    "invalid_json": b'{"event_id": "bad-1", "player_id": ',
    "missing_player_id": {
        "event_id": "bad-2",
        "ts": "2016-12-01T00:00:00Z",
        "event_type": "bet",
        "amount": "5",
    },
    "invalid_amount": {
        "event_id": "bad-3",
        "player_id": "mallory",
        "ts": "2016-12-01T00:00:00Z",
        "event_type": "bet",
        "amount": "-5",
    },
    "unknown_event_type": {
        "event_id": "bad-5",
        "player_id": "mallory",
        "ts": "2016-12-01T00:00:00Z",
        "event_type": "refund",
        "amount": "5",
    },
    "future_timestamp": {
        "event_id": "bad-6",
        "player_id": "mallory",
        "ts": "2999-01-01T00:00:00Z",
        "event_type": "bet",
        "amount": "5",
    },
}
NON_NUMERIC = {
    "event_id": "bad-4",
    "player_id": "mallory",
    "ts": "2016-12-01T00:00:00Z",
    "event_type": "bet",
    "amount": "ten",
}


def test_poison_records_go_to_dead_letters(
    kafka_bootstrap,
    topic,
    redis_url,
    redis_namespace,
    raw_bustabit,
    pseudonymizer,
    settings,
):
    good = raw_bustabit.head(2_000)
    records = event_records(good)
    poison = [
        (b"mallory", v if isinstance(v, bytes) else orjson.dumps(v))
        for v in [*POISON.values(), NON_NUMERIC]
    ]
    mixed = records[:700] + poison[:3] + records[700:1400] + poison[3:] + records[1400:]
    _produce(kafka_bootstrap, topic, mixed, partitions=1)
    config = _config(
        kafka_bootstrap,
        topic,
        redis_url,
        redis_namespace,
        model_ref=None,
        enable_online_learning=False,
        max_batch_size=500,
    )

    StreamingMLPipeline(config, settings=settings).run(
        max_records=len(mixed), idle_timeout_s=30
    )

    letters = read_topic(kafka_bootstrap, f"{topic}.dlq", len(poison))
    assert len(letters) == len(poison)
    reasons = sorted(dict(m.headers())["reason"].decode() for m in letters)
    assert reasons == sorted([*POISON, "invalid_amount"])
    offsets = {int(dict(m.headers())["source_offset"]) for m in letters}
    assert offsets == {700, 701, 702, 1403, 1404, 1405}
    assert all(dict(m.headers())["source_topic"].decode() == topic for m in letters)
    from crmbet.events.adapters import ingest_frame
    from crmbet.features.state import fold

    expected = fold(ingest_frame(good, pseudonymizer=pseudonymizer).events)
    assert_same_states(
        RedisStateStore(redis_url, redis_namespace).states_frame(), expected
    )


def test_two_consumers_rebalance(
    kafka_bootstrap,
    topic,
    redis_url,
    redis_namespace,
    raw_bustabit,
    offline_states,
    settings,
):
    records = event_records(raw_bustabit)
    # The rest is produced once the second consumer owns partitions, so it
    # has records to process however fast the first consumer is.
    head = len(records) // 5
    _produce(kafka_bootstrap, topic, records[:head], partitions=4)
    options = {
        "model_ref": None,
        "enable_online_learning": False,
        "max_batch_size": 500,
    }
    first = StreamingMLPipeline(
        _config(kafka_bootstrap, topic, redis_url, redis_namespace, **options),
        settings=settings,
    )
    second = StreamingMLPipeline(
        _config(kafka_bootstrap, topic, redis_url, redis_namespace, **options),
        settings=settings,
    )
    store = RedisStateStore(redis_url, redis_namespace)

    def stored_total() -> int:
        offsets = store.client.hgetall(f"{store.prefix}:offsets:{topic}-group")
        return sum(int(value) for value in offsets.values())

    first.start()
    deadline = time.monotonic() + 60
    while stored_total() < head and time.monotonic() < deadline:
        time.sleep(0.05)
    second.start()
    while not second.health()["assigned_partitions"] and time.monotonic() < deadline:
        time.sleep(0.05)
    _produce(kafka_bootstrap, topic, records[head:], partitions=4)
    while stored_total() < len(records) and time.monotonic() < deadline:
        time.sleep(0.1)
    first.stop()
    second.stop()

    assert stored_total() == len(records)
    assert second.records_processed > 0
    assert_same_states(store.states_frame(), offline_states)
