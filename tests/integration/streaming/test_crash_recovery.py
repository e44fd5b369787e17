"""Consumers killed with SIGKILL resume without losing or repeating events."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from stream_helpers import assert_same_states

from crmbet.streaming import RedisStateStore
from crmbet.streaming.kafka import (
    ensure_topics,
    event_records,
    produce_records,
    producer_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Kill points of the default run; set CRMBET_STREAM_CRASH_POINTS=20 for the full check.
CRASH_POINTS = int(os.environ.get("CRMBET_STREAM_CRASH_POINTS", "3"))
CONSUMER = Path(__file__).with_name("consumer_process.py")


def _start(
    bootstrap: str, topic: str, redis_url: str, namespace: str
) -> subprocess.Popen:
    root = Path(__file__).resolve().parents[3]
    env = os.environ | {"PYTHONPATH": str(root / "src")}
    return subprocess.Popen(
        [
            sys.executable,
            str(CONSUMER),
            bootstrap,
            topic,
            f"{topic}-group",
            redis_url,
            namespace,
            "300",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_sigkill_at_random_points(
    kafka_bootstrap, topic, redis_url, redis_namespace, raw_bustabit, offline_states
):
    records = event_records(raw_bustabit)
    # Producer retries: a few hundred of the first events written again later.
    rng = random.Random(7)
    retried = [records[i] for i in sorted(rng.sample(range(2000), 300))]
    stream = records[:2000] + retried + records[2000:]
    ensure_topics(kafka_bootstrap, [topic], partitions=4)
    produce_records(Producer(producer_settings(kafka_bootstrap)), topic, stream)
    store = RedisStateStore(redis_url, redis_namespace)

    def stored_total() -> int:
        offsets = store.client.hgetall(f"{store.prefix}:offsets:{topic}-group")
        return sum(int(value) for value in offsets.values())

    points = sorted(rng.sample(range(1, len(stream)), CRASH_POINTS))
    kills = 0
    for point in points:
        if stored_total() >= point:
            continue
        process = _start(kafka_bootstrap, topic, redis_url, redis_namespace)
        deadline = time.monotonic() + 90
        while stored_total() < point and process.poll() is None:
            assert time.monotonic() < deadline, f"no progress to offset total {point}"
            time.sleep(0.01)
        process.kill()
        _, errors = process.communicate(timeout=30)
        assert process.returncode == -9, errors.decode()[-2000:]
        kills += 1

    process = _start(kafka_bootstrap, topic, redis_url, redis_namespace)
    deadline = time.monotonic() + 120
    while stored_total() < len(stream) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.kill()
    process.communicate(timeout=30)

    # A point the previous run already passed is skipped, so allow a few.
    assert kills >= max(1, CRASH_POINTS // 2)
    assert stored_total() == len(stream)
    assert_same_states(store.states_frame(), offline_states)
