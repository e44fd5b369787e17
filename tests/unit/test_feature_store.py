"""EnterpriseFeatureStore on the embedded online store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from crmbet.features import compute_features, fold
from crmbet.features.materialize import materialize, materialize_batches
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
