"""Retraining against a champion in a real MLflow registry (SQLite store)."""

from __future__ import annotations

import numpy as np
import pytest

from crmbet.models.registry import CHALLENGER, CHAMPION
from crmbet.monitoring.retrain import (
    PREVIOUS_CHAMPION,
    ModelComparison,
    decide_promotion,
    load_reference_features,
    retrain,
    segment_change_share,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_retrain_records_comparison(champion_registry, module_settings, event_halves):
    champion = champion_registry.alias_version(CHAMPION)
    result = retrain(
        event_halves[1],
        settings=module_settings,
        registry=champion_registry,
        k=5,
        promote="never",
    )
    version = result.version
    assert result.promoted is False
    assert champion_registry.alias_version(CHAMPION) == champion
    assert champion_registry.alias_version(CHALLENGER) == version

    client = champion_registry.client
    tags = client.get_model_version(champion_registry.model_name, version).tags
    assert tags["compared_with"] == champion
    assert tags["promotion_decision"] == "kept_as_challenger"
    metrics = client.get_run(tags["run_id"]).data.metrics
    assert 0.0 <= metrics["compare_segment_change_share"] <= 1.0
    assert -1.0 <= metrics["compare_adjusted_rand_index"] <= 1.0
    assert "compare_champion_silhouette" in metrics
    assert "compare_champion_segment_mix_psi" in metrics

    reference = load_reference_features(champion_registry, version)
    assert reference.height == result.training.features.height


def test_retrain_forced_promotion(champion_registry, module_settings, event_halves):
    before = champion_registry.alias_version(CHAMPION)
    result = retrain(
        event_halves[1],
        settings=module_settings,
        registry=champion_registry,
        k=4,
        promote="always",
    )
    assert result.promoted is True
    assert champion_registry.alias_version(CHAMPION) == result.version
    assert champion_registry.alias_version(PREVIOUS_CHAMPION) == before
    assert champion_registry.alias_version(CHALLENGER) is None


def test_same_model_is_stable(event_halves):
    from crmbet.features.definitions import compute_features
    from crmbet.features.state import fold
    from crmbet.models.bundle import train_segments
    from crmbet.monitoring.retrain import compare_models

    features = compute_features(fold(event_halves[0]))
    model, _ = train_segments(features, k=5, seed=0)
    comparison = compare_models(model, model, features)
    assert comparison.adjusted_rand_index == pytest.approx(1.0)
    assert comparison.segment_change_share == pytest.approx(0.0)
    assert comparison.champion_segment_mix_psi < 0.01


def test_rule_promotes_better_silhouette():
    comparison = ModelComparison(
        n_players=100,
        challenger_k=5,
        challenger_silhouette=0.40,
        challenger_davies_bouldin=1.0,
        challenger_calinski_harabasz=10.0,
        champion_version="1",
        champion_k=5,
        champion_silhouette=0.30,
        champion_segment_mix_psi=0.01,
    )
    promote, reason = decide_promotion(comparison)
    assert promote is True
    assert "silhouette improved" in reason


def test_rule_keeps_equal_champion():
    comparison = ModelComparison(
        n_players=100,
        challenger_k=5,
        challenger_silhouette=0.30,
        challenger_davies_bouldin=1.0,
        challenger_calinski_harabasz=10.0,
        champion_version="1",
        champion_k=5,
        champion_silhouette=0.30,
        champion_segment_mix_psi=0.05,
    )
    assert decide_promotion(comparison)[0] is False


def test_rule_promotes_on_mix_drift():
    comparison = ModelComparison(
        n_players=100,
        challenger_k=5,
        challenger_silhouette=0.29,
        challenger_davies_bouldin=1.0,
        challenger_calinski_harabasz=10.0,
        champion_version="1",
        champion_k=5,
        champion_silhouette=0.30,
        champion_segment_mix_psi=0.4,
    )
    assert decide_promotion(comparison)[0] is True


def test_change_share_uneven_k():
    before = np.array([0, 0, 1, 1, 2, 2])
    after = np.array([0, 0, 1, 1, 1, 1])
    assert segment_change_share(before, after) == pytest.approx(2 / 6)
