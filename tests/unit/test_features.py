"""Registered features: metadata, lineage, and one computation for one or many."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from crmbet.features import (
    FEATURES,
    SEGMENTATION_FEATURES,
    STATE_FIELDS,
    compute_features,
    compute_one,
    fold,
    lineage,
)


def test_registry_has_at_least_twenty_documented_features() -> None:
    assert len(FEATURES) >= 20
    for feature in FEATURES.values():
        assert feature.version >= 1
        assert feature.dtype == "float64"
        assert feature.description
        assert feature.inputs
        assert set(feature.inputs) <= set(STATE_FIELDS)


def test_feature_groups_cover_the_brief() -> None:
    groups = {feature.group for feature in FEATURES.values()}
    expected = {
        "activity",
        "monetary",
        "outcome",
        "timing",
        "product",
        "promotion",
        "crash",
        "trend",
        "payments",
        "responsible_gambling",
    }
    assert expected <= groups


def test_lineage_links_raw_state_and_features() -> None:
    info = lineage("avg_stake")
    assert info["state_fields"] == ["n_bets", "stake_sum"]
    assert info["raw_fields"] == ["amount", "event_type"]
    assert "total_staked" in info["features_sharing_state"]
    assert info["in_segmentation"] is True


def test_lineage_of_unknown_feature_names_the_fix() -> None:
    with pytest.raises(KeyError, match="crmbet features list"):
        lineage("stake_avg")


def test_one_player_equals_batch(bustabit_events: pl.DataFrame) -> None:
    states = fold(bustabit_events)
    as_of = float(states["last_ts"].max())
    batch = compute_features(states, as_of)
    for index in (0, 17, 4000):
        state = states.row(index, named=True)
        single = compute_one(state, as_of)
        row = batch.row(index, named=True)
        for name, value in single.items():
            assert value == pytest.approx(row[name], rel=1e-12, abs=1e-12), name


def test_features_are_finite_on_bustabit(bustabit_events: pl.DataFrame) -> None:
    features = compute_features(fold(bustabit_events))
    matrix = features.drop("player_id").to_numpy()
    assert np.isfinite(matrix).all()
    assert features.height == 4_147


def test_shares_lie_in_unit_interval(bustabit_events: pl.DataFrame) -> None:
    features = compute_features(fold(bustabit_events))
    for name in (
        "win_rate",
        "late_night_share",
        "weekend_share",
        "crash_share",
        "bonus_share",
        "hour_entropy",
        "loss_chasing_rate",
        "crash_cashout_rate",
    ):
        column = features[name]
        assert column.min() >= 0.0, name
        assert column.max() <= 1.0 + 1e-12, name


def test_bustabit_players_are_all_crash(bustabit_events: pl.DataFrame) -> None:
    features = compute_features(fold(bustabit_events))
    assert (features["crash_share"] == 1.0).all()
    assert (features["sports_share"] == 0.0).all()


def test_recency_grows_with_as_of(bustabit_events: pl.DataFrame) -> None:
    states = fold(bustabit_events.head(1000))
    as_of = float(states["last_ts"].max())
    now = compute_features(states, as_of, ["recency_days", "stake_7d_per_day"])
    later = compute_features(
        states, as_of + 86400, ["recency_days", "stake_7d_per_day"]
    )
    assert ((later["recency_days"] - now["recency_days"] - 1.0).abs() < 1e-9).all()
    assert (later["stake_7d_per_day"] <= now["stake_7d_per_day"]).all()


def test_segmentation_features_are_registered() -> None:
    assert set(SEGMENTATION_FEATURES) <= set(FEATURES)
