"""Checks shared by the stream tests."""

from __future__ import annotations

import time
import uuid

import polars as pl


def assert_same_states(online: pl.DataFrame, offline: pl.DataFrame) -> None:
    """Check that two state tables hold the same players and values.

    Counts must match exactly; sums may differ by floating-point rounding
    because the stream adds them in a different order.
    """
    import numpy as np

    online = online.sort("player_id")
    offline = offline.sort("player_id")
    assert online["player_id"].to_list() == offline["player_id"].to_list()
    assert online["n_events"].to_list() == offline["n_events"].to_list()
    assert online["n_bets"].to_list() == offline["n_bets"].to_list()
    assert online["n_chases"].to_list() == offline["n_chases"].to_list()
    for name in offline.columns[1:]:
        left = online[name].cast(pl.Float64).to_numpy()
        right = offline[name].cast(pl.Float64).to_numpy()
        assert np.allclose(left, right, rtol=1e-9, atol=1e-9, equal_nan=True), name


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    """Read at least ``expected`` records of a topic from the start (no group join)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                         for p in metadata.partitions])
        messages: list = []
        deadline = time.monotonic() + timeout_s
        while len(messages) < expected and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(10_000, 0.5) if m.error() is None]
        return messages
    finally:
        consumer.close()
