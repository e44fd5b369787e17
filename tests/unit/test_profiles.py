"""Segment naming, campaigns, risk scores and the responsible-gambling override."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from crmbet.features import compute_features, fold
from crmbet.models import name_segments, score_risk, train_segments
from crmbet.models.profiles import CAMPAIGNS, TRAITS, campaigns_for
from crmbet.serving.predictor import SegmentPredictor

POPULATION = {
    "avg_stake": 10.0,
    "bets_per_day": 2.0,
    "recency_days": 5.0,
    "late_night_share": 0.1,
    "weekend_share": 0.3,
    "sports_share": 0.3,
    "casino_share": 0.4,
    "crash_share": 0.1,
    "bonus_share": 0.02,
    "cashback_share": 0.01,
    "crash_log_cashout": 0.0,
}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"avg_stake": 60.0}, "High Roller"),
        ({"recency_days": 40.0}, "Lapsing"),
        ({"late_night_share": 0.7}, "Night Owl"),
        ({"weekend_share": 0.8}, "Weekend Warrior"),
        ({"bonus_share": 0.3}, "Bonus Hunter"),
        ({"cashback_share": 0.2}, "Cashback Lover"),
        ({"sports_share": 0.9}, "Sports Bettor"),
        ({"crash_share": 0.9}, "Crash Enthusiast"),
        ({"casino_share": 0.9}, "Casino Player"),
        ({"bets_per_day": 9.0}, "Frequent Player"),
        ({"bets_per_day": 1.0, "avg_stake": 5.0}, "Casual"),
    ],
)
def test_each_trait_names_a_segment(change: dict[str, float], expected: str) -> None:
    assert name_segments([POPULATION | change], POPULATION) == [expected]


def test_names_stay_unique_when_traits_repeat() -> None:
    profiles = [
        POPULATION | {"avg_stake": 80.0},
        POPULATION | {"avg_stake": 50.0},
        dict(POPULATION),
        dict(POPULATION),
    ]
    names = name_segments(profiles, POPULATION)
    assert names[0] == "High Roller"
    assert len(set(names)) == 4
    # Profiles equal to the population medians are low on activity and stakes.
    assert names[2:] == ["Casual", "Casual II"]


def test_every_trait_has_campaigns() -> None:
    for name in [*TRAITS, "Casual", "Regular"]:
        campaigns = CAMPAIGNS[name]
        assert any(c.promotion for c in campaigns), name
        assert any(not c.promotion for c in campaigns), name
    assert campaigns_for("Regular III") == CAMPAIGNS["Regular"]


def test_harm_markers_flag_player() -> None:
    scores = score_risk(
        {
            "bet_count": np.array([100.0, 100.0, 100.0, 2.0]),
            "loss_chasing_rate": np.array([0.35, 0.0, 0.1, 0.9]),
            "late_night_share": np.array([0.0, 0.7, 0.2, 0.9]),
            "deposit_count": np.array([5.0, 5.0, 5.0, 5.0]),
            "deposit_frequency_trend": np.array([1.0, 1.0, 1.5, 4.0]),
        }
    )
    assert scores.harm_flag.tolist() == [True, True, False, False]
    assert scores.reasons(0) == ["loss_chasing"]
    assert scores.reasons(1) == ["late_night_play"]
    assert 0.0 <= scores.harm_score.min() <= scores.harm_score.max() <= 1.0


def test_churn_rises_with_absence() -> None:
    scores = score_risk(
        {
            "recency_days": np.array([0.0, 3.0, 30.0]),
            "bets_per_day": np.array([1.0, 1.0, 1.0]),
        }
    )
    assert scores.churn_risk[0] == 0.0
    assert scores.churn_risk[0] < scores.churn_risk[1] < scores.churn_risk[2] < 1.0


@pytest.fixture(scope="module")
def predictor(bustabit_events: pl.DataFrame) -> SegmentPredictor:
    model, _ = train_segments(compute_features(fold(bustabit_events)), k=6)
    return SegmentPredictor(model)


def test_flagged_player_gets_no_promotion(predictor: SegmentPredictor) -> None:
    risky = {"bet_count": 200.0, "loss_chasing_rate": 0.5, "avg_stake": 100.0}
    prediction = predictor.predict_features(risky, player_id="p")
    assert prediction.responsible_gambling_flag
    assert prediction.campaign_recommendations
    assert not any(c["promotion"] for c in prediction.campaign_recommendations)
    assert "loss_chasing" in prediction.recommendation_note
    ids = {c["id"] for c in prediction.campaign_recommendations}
    assert "safer-gambling-check-in" in ids


QUIET_MARKERS = {
    "loss_chasing_rate": 0.0,
    "late_night_share": 0.1,
    "deposit_frequency_trend": 1.0,
}


def test_unflagged_player_keeps_segment_campaigns(predictor: SegmentPredictor) -> None:
    features = {"bet_count": 20.0, "avg_stake": 100.0, **QUIET_MARKERS}
    prediction = predictor.predict_features(features)
    profile = predictor.model.profiles[prediction.cluster_id]
    assert [c["id"] for c in prediction.campaign_recommendations] == [
        c.id for c in profile.campaigns
    ]
    assert prediction.recommendation_note == ""


def test_missing_marker_features_withhold_promotions(
    predictor: SegmentPredictor,
) -> None:
    # The harm markers of a player sending only two features cannot be read.
    prediction = predictor.predict_features({"avg_stake": 250.0, "bets_per_day": 6.0})
    assert prediction.responsible_gambling_flag
    assert prediction.responsible_gambling_reasons == ["harm_markers_unknown"]
    assert not any(c["promotion"] for c in prediction.campaign_recommendations)
    assert "late_night_share" in prediction.recommendation_note


def test_strong_markers_count_without_a_bet_count(predictor: SegmentPredictor) -> None:
    features = {**QUIET_MARKERS, "loss_chasing_rate": 0.9, "avg_stake": 500.0}
    prediction = predictor.predict_features(features)
    assert prediction.responsible_gambling_reasons == ["loss_chasing"]
    assert not any(c["promotion"] for c in prediction.campaign_recommendations)


def test_batch_never_offers_promotions_to_flagged(
    predictor: SegmentPredictor, bustabit_events: pl.DataFrame
) -> None:
    batch = predictor.predict_events(bustabit_events)
    flagged = np.flatnonzero(batch.risk.harm_flag)
    assert flagged.size > 0
    for index in flagged[:200]:
        item = batch.item(int(index))
        assert not any(c["promotion"] for c in item.campaign_recommendations)


def test_missing_features_are_imputed_and_listed(predictor: SegmentPredictor) -> None:
    prediction = predictor.predict_features({"avg_stake": 10.0})
    assert "bets_per_day" in prediction.imputed_features
    assert "avg_stake" not in prediction.imputed_features
    assert 0.0 <= prediction.confidence <= 1.0


def test_unknown_feature_is_rejected(predictor: SegmentPredictor) -> None:
    with pytest.raises(KeyError, match="unknown feature"):
        predictor.predict_features({"stake": 1.0})


def test_batch_matches_single(
    predictor: SegmentPredictor, bustabit_events: pl.DataFrame
) -> None:
    features = compute_features(fold(bustabit_events))
    batch = predictor.predict_batch(features)
    for index in (0, 99, 3000):
        row = features.drop("player_id").row(index, named=True)
        single = predictor.predict_features(row)
        assert single.cluster_id == batch.cluster_ids[index]
        assert single.confidence == pytest.approx(batch.confidence[index])


def test_cold_start_withholds_promotions(predictor: SegmentPredictor) -> None:
    prediction = predictor.predict_features({}, cold_start=True)
    assert prediction.campaign_recommendations
    assert not any(c["promotion"] for c in prediction.campaign_recommendations)
    assert "unknown player" in prediction.recommendation_note


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("avg_stake", -100.0, "negative"),
        ("bets_per_day", float("inf"), "not finite"),
        ("avg_stake", "lots", "not a number"),
    ],
)
def test_impossible_feature_values_rejected(
    predictor: SegmentPredictor, name: str, value: object, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        predictor.predict_features({name: value})


def test_net_loss_may_be_negative(predictor: SegmentPredictor) -> None:
    assert predictor.predict_features({"net_loss": -50.0}).segment
