"""EnterpriseFeatureStore on the embedded online store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from crmbet.features import compute_features, fold
from crmbet.features.materialize import (
    KeyFingerprintMismatchError,
    materialize,
    materialize_batches,
)
from crmbet.features.online import (
    MemoryOnlineStore,
    OnlineStore,
    OnlineStoreUnavailableError,
)
from crmbet.features.store import (
    FEATURE_NAMES,
    EnterpriseFeatureStore,
    FeatureRequest,
    FeatureView,
)

DAY = 86400.0


@pytest.fixture(scope="module")
def small_events(bustabit_events: pl.DataFrame) -> pl.DataFrame:
    return bustabit_events.sort("ts").head(6000)


@pytest.fixture
def loaded(small_events: pl.DataFrame) -> EnterpriseFeatureStore:
    backend = MemoryOnlineStore()
    materialize(small_events, backend)
    return EnterpriseFeatureStore(backend)


def test_backend_meets_protocol() -> None:
    assert isinstance(MemoryOnlineStore(), OnlineStore)


@pytest.mark.slow
def test_micro_batches_match_offline(bustabit_events: pl.DataFrame) -> None:
    backend = MemoryOnlineStore()
    materialize_batches(bustabit_events, backend, batch_size=5000)
    offline = compute_features(fold(bustabit_events))
    store = EnterpriseFeatureStore(backend)

    response = store.get_features_sync(FeatureRequest(offline["player_id"].to_list()))

    expected = offline.select(FEATURE_NAMES).to_numpy()
    np.testing.assert_allclose(response.values, expected, rtol=1e-9, atol=1e-12)
    assert set(response.status) == {"fresh"}


async def test_second_read_hits_l1(
    loaded: EnterpriseFeatureStore, small_events: pl.DataFrame
) -> None:
    player = small_events["player_id"][0]
    first = await loaded.get_features(FeatureRequest(player))
    second = await loaded.get_features(FeatureRequest(player))

    assert first.tier == ["l2"]
    assert second.tier == ["l1"]
    np.testing.assert_array_equal(first.values, second.values)
    stats = loaded.get_performance_stats()
    assert stats["l1"]["hits"] == 1
    assert stats["l1"]["misses"] == 1
    assert stats["latency"]["l1"]["count"] == 1


def test_unknown_player(loaded: EnterpriseFeatureStore) -> None:
    response = loaded.get_features_sync(FeatureRequest(["nobody"]))
    assert response.status == ["unknown"]
    assert response.tier == ["none"]
    assert response.row(0) is None


def test_view_subset_and_order(
    loaded: EnterpriseFeatureStore, small_events: pl.DataFrame
) -> None:
    player = small_events["player_id"][0]
    requested = ("net_loss_7d_per_day", "loss_chasing_rate")
    full = loaded.get_features_sync(FeatureRequest(player)).row(0)
    subset = loaded.get_features_sync(
        FeatureRequest(
            player,
            view="responsible_gambling",
            features=requested,
            include_expired=True,
        )
    )
    assert subset.feature_names == requested
    assert subset.row(0) == {name: full[name] for name in requested}


def test_unknown_view_and_feature(loaded: EnterpriseFeatureStore) -> None:
    with pytest.raises(KeyError, match="unknown feature view 'nope'"):
        loaded.get_features_sync(FeatureRequest("p", view="nope"))
    with pytest.raises(KeyError, match="not in view 'segmentation'"):
        loaded.get_features_sync(
            FeatureRequest("p", view="segmentation", features=("loss_chasing_rate",))
        )


def test_ttl_marks_expired(small_events: pl.DataFrame) -> None:
    backend = MemoryOnlineStore()
    materialize(small_events, backend)
    view = FeatureView("short", ("avg_stake", "recency_days"), ttl_seconds=DAY)
    store = EnterpriseFeatureStore(backend, views={"short": view})
    states = fold(small_events)
    old = states.filter(pl.col("last_ts") < backend.watermark - 2 * DAY)["player_id"][0]
    recent = states.filter(pl.col("last_ts") == backend.watermark)["player_id"][0]

    response = store.get_features_sync(FeatureRequest([old, recent], view="short"))
    kept = store.get_features_sync(
        FeatureRequest([old], view="short", include_expired=True)
    )

    assert response.status == ["expired", "fresh"]
    assert np.isnan(response.values[0]).all()
    assert not np.isnan(response.values[1]).any()
    assert kept.status == ["expired"]
    assert kept.values[0, 1] > 2.0
    assert response.freshness_seconds[0] > 2 * DAY


def test_as_of_changes_recency(
    loaded: EnterpriseFeatureStore, small_events: pl.DataFrame
) -> None:
    player = small_events["player_id"][0]
    now = loaded.get_features_sync(FeatureRequest(player, features=("recency_days",)))
    later = loaded.get_features_sync(
        FeatureRequest(player, features=("recency_days",), as_of=now.as_of + 10 * DAY)
    )
    assert later.values[0, 0] == pytest.approx(now.values[0, 0] + 10.0)
    assert later.tier == ["l1"]


def test_write_invalidates_l1(small_events: pl.DataFrame) -> None:
    backend = MemoryOnlineStore()
    first, second = small_events.head(3000), small_events.tail(3000)
    materialize(first, backend)
    store = EnterpriseFeatureStore(backend)
    in_both = set(first["player_id"].to_list()) & set(second["player_id"].to_list())
    player = sorted(in_both)[0]
    before = store.get_features_sync(FeatureRequest(player, as_of=2e9))
    assert store.get_features_sync(FeatureRequest(player, as_of=2e9)).tier == ["l1"]

    materialize(second, backend)
    after = store.get_features_sync(FeatureRequest(player, as_of=2e9))

    expected = fold(small_events).filter(pl.col("player_id") == player)["n_bets"][0]
    assert after.tier == ["l2"]
    assert after.row(0)["bet_count"] == expected
    assert before.row(0)["bet_count"] < expected


def test_l1_ttl_bounds_staleness(small_events: pl.DataFrame) -> None:
    # Without change announcements (a listener that was lost), an entry
    # still leaves L1 after l1_ttl_seconds.
    backend = MemoryOnlineStore()
    materialize(small_events, backend)
    store = EnterpriseFeatureStore(backend, l1_ttl_seconds=0.05)
    player = small_events["player_id"][0]
    store.get_features_sync(FeatureRequest(player))
    assert store.get_features_sync(FeatureRequest(player)).tier == ["l1"]

    import time

    time.sleep(0.06)
    assert store.get_features_sync(FeatureRequest(player)).tier == ["l2"]


def test_replay_is_idempotent(small_events: pl.DataFrame) -> None:
    backend = MemoryOnlineStore()
    materialize(small_events, backend)
    before = backend.to_frame()
    report = materialize(small_events, backend)

    assert report.events_applied == 0
    assert report.skipped == small_events.height
    assert backend.to_frame().equals(before)


def test_duplicate_ids_in_one_input(small_events: pl.DataFrame) -> None:
    backend = MemoryOnlineStore()
    doubled = pl.concat([small_events.head(100), small_events.head(100)])
    report = materialize(doubled, backend)

    assert report.duplicates_in_input == 100
    assert backend.to_frame()["n_events"].sum() == 100


def test_same_time_events_split_across_runs(small_events: pl.DataFrame) -> None:
    event = small_events.head(1)
    twin = event.with_columns(pl.lit("twin-event").alias("event_id"))
    backend = MemoryOnlineStore()
    materialize(event, backend)
    report = materialize(pl.concat([event, twin]), backend)

    assert report.events_applied == 1
    assert backend.to_frame()["n_events"].to_list() == [2.0]


def test_snapshot_keeps_marks(small_events: pl.DataFrame, tmp_path: Path) -> None:
    backend = MemoryOnlineStore()
    materialize(small_events, backend)
    restored = MemoryOnlineStore.from_snapshot(backend.snapshot(tmp_path / "s.parquet"))

    assert restored.to_frame().equals(backend.to_frame())
    assert restored.watermark == backend.watermark
    assert materialize(small_events, restored).events_applied == 0


def test_lineage_names_models(loaded: EnterpriseFeatureStore) -> None:
    loaded.register_model("crmbet-segments v3", ["avg_stake", "bets_per_day"])
    info = loaded.get_feature_lineage("avg_stake")

    assert info["raw_fields"] == ["amount", "event_type"]
    assert info["state_fields"] == ["n_bets", "stake_sum"]
    assert "crmbet-segments v3" in info["models"]
    assert "segmentation" in info["feature_views"]
    assert "total_staked" in info["dependent_features"]


def test_health_of_embedded(loaded: EnterpriseFeatureStore) -> None:
    health = loaded.health()
    assert health["status"] == "healthy"
    assert health["online_store"]["backend"] == "memory"


def test_large_batch_skips_l1_fill(small_events: pl.DataFrame) -> None:
    backend = MemoryOnlineStore()
    materialize(small_events, backend)
    store = EnterpriseFeatureStore(backend, l1_fill_max_players=5)
    ids = fold(small_events)["player_id"].to_list()[:10]

    store.get_features_sync(FeatureRequest(ids))
    assert len(store.l1) == 0
    store.get_features_sync(FeatureRequest(ids[:5]))
    assert len(store.l1) == 5


class _FailingStore(MemoryOnlineStore):
    def read_player(self, player_id: str) -> None:
        raise OnlineStoreUnavailableError("connection refused")

    def health(self) -> dict[str, Any]:
        # Like a Redis store whose PING fails while its reads do.
        return {**super().health(), "status": "degraded"}


def test_single_read_failure_degrades() -> None:
    store = EnterpriseFeatureStore(_FailingStore(), retry_interval_s=60)

    first = store.get_features_sync(FeatureRequest("p1"))
    second = store.get_features_sync(FeatureRequest("p2"))

    assert first.status == ["unavailable"]
    assert first.tier == ["none"]
    assert first.degraded
    assert second.status == ["unavailable"]
    assert store.get_performance_stats()["errors"] == 1
    assert store.health()["status"] == "degraded"


def _numbered_per_player(events: pl.DataFrame) -> pl.DataFrame:
    """Return ``events`` with ids 1, 2, ... counted within each player."""
    return (
        events.sort("player_id", "ts")
        .with_columns(
            (pl.int_range(pl.len()).over("player_id") + 1)
            .cast(pl.String)
            .alias("event_id")
        )
        .sort("ts")
    )


def test_ids_repeating_across_players_are_all_applied(
    small_events: pl.DataFrame,
) -> None:
    events = _numbered_per_player(small_events)
    assert events["event_id"].n_unique() < events.height
    backend = MemoryOnlineStore()

    report = materialize(events, backend)
    replay = materialize(events, backend)

    assert report.events_applied == events.height
    assert report.duplicates_in_input == 0
    assert replay.events_applied == 0
    offline = compute_features(fold(events))
    response = EnterpriseFeatureStore(backend).get_features_sync(
        FeatureRequest(offline["player_id"].to_list())
    )
    expected = offline.select(FEATURE_NAMES).to_numpy()
    np.testing.assert_allclose(response.values, expected, rtol=1e-9, atol=1e-12)


def test_repeated_player_event_counts_once(
    small_events: pl.DataFrame,
) -> None:
    # alice has events 1 and 2, bob events 1, 2 and 3.
    players = pl.Series("player_id", ["alice"] * 2 + ["bob"] * 3)
    events = _numbered_per_player(small_events.head(5).with_columns(players))
    backend = MemoryOnlineStore()

    report = materialize(pl.concat([events, events.head(1)]), backend)

    assert report.duplicates_in_input == 1
    assert backend.get_state("alice")["n_events"] == 2.0
    assert backend.get_state("bob")["n_events"] == 3.0


def test_late_events_skipped_with_warning(
    small_events: pl.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    split = small_events["ts"][small_events.height // 2]
    early = small_events.filter(pl.col("ts") < split)
    late = small_events.filter(pl.col("ts") >= split)
    backend = MemoryOnlineStore()
    materialize(late.head(late.height - 10), backend)
    caplog.clear()

    with caplog.at_level("INFO", logger="crmbet.features.materialize"):
        replay = materialize(late.head(late.height - 10), backend)
    own = [r for r in caplog.records if r.name == "crmbet.features.materialize"]
    assert [r.levelname for r in own] == ["INFO"]
    assert "skipped" in own[0].getMessage()
    assert "applied before" not in own[0].getMessage()
    caplog.clear()

    with caplog.at_level("INFO", logger="crmbet.features.materialize"):
        report = materialize(pl.concat([early, late.tail(10)]), backend)

    stored = late.head(late.height - 10)["player_id"].unique()
    earlier = early.filter(pl.col("player_id").is_in(stored.implode()))
    assert replay.skipped == late.height - 10
    assert report.skipped == report.skipped_earlier == earlier.height > 0
    assert report.events_applied == early.height - earlier.height + 10
    warnings = [
        r
        for r in caplog.records
        if r.levelname == "WARNING" and r.name == "crmbet.features.materialize"
    ]
    assert len(warnings) == 1
    assert "late events" in warnings[0].getMessage()
    assert "docs/feature-store.md" in warnings[0].getMessage()


def test_another_key_fingerprint_is_refused(
    small_events: pl.DataFrame, tmp_path: Path
) -> None:
    backend = MemoryOnlineStore()
    materialize(small_events.head(10), backend, key_fingerprint="aaaa1111")
    restored = MemoryOnlineStore.from_snapshot(backend.snapshot(tmp_path / "s.pq"))

    with pytest.raises(KeyFingerprintMismatchError, match="aaaa1111.*bbbb2222"):
        materialize(small_events, restored, key_fingerprint="bbbb2222")

    assert restored.stored_key_fingerprint() == "aaaa1111"
    assert len(restored) == len(backend)
    report = materialize(small_events, restored, key_fingerprint="aaaa1111")
    assert report.events_applied == small_events.height - 10


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        (float("nan"), "as_of=nan"),
        (float("inf"), "as_of=inf"),
        (-1.0, "as_of=-1.0"),
        (1_714_500_000_000.0, "milliseconds"),
    ],
)
def test_invalid_as_of_is_refused(as_of: float, expected: str) -> None:
    with pytest.raises(ValueError, match="Unix seconds") as caught:
        FeatureRequest("p1", as_of=as_of)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        (["avg_stake", "bet_count"], ("avg_stake", "bet_count")),
        ("avg_stake", ("avg_stake",)),
        (("bet_count",), ("bet_count",)),
    ],
)
def test_feature_names_are_stored_as_a_tuple(
    loaded: EnterpriseFeatureStore, features: object, expected: tuple[str, ...]
) -> None:
    request = FeatureRequest("p1", features=features)  # type: ignore[arg-type]

    assert request.features == expected
    assert loaded.get_features_sync(request).feature_names == expected


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"player_ids": None}, "player_ids"),
        ({"player_ids": 42}, "player_ids"),
        ({"player_ids": b"p1"}, "player_ids"),
        ({"player_ids": [123, 456]}, "player_ids"),
        ({"player_ids": "p1", "features": 3}, "features"),
        ({"player_ids": "p1", "features": [b"avg_stake"]}, "features"),
        ({"player_ids": "p1", "as_of": "1714500000"}, "as_of"),
    ],
)
def test_wrong_request_types_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(TypeError, match=f"FeatureRequest.{field} must be"):
        FeatureRequest(**kwargs)


def test_empty_feature_list_is_refused() -> None:
    with pytest.raises(ValueError, match="FeatureRequest.features is empty"):
        FeatureRequest("p1", features=[])
