"""Fixtures of the stream tests: a Kafka-protocol broker, topics and reference data."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import polars as pl
import pytest
from stream_helpers import start_tansu

from crmbet.events.adapters import bundled_bustabit_path, bustabit_to_raw
from crmbet.features.definitions import compute_features
from crmbet.features.state import fold
from crmbet.models import train_segments
from crmbet.models.bundle import SegmentModel
from crmbet.streaming.stores import RedisStateStore


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of an in-memory tansu broker on a free loopback port."""
    process, bootstrap = start_tansu()
    yield bootstrap
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
    frame = pl.read_csv(
        bundled_bustabit_path(), infer_schema=False, null_values=["NA", ""]
    )
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
