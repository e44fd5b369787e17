"""The Redis online store facing bad data, bad messages and bad settings."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import polars as pl
import pytest
import redis

from crmbet.cli import main
from crmbet.features import fold
from crmbet.features.materialize import materialize
from crmbet.features.online import (
    AppliedMark,
    OnlineStoreSettingsError,
    StoredValueError,
)
from crmbet.features.redis_store import (
    LAYOUT,
    MARK_SEPARATOR,
    ROW_LENGTH,
    RedisOnlineStore,
)
from crmbet.features.store import EnterpriseFeatureStore, FeatureRequest

WaitUntil = Callable[..., bool]

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client of the test server, for writing bad data."""
    plain = redis.Redis.from_url(redis_url)
    yield plain
    plain.close()


def _unreadable_warnings(caplog: pytest.LogCaptureFixture, key: str) -> int:
    return sum(
        1
        for record in caplog.records
        if record.levelno == logging.WARNING
        and "is unreadable" in record.getMessage()
        and repr(key) in record.getMessage()
    )


# -- invalidation messages ----------------------------------------------------


def test_malformed_announcements_are_skipped(
    bustabit_events: pl.DataFrame,
    redis_store: RedisOnlineStore,
    redis_url: str,
    client: redis.Redis,
    wait_until: WaitUntil,
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = bustabit_events.sort("ts")
    player = events["player_id"][0]
    own = events.filter(pl.col("player_id") == player)
    materialize(own.head(1), redis_store)
    reader_backend = RedisOnlineStore(redis_url, namespace=redis_store.namespace)
    reader = EnterpriseFeatureStore(reader_backend, l1_ttl_seconds=3600)
    try:
        assert reader_backend.subscribed.wait(timeout=5)
        reader.get_features_sync(FeatureRequest(player, as_of=1e10))
        assert len(reader.l1) == 1
        watermark_before = reader_backend.watermark

        bad = [
            b"{}",
            b"not json",
            b"[1, 2]",
            b'{"watermark": "soon", "players": 5}',
            b"\xff\xfe",
        ]
        for body in bad:
            client.publish(redis_store.channel, body)
        writer = RedisOnlineStore(redis_url, namespace=redis_store.namespace)
        materialize(own, writer)
        written_watermark = writer.watermark
        writer.close()

        assert wait_until(lambda: len(reader.l1) == 0, timeout=2.0)
        assert wait_until(
            lambda: reader_backend.watermark == written_watermark, timeout=2.0
        )
        assert written_watermark > watermark_before
        assert reader_backend.subscribed.is_set()
        assert reader_backend.health()["status"] == "healthy"
        skipped = [
            record
            for record in caplog.records
            if "skipping a malformed message" in record.getMessage()
        ]
        assert len(skipped) == len(bad)
        assert all(record.levelno == logging.WARNING for record in skipped)
    finally:
        reader_backend.close()


def test_partial_announcement_still_invalidates(
    bustabit_events: pl.DataFrame,
    redis_store: RedisOnlineStore,
    redis_url: str,
    client: redis.Redis,
    wait_until: WaitUntil,
) -> None:
    events = bustabit_events.head(200)
    materialize(events, redis_store)
    player = events["player_id"][0]
    reader_backend = RedisOnlineStore(redis_url, namespace=redis_store.namespace)
    reader = EnterpriseFeatureStore(reader_backend)
    try:
        assert reader_backend.subscribed.wait(timeout=5)
        reader.get_features_sync(FeatureRequest(player))
        assert len(reader.l1) == 1

        client.publish(redis_store.channel, b'{"players": ["%b"]}' % player.encode())

        assert wait_until(lambda: len(reader.l1) == 0, timeout=2.0)
        assert reader_backend.subscribed.is_set()
    finally:
        reader_backend.close()


def test_far_future_watermark_is_ignored(
    bustabit_events: pl.DataFrame,
    redis_store: RedisOnlineStore,
    redis_url: str,
    client: redis.Redis,
    wait_until: WaitUntil,
) -> None:
    events = bustabit_events.head(200)
    materialize(events, redis_store)
    player = events["player_id"][0]
    reader_backend = RedisOnlineStore(redis_url, namespace=redis_store.namespace)
    reader = EnterpriseFeatureStore(reader_backend)
    try:
        assert reader_backend.subscribed.wait(timeout=5)
        reader.get_features_sync(FeatureRequest(player))
        before = reader_backend.watermark

        for watermark in (b"1e300", b"4000000000", b"-5"):
            client.publish(
                redis_store.channel,
                b'{"watermark": %b, "players": ["%b"]}' % (watermark, player.encode()),
            )

        # The players of each message are still dropped from L1.
        assert wait_until(lambda: len(reader.l1) == 0, timeout=2.0)
        assert reader_backend.watermark == before
        response = reader.get_features_sync(FeatureRequest(player, view="segmentation"))
        assert response.status == ["fresh"]
        assert response.as_of == before
    finally:
        reader_backend.close()


# The thread's end is the point of the test, so pytest's report of it is not.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_stopped_listener_is_reported(
    bustabit_events: pl.DataFrame,
    redis_store: RedisOnlineStore,
    redis_url: str,
    wait_until: WaitUntil,
) -> None:
    events = bustabit_events.sort("ts")
    materialize(events.head(100), redis_store)
    player = events["player_id"][0]
    reader_backend = RedisOnlineStore(redis_url, namespace=redis_store.namespace)
    reader = EnterpriseFeatureStore(reader_backend)

    def stop_thread(players: list[str] | None) -> None:
        # SystemExit ends a thread without the per-error handling.
        raise SystemExit

    try:
        reader_backend.add_listener(stop_thread)
        assert reader_backend.subscribed.wait(timeout=5)
        materialize(events.slice(100, 100), redis_store)

        assert wait_until(lambda: not reader_backend.listening, timeout=2.0)
        assert not reader_backend.subscribed.is_set()
        health = reader.health()
        assert health["status"] == "degraded"
        assert "invalidation thread" in health["online_store"]["last_error"]

        # Without the subscription a read fetches the watermark itself.
        materialize(events.slice(200, 500), redis_store)
        assert reader_backend.read_player(player) is not None
        assert reader_backend.watermark == redis_store.watermark
    finally:
        reader_backend.close()


def test_failing_listener_does_not_stop_the_thread(
    bustabit_events: pl.DataFrame,
    redis_store: RedisOnlineStore,
    redis_url: str,
    wait_until: WaitUntil,
) -> None:
    events = bustabit_events.sort("ts")
    materialize(events.head(100), redis_store)
    reader_backend = RedisOnlineStore(redis_url, namespace=redis_store.namespace)
    seen: list[list[str] | None] = []
    failures = [RuntimeError("listener bug")]

    def flaky(players: list[str] | None) -> None:
        seen.append(players)
        if failures:
            raise failures.pop()

    try:
        reader_backend.add_listener(flaky)
        assert reader_backend.subscribed.wait(timeout=5)
        materialize(events.slice(100, 100), redis_store)

        # After the failure the thread resubscribes and calls every listener
        # with None (drop all entries), because announcements may be lost.
        assert wait_until(lambda: None in seen, timeout=5.0)
        assert reader_backend.listening
        assert wait_until(reader_backend.subscribed.is_set, timeout=5.0)
    finally:
        reader_backend.close()


# -- unreadable values ----------------------------------------------------------


@pytest.fixture
def corrupt_store(
    bustabit_events: pl.DataFrame, redis_store: RedisOnlineStore, client: redis.Redis
) -> tuple[RedisOnlineStore, list[str]]:
    """A store of 2,000+ players plus three whose keys cannot be decoded.

    ``p_garbage`` has text in both keys, ``p_layout`` values of the right
    size with another layout marker, ``p_hash`` hashes instead of strings.
    """
    materialize(bustabit_events, redis_store)
    ids = fold(bustabit_events)["player_id"].to_list()
    state = redis_store.state_key("")
    vector = state.replace(":state:", ":vector:")
    client.set(state + "p_garbage", b"garbage")
    client.set(vector + "p_garbage", b"garbage")
    other_layout = np.full(ROW_LENGTH, 1.0).tobytes()
    client.set(state + "p_layout", other_layout)
    client.set(vector + "p_layout", other_layout[:100])
    client.hset(state + "p_hash", "field", "value")
    client.hset(vector + "p_hash", "field", "value")
    return redis_store, ids


@pytest.mark.parametrize("bad", ["p_garbage", "p_layout", "p_hash"])
def test_unreadable_value_fails_one_player_only(
    corrupt_store: tuple[RedisOnlineStore, list[str]],
    bad: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend, ids = corrupt_store
    store = EnterpriseFeatureStore(backend)

    one = store.get_features_sync(FeatureRequest(bad))
    again = store.get_features_sync(FeatureRequest(bad))
    small = store.get_features_sync(FeatureRequest([ids[0], bad, "nobody"]))
    good = store.get_features_sync(FeatureRequest(ids[1]))

    assert one.status == ["unavailable"]
    assert one.tier == ["none"]
    assert np.isnan(one.values).all()
    assert again.status == ["unavailable"]
    assert not one.degraded
    assert good.status == ["fresh"]
    assert small.tier[0] == "l2"
    assert small.status[0] == "fresh"
    assert small.status[2] == "unknown"
    assert small.tier[1] == "none"
    assert np.isnan(small.values[1]).all()
    # MGET returns nil for a key of another type, as for a missing key.
    assert small.status[1] == ("unknown" if bad == "p_hash" else "unavailable")
    stats = store.get_performance_stats()
    assert stats["errors"] == (2 if bad == "p_hash" else 3)
    assert store.health()["status"] == "healthy"
    assert _unreadable_warnings(caplog, backend.state_key(bad)) == 1


def test_large_batch_with_unreadable_values(
    corrupt_store: tuple[RedisOnlineStore, list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend, ids = corrupt_store
    assert len(ids) > 2000
    store = EnterpriseFeatureStore(backend, l1_fill_max_players=100)
    reference = EnterpriseFeatureStore(backend, l1_cache_size=0)
    requested = [*ids[:1000], "p_garbage", *ids[1000:], "p_layout"]

    batch = store.get_features_sync(FeatureRequest(requested))
    second = store.get_features_sync(FeatureRequest(requested))

    expected = reference.get_features_sync(FeatureRequest(ids))
    last = len(requested) - 1
    assert batch.status[1000] == "unavailable"
    assert batch.status[last] == "unavailable"
    assert batch.tier[1000] == batch.tier[last] == "none"
    good_rows = [i for i in range(len(requested)) if i not in (1000, last)]
    assert [batch.status[i] for i in good_rows] == expected.status
    np.testing.assert_array_equal(batch.values[good_rows], expected.values)
    assert second.status == batch.status
    # Each player's vector key and state key is counted on every read, and
    # each key is logged once.
    assert store.get_performance_stats()["errors"] == 8
    for player in ("p_garbage", "p_layout"):
        state = backend.state_key(player)
        assert _unreadable_warnings(caplog, state) == 1
        vector = state.replace(":state:", ":vector:")
        assert _unreadable_warnings(caplog, vector) == 1


def test_unreadable_vector_falls_back_to_state(
    bustabit_events: pl.DataFrame, redis_store: RedisOnlineStore, client: redis.Redis
) -> None:
    materialize(bustabit_events, redis_store)
    ids = fold(bustabit_events)["player_id"].to_list()
    vector_key = redis_store.state_key(ids[5]).replace(":state:", ":vector:")
    client.set(vector_key, b"garbage")
    store = EnterpriseFeatureStore(redis_store, l1_fill_max_players=100)
    reference = EnterpriseFeatureStore(redis_store, l1_cache_size=0)

    batch = store.get_features_sync(FeatureRequest(ids))

    expected = reference.get_features_sync(FeatureRequest(ids[:10]))
    assert batch.tier[5] == "l2"
    assert batch.status[5] == "fresh"
    np.testing.assert_array_equal(batch.values[:10], expected.values)
    assert store.get_performance_stats()["errors"] == 1


def test_materialising_over_an_unreadable_state_raises(
    bustabit_events: pl.DataFrame, redis_store: RedisOnlineStore, client: redis.Redis
) -> None:
    events = bustabit_events.head(200)
    materialize(events, redis_store)
    player = events["player_id"][0]
    key = redis_store.state_key(player)
    client.set(key, np.full(ROW_LENGTH, LAYOUT + 1).tobytes())

    with pytest.raises(StoredValueError, match="cannot be decoded") as raised:
        materialize(bustabit_events.head(400), redis_store)

    assert key in str(raised.value)
    assert client.get(key) == np.full(ROW_LENGTH, LAYOUT + 1).tobytes()


# -- applied marks --------------------------------------------------------------


def test_event_ids_with_the_old_separator_replay_once(
    bustabit_events: pl.DataFrame, redis_store: RedisOnlineStore
) -> None:
    events = bustabit_events.head(3000).with_columns(
        (pl.col("event_id").cast(pl.String) + MARK_SEPARATOR + "x").alias("event_id")
    )
    first = materialize(events, redis_store)
    players = fold(events)["player_id"].to_list()
    before = redis_store.get_states_frame(players).sort("player_id")

    again = materialize(events, redis_store)

    after = redis_store.get_states_frame(players).sort("player_id")
    assert first.events_applied == events.height
    assert again.events_applied == 0
    assert after["n_events"].sum() == events.height
    assert after.equals(before)


def test_marks_written_in_the_old_form_are_read(
    bustabit_events: pl.DataFrame, redis_store: RedisOnlineStore, client: redis.Redis
) -> None:
    events = bustabit_events.head(50)
    materialize(events, redis_store)
    player = events["player_id"][0]
    applied_key = redis_store.state_key(player).replace(":state:", ":applied:")
    client.set(applied_key, MARK_SEPARATOR.join(["e1", "e2"]))

    marks = redis_store.applied_marks([player])

    assert marks[player].event_ids == frozenset({"e1", "e2"})


def test_marks_are_json_arrays(
    bustabit_events: pl.DataFrame, redis_store: RedisOnlineStore, client: redis.Redis
) -> None:
    events = bustabit_events.head(10)
    player = events["player_id"][0]
    state = fold(events).filter(pl.col("player_id") == player)
    ids = frozenset({"a\x1fb", "[c]", "d"})
    mark = AppliedMark(float(state["last_ts"][0]), ids)

    redis_store.put_states(state, {player: mark})

    applied_key = redis_store.state_key(player).replace(":state:", ":applied:")
    assert client.get(applied_key) == b'["[c]","a\\u001fb","d"]'
    assert redis_store.applied_marks([player])[player].event_ids == ids


# -- settings -------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [0, -5, 0.0001, 0.999, float("nan"), float("inf")])
def test_key_ttl_below_one_second_is_rejected(redis_url: str, ttl: float) -> None:
    with pytest.raises(ValueError, match=r"key_ttl_seconds must be None or .* >= 1"):
        RedisOnlineStore(redis_url, namespace="crmbet-test-ttl", key_ttl_seconds=ttl)


def test_key_ttl_of_one_second_applies(
    bustabit_events: pl.DataFrame, redis_url: str, client: redis.Redis
) -> None:
    store = RedisOnlineStore(
        redis_url, namespace="crmbet-test-ttl-one", key_ttl_seconds=1
    )
    try:
        events = bustabit_events.head(20)
        materialize(events, store)
        ttl_ms = client.pttl(store.state_key(events["player_id"][0]))
        assert 0 < ttl_ms <= 1000
    finally:
        store.delete_namespace()
        store.close()


def test_database_out_of_range_is_named(redis_url: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/99"

    with pytest.raises(OnlineStoreSettingsError) as raised:
        RedisOnlineStore(url)

    message = str(raised.value)
    assert "database 99" in message
    assert "'/99'" in message
    assert "16 databases" in message


@pytest.fixture
def password_server(redis_server: Any) -> Iterator[Any]:
    """The private server with a password, removed again before it stops."""
    admin = redis.Redis(port=redis_server.port)
    admin.config_set("requirepass", "right-secret")
    admin.close()
    yield redis_server
    admin = redis.Redis(port=redis_server.port, password="right-secret")
    admin.config_set("requirepass", "")
    admin.close()


@pytest.mark.parametrize("credentials", [":wrong-secret@", ""])
def test_refused_credentials_are_named(password_server: Any, credentials: str) -> None:
    url = f"redis://{credentials}127.0.0.1:{password_server.port}/0"

    with pytest.raises(OnlineStoreSettingsError) as raised:
        RedisOnlineStore(url)

    message = str(raised.value)
    assert "rejected the credentials in CRMBET_REDIS_URL" in message
    assert "wrong-secret" not in message
    assert "running and reachable" not in message


def test_cli_reports_bad_database_in_one_line(
    settings: Any,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from crmbet.config import get_settings

    monkeypatch.setenv("CRMBET_REDIS_URL", redis_url.rsplit("/", 1)[0] + "/99")
    get_settings.cache_clear()
    monkeypatch.setattr(sys, "argv", ["crmbet", "features", "get", "--player", "p1"])

    with pytest.raises(SystemExit) as raised:
        main()

    output = " ".join(capsys.readouterr().out.split())
    get_settings.cache_clear()
    assert raised.value.code == 2
    assert "error: Redis online store failed to read the watermark" in output
    assert "database 99" in output
    assert "Traceback" not in output


# -- degraded mode ----------------------------------------------------------------


@pytest.mark.slow
def test_health_check_ends_degraded_mode(
    bustabit_events: pl.DataFrame, redis_server: Any, wait_until: WaitUntil
) -> None:
    events = bustabit_events.head(500)
    backend = RedisOnlineStore(redis_server.url, socket_timeout=0.2)
    materialize(events, backend)
    store = EnterpriseFeatureStore(backend, retry_interval_s=3600)
    player = events["player_id"][0]
    try:
        redis_server.stop()
        down = store.get_features_sync(FeatureRequest(player))
        assert down.status == ["unavailable"]
        assert store.health()["status"] == "degraded"

        redis_server.start()
        assert wait_until(backend.ping, timeout=10)

        assert store.health()["status"] == "healthy"
        # No request succeeded in between, and the retry interval is an hour.
        up = store.get_features_sync(FeatureRequest(player))
        assert up.status == ["fresh"]
        assert up.tier == ["l2"]
        assert not up.degraded
    finally:
        backend.close()
