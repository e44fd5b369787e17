"""The Redis online store behind the feature store, against a real Redis."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import polars as pl
import pytest
import redis

from crmbet.features import compute_features, fold
from crmbet.features.materialize import (
    KeyFingerprintMismatchError,
    materialize,
    materialize_batches,
)
from crmbet.features.online import StoredValueError
from crmbet.features.redis_store import KEY_FINGERPRINT_FIELD, RedisOnlineStore
from crmbet.features.state import STATE_SCHEMA_VERSION
from crmbet.features.store import (
    DEFAULT_VIEWS,
    FEATURE_NAMES,
    EnterpriseFeatureStore,
    FeatureRequest,
    FeatureView,
)

WaitUntil = Callable[..., bool]

pytestmark = pytest.mark.integration


def _offline(events: pl.DataFrame) -> pl.DataFrame:
    return compute_features(fold(events))


@pytest.mark.slow
def test_micro_batches_match_offline(
    bustabit_events: pl.DataFrame, redis_store: RedisOnlineStore
) -> None:
    materialize_batches(bustabit_events, redis_store, batch_size=5000)
    offline = _offline(bustabit_events)
    store = EnterpriseFeatureStore(redis_store)
    ids = offline["player_id"].to_list()

    response = store.get_features_sync(FeatureRequest(ids))

    assert response.tier == ["l2"] * len(ids)
    assert redis_store.watermark == pytest.approx(offline_watermark(bustabit_events))
    expected = offline.select(FEATURE_NAMES).to_numpy()
    np.testing.assert_allclose(response.values, expected, rtol=1e-9, atol=1e-12)


def offline_watermark(events: pl.DataFrame) -> float:
    return events["ts"].max().timestamp()  # type: ignore[union-attr]


def test_replay_does_not_double_count(
    bustabit_events: pl.DataFrame, redis_store: RedisOnlineStore
) -> None:
    events = bustabit_events.head(5000)
    materialize(events, redis_store)
    again = materialize(events, redis_store)

    assert again.events_applied == 0
    assert again.skipped == events.height
    stored = redis_store.get_states_frame(fold(events)["player_id"].to_list())
    assert stored["n_events"].sum() == events.height


def test_second_file_merges(
    bustabit_events: pl.DataFrame, redis_store: RedisOnlineStore
) -> None:
    events = bustabit_events.sort("ts").head(8000)
    first, second = events.head(5000), events.tail(3000)
    materialize(first, redis_store)
    materialize(pl.concat([first.tail(100), second]), redis_store)

    online = redis_store.get_states_frame(fold(events)["player_id"].to_list())
    offline = fold(events)
    assert online["n_events"].sum() == events.height
    np.testing.assert_allclose(
        online.sort("player_id")["stake_sum"].to_numpy(),
        offline["stake_sum"].to_numpy(),
        rtol=1e-12,
    )


def test_key_layout_is_versioned(
    bustabit_events: pl.DataFrame, redis_store: RedisOnlineStore, redis_url: str
) -> None:
    events = bustabit_events.head(50)
    materialize(events, redis_store)
    player = events["player_id"][0]
    client = redis.Redis.from_url(redis_url)

    key = f"{redis_store.namespace}:v{STATE_SCHEMA_VERSION}:state:{player}"
    assert redis_store.state_key(player) == key
    assert client.exists(key) == 1
    assert client.ttl(key) == -1
    client.close()


def test_key_ttl_applies(bustabit_events: pl.DataFrame, redis_url: str) -> None:
    store = RedisOnlineStore(
        redis_url, namespace="crmbet-test-ttl", key_ttl_seconds=300
    )
    try:
        events = bustabit_events.head(20)
        materialize(events, store)
        client = redis.Redis.from_url(redis_url)
        ttl = client.ttl(store.state_key(events["player_id"][0]))
        client.close()
        assert 0 < ttl <= 300
    finally:
        store.delete_namespace()
        store.close()


def test_pubsub_invalidates_other_process_l1(
    bustabit_events: pl.DataFrame,
    redis_store: RedisOnlineStore,
    redis_url: str,
    wait_until: WaitUntil,
) -> None:
    events = bustabit_events.sort("ts")
    player = events["player_id"][0]
    own = events.filter(pl.col("player_id") == player)
    materialize(own.head(1), redis_store)
    reader_backend = RedisOnlineStore(redis_url, namespace=redis_store.namespace)
    reader = EnterpriseFeatureStore(reader_backend, l1_ttl_seconds=3600)
    try:
        assert reader_backend.subscribed.wait(timeout=5)
        first = reader.get_features_sync(FeatureRequest(player, as_of=1e10))
        assert reader.get_features_sync(FeatureRequest(player, as_of=1e10)).tier == [
            "l1"
        ]

        # Another writer (its own client) changes the player: the reader's
        # L1 entry must go within the stated bound of one second.
        writer = RedisOnlineStore(redis_url, namespace=redis_store.namespace)
        materialize(own, writer)
        writer.close()

        assert wait_until(lambda: len(reader.l1) == 0, timeout=1.0)
        after = reader.get_features_sync(FeatureRequest(player, as_of=1e10))
        assert after.tier == ["l2"]
        assert after.row(0)["bet_count"] == own.height
        assert first.row(0)["bet_count"] == 1
    finally:
        reader_backend.close()


@pytest.mark.slow
def test_redis_down_degrades_then_recovers(
    bustabit_events: pl.DataFrame, redis_server: Any, wait_until: WaitUntil
) -> None:
    events = bustabit_events.head(3000)
    backend = RedisOnlineStore(redis_server.url, socket_timeout=0.2)
    materialize(events, backend)
    store = EnterpriseFeatureStore(backend, retry_interval_s=0.2)
    ids = fold(events)["player_id"].to_list()
    warm, cold = ids[:10], ids[10:20]
    store.get_features_sync(FeatureRequest(warm))

    redis_server.stop()
    response = store.get_features_sync(FeatureRequest(warm + cold))

    assert response.tier == ["l1"] * 10 + ["none"] * 10
    assert response.status == ["fresh"] * 10 + ["unavailable"] * 10
    assert np.isnan(response.values[10:]).all()
    assert store.health()["status"] == "degraded"
    assert store.get_performance_stats()["errors"] >= 1

    redis_server.start()

    def cold_served() -> bool:
        return store.get_features_sync(FeatureRequest(cold)).tier == ["l2"] * 10

    assert wait_until(cold_served, timeout=10)
    assert store.health()["status"] == "healthy"
    backend.close()


def test_settings_select_redis(
    settings: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crmbet.config import get_settings
    from crmbet.pipeline import OptimizationConfig

    monkeypatch.setenv("CRMBET_REDIS_URL", redis_url)
    get_settings.cache_clear()
    optimization = OptimizationConfig(l1_cache_size=123, l1_ttl_seconds=7.0)
    store = EnterpriseFeatureStore.from_settings(get_settings(), optimization)
    try:
        assert store.backend.backend == "redis"
        assert store.l1.max_size == 123
        assert store.l1.ttl_seconds == 7.0
        assert store.health()["status"] == "healthy"
    finally:
        store.close()
        get_settings.cache_clear()


def test_large_batch_reads_vectors_only(
    bustabit_events: pl.DataFrame, redis_store: RedisOnlineStore, redis_url: str
) -> None:
    materialize(bustabit_events, redis_store)
    offline = _offline(bustabit_events)
    ids = offline["player_id"].to_list()
    # Without its state key a player can only come from its vector key.
    client = redis.Redis.from_url(redis_url)
    client.delete(redis_store.state_key(ids[0]))
    client.close()
    store = EnterpriseFeatureStore(redis_store, l1_fill_max_players=100)

    batch = store.get_features_sync(FeatureRequest(ids))
    single = store.get_features_sync(FeatureRequest([ids[0]]))

    assert batch.tier == ["l2"] * len(ids)
    expected = offline.select(FEATURE_NAMES).to_numpy()
    np.testing.assert_allclose(batch.values, expected, rtol=1e-9, atol=1e-12)
    assert single.status == ["unknown"]


def test_single_reads_match_batch(
    bustabit_events: pl.DataFrame, redis_store: RedisOnlineStore
) -> None:
    events = bustabit_events.head(3000)
    materialize(events, redis_store)
    ids = fold(events)["player_id"].to_list()[:20]
    view = FeatureView("short", ("avg_stake", "recency_days"), ttl_seconds=86400.0)
    views = {"all": DEFAULT_VIEWS["all"], "short": view}
    batch = EnterpriseFeatureStore(redis_store, views=views, l1_cache_size=0)
    single = EnterpriseFeatureStore(redis_store, views=views)

    for request in (
        FeatureRequest(ids),
        FeatureRequest(ids, view="short"),
        FeatureRequest(ids, view="short", include_expired=True),
        FeatureRequest(ids, as_of=redis_store.watermark + 86400.0),
    ):
        expected = batch.get_features_sync(request)
        for i, player in enumerate(ids):
            one = replace(request, player_ids=player)
            got = single.get_features_sync(one)
            single.l1.invalidate(None)
            assert got.tier == ["l2"]
            assert got.status == [expected.status[i]]
            assert got.last_event_ts[0] == expected.last_event_ts[i]
            np.testing.assert_array_equal(got.values[0], expected.values[i])


def test_single_read_fills_l1(
    bustabit_events: pl.DataFrame, redis_store: RedisOnlineStore
) -> None:
    materialize(bustabit_events.head(200), redis_store)
    player = bustabit_events["player_id"][0]
    store = EnterpriseFeatureStore(redis_store)

    first = store.get_features_sync(FeatureRequest(player))
    second = store.get_features_sync(FeatureRequest(player))
    unknown = store.get_features_sync(FeatureRequest("nobody"))

    assert first.tier == ["l2"]
    assert second.tier == ["l1"]
    np.testing.assert_array_equal(first.values, second.values)
    assert not first.values.flags.writeable
    assert unknown.status == ["unknown"]
    assert unknown.tier == ["none"]
    assert np.isnan(unknown.values).all()
    stats = store.get_performance_stats()
    assert stats["l2"]["hits"] == 1
    assert stats["l2"]["unknown"] == 1


def test_read_survives_dropped_connection(
    bustabit_events: pl.DataFrame, redis_store: RedisOnlineStore
) -> None:
    events = bustabit_events.sort("ts").head(200)
    materialize(events, redis_store)
    player = events["player_id"][0]
    before = redis_store.read_player(player)
    assert before is not None
    # As if the server had closed the idle connection.
    redis_store._reader._sock.shutdown(socket.SHUT_RDWR)

    after = redis_store.read_player(player)
    batch = redis_store.read_players([player, "nobody"])

    assert after is not None
    np.testing.assert_array_equal(after[0], before[0])
    assert batch.found.tolist() == [True, False]
    assert redis_store.last_error is None


def test_large_batch_overlaps_l1_and_redis(
    bustabit_events: pl.DataFrame,
    redis_store: RedisOnlineStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    materialize(bustabit_events, redis_store)
    offline = _offline(bustabit_events)
    ids = offline["player_id"].to_list()
    store = EnterpriseFeatureStore(redis_store, l1_fill_max_players=10)
    warm = ids[3:40:4]
    for player in warm:
        store.get_features_sync(FeatureRequest(player))
    # Small chunks, so the batch spans many reads, some without any miss.
    monkeypatch.setattr("crmbet.features.store.BATCH_CHUNK", 7)
    requested = ids[:20] + ["nobody"] + warm + ids[20:]

    batch = store.get_features_sync(FeatureRequest(requested))

    expected = offline.select(FEATURE_NAMES).to_numpy()
    row_of = {player: i for i, player in enumerate(ids)}
    np.testing.assert_allclose(
        np.delete(batch.values, 20, axis=0),
        expected[[row_of[p] for p in requested if p != "nobody"]],
        rtol=1e-9,
        atol=1e-12,
    )
    assert batch.status[20] == "unknown"
    assert batch.tier[20] == "none"
    assert batch.tier[21 : 21 + len(warm)] == ["l1"] * len(warm)
    # The warm players are requested twice, and L1 serves both.
    assert batch.tier.count("l1") == 2 * len(warm)
    assert batch.tier.count("l2") == len(ids) - len(warm)
    # A bulk read fills no L1 entry.
    assert len(store.l1) == len(warm)


@pytest.mark.slow
def test_large_batch_with_redis_down_serves_l1(
    bustabit_events: pl.DataFrame, redis_server: Any, wait_until: WaitUntil
) -> None:
    events = bustabit_events.head(3000)
    backend = RedisOnlineStore(redis_server.url, socket_timeout=0.2)
    materialize(events, backend)
    store = EnterpriseFeatureStore(backend, retry_interval_s=0.2, l1_fill_max_players=5)
    ids = fold(events)["player_id"].to_list()
    warm, cold = ids[:10], ids[10:30]
    for player in warm:
        store.get_features_sync(FeatureRequest(player))

    redis_server.stop()
    response = store.get_features_sync(FeatureRequest(cold + warm))

    assert response.tier == ["none"] * 20 + ["l1"] * 10
    assert response.status == ["unavailable"] * 20 + ["fresh"] * 10
    assert store.health()["status"] == "degraded"

    redis_server.start()

    def cold_served() -> bool:
        return store.get_features_sync(FeatureRequest(cold)).tier == ["l2"] * 20

    assert wait_until(cold_served, timeout=10)
    assert store.health()["status"] == "healthy"
    backend.close()


def test_error_reply_keeps_connection_usable(
    bustabit_events: pl.DataFrame, redis_store: RedisOnlineStore, redis_url: str
) -> None:
    events = bustabit_events.sort("ts").head(200)
    materialize(events, redis_store)
    players = fold(events)["player_id"].to_list()
    client = redis.Redis.from_url(redis_url)
    client.delete(redis_store.state_key(players[0]))
    client.hset(redis_store.state_key(players[0]), "field", "value")
    client.close()

    with pytest.raises(StoredValueError, match="not a string value"):
        redis_store.read_player(players[0])

    assert redis_store.read_player(players[1]) is not None


@pytest.mark.parametrize("spin_seconds", [0.0, 0.0002, 1.0])
def test_single_read_polling_settings(
    bustabit_events: pl.DataFrame,
    redis_store: RedisOnlineStore,
    redis_url: str,
    spin_seconds: float,
) -> None:
    events = bustabit_events.sort("ts").head(200)
    materialize(events, redis_store)
    player = events["player_id"][0]
    reader = RedisOnlineStore(
        redis_url, namespace=redis_store.namespace, read_spin_seconds=spin_seconds
    )
    try:
        got = reader.read_player(player)
        unknown = reader.read_player("nobody")
    finally:
        reader.close()

    expected = redis_store.read_player(player)
    assert got is not None
    assert expected is not None
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert unknown is None


@pytest.mark.parametrize(
    "layout",
    ["all", "missing_last", "missing_first", "missing_middle", "none_found"],
)
def test_vector_reads_with_missing_keys(
    bustabit_events: pl.DataFrame, redis_store: RedisOnlineStore, layout: str
) -> None:
    events = bustabit_events.head(2000)
    materialize(events, redis_store)
    known = fold(events)["player_id"].to_list()[:5]
    requested = {
        "all": known,
        "missing_last": [*known, "nobody"],
        "missing_first": ["nobody", *known],
        "missing_middle": [*known[:2], "nobody", *known[2:]],
        "none_found": ["nobody", "nobody-else"],
    }[layout]
    expected = redis_store.read_players(requested)

    # A nil may end the last reply of the pipeline, so nothing follows it.
    got = redis_store.read_vectors(requested)
    again = redis_store.read_vectors(requested)

    assert got.found.tolist() == [p != "nobody" and p in known for p in requested]
    np.testing.assert_array_equal(got.vectors[got.found], expected.vectors[got.found])
    assert np.isnan(got.vectors[~got.found]).all()
    np.testing.assert_array_equal(again.vectors, got.vectors)
    assert redis_store.last_error is None


def test_key_fingerprint_is_kept_in_the_meta_hash(
    bustabit_events: pl.DataFrame, redis_store: RedisOnlineStore
) -> None:
    events = bustabit_events.sort("ts").head(200)
    materialize(events.head(100), redis_store, key_fingerprint="aaaa1111")

    with pytest.raises(KeyFingerprintMismatchError, match="aaaa1111.*bbbb2222"):
        materialize(events, redis_store, key_fingerprint="bbbb2222")

    meta = redis_store._writer.hgetall(f"{redis_store.namespace}:v1:meta")
    assert meta[KEY_FINGERPRINT_FIELD.encode()] == b"aaaa1111"
    assert redis_store.stored_key_fingerprint() == "aaaa1111"
    report = materialize(events, redis_store, key_fingerprint="aaaa1111")
    assert report.events_applied == 100
