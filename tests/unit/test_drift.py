"""Drift detection on synthetic tables and on the bustabit data split by date."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from crmbet.features.definitions import compute_features
from crmbet.features.state import fold
from crmbet.monitoring.drift import (
    DriftInputError,
    DriftThresholds,
    detect_drift,
    ks_wasserstein,
    population_stability_index,
)

N = 20_000


def _table(rng: np.random.Generator, stake_mean: float = 10.0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "player_id": [f"p{i}" for i in range(N)],
            "avg_stake": rng.lognormal(np.log(stake_mean), 0.8, N),
            "win_rate": rng.beta(5, 5, N),
            "bets_per_day": rng.gamma(2.0, 3.0, N),
            "segment": rng.choice(
                ["casual", "regular", "high roller"], N, p=[0.6, 0.3, 0.1]
            ),
            "jurisdiction": ["MT"] * N,
            "bonus_share": [None] * N,
        },
        schema_overrides={"bonus_share": pl.Float64},
    )


@pytest.fixture(scope="module")
def synthetic() -> tuple[pl.DataFrame, pl.DataFrame]:
    reference = _table(np.random.default_rng(1))
    current = _table(np.random.default_rng(2), stake_mean=14.0)
    return reference, current


def test_shifted_feature_is_flagged(synthetic):
    report = detect_drift(*synthetic)
    assert report.feature("avg_stake").status == "drift"
    assert report.drifted_features == ["avg_stake"]


def test_unshifted_features_pass(synthetic):
    report = detect_drift(*synthetic)
    for name in ("win_rate", "bets_per_day", "segment"):
        assert report.feature(name).status == "ok", report.feature(name)


def test_constant_and_empty_reported_not_nan(synthetic):
    report = detect_drift(*synthetic)
    assert report.feature("jurisdiction").status == "constant"
    assert report.feature("bonus_share").status == "all_missing"
    for item in report.features:
        for value in item.to_dict().values():
            assert not (isinstance(value, float) and math.isnan(value)), item


def test_player_id_excluded(synthetic):
    names = [item.feature for item in detect_drift(*synthetic).features]
    assert "player_id" not in names


def test_empty_table_reported():
    reference = pl.DataFrame({"avg_stake": [1.0, 2.0, 3.0]})
    current = pl.DataFrame({"avg_stake": []}, schema={"avg_stake": pl.Float64})
    item = detect_drift(reference, current).feature("avg_stake")
    assert item.status == "empty"
    assert item.drifted is False
    assert item.psi is None


def test_constant_column_changed_value_drifts():
    reference = pl.DataFrame({"currency": ["EUR"] * 500})
    current = pl.DataFrame({"currency": ["GBP"] * 500})
    assert detect_drift(reference, current).feature("currency").status == "drift"


def test_missing_column_reported():
    reference = pl.DataFrame({"a": [1.0, 2.0], "b": [1.0, 2.0]})
    current = pl.DataFrame({"a": [1.0, 2.0]})
    assert detect_drift(reference, current).feature("b").status == "missing_column"


def test_categorical_shift_flagged():
    rng = np.random.default_rng(3)
    reference = pl.DataFrame(
        {"segment": rng.choice(["a", "b", "c"], 5000, p=[0.6, 0.3, 0.1])}
    )
    current = pl.DataFrame(
        {"segment": rng.choice(["a", "b", "c"], 5000, p=[0.2, 0.3, 0.5])}
    )
    item = detect_drift(reference, current).feature("segment")
    assert item.status == "drift"
    assert item.test == "chi_squared"


def test_psi_matches_formula():
    reference = np.array([0.5, 0.3, 0.2])
    current = np.array([0.3, 0.3, 0.4])
    smoothed_r = (reference + 1e-4) / (reference + 1e-4).sum()
    smoothed_c = (current + 1e-4) / (current + 1e-4).sum()
    expected = np.sum((smoothed_c - smoothed_r) * np.log(smoothed_c / smoothed_r))
    assert population_stability_index(reference, current) == pytest.approx(expected)


def test_unknown_column_rejected():
    frame = pl.DataFrame({"a": [1.0]})
    with pytest.raises(DriftInputError, match="neither table"):
        detect_drift(frame, frame, columns=["b"])


def test_thresholds_validated():
    with pytest.raises(ValueError, match="psi_warning"):
        DriftThresholds(psi_warning=0.3, psi_drift=0.2)


@pytest.fixture(scope="module")
def bustabit_halves(bustabit_events) -> tuple[pl.DataFrame, pl.DataFrame]:
    events = bustabit_events.sort("ts")
    middle = events["ts"][events.height // 2]
    first = events.filter(pl.col("ts") < middle)
    second = events.filter(pl.col("ts") >= middle)
    return compute_features(fold(first)), compute_features(fold(second))


def test_bustabit_halves_stable(bustabit_halves):
    report = detect_drift(*bustabit_halves)
    assert report.drifted_features == []
    assert report.feature("deposit_count").status == "constant"
    assert report.feature("deposit_count").reference_mean == 0.0
    assert len(report.tested) >= 20


def test_bustabit_stake_shift_flagged(bustabit_halves):
    reference, current = bustabit_halves
    shifted = current.with_columns(pl.col("avg_stake") * 3.0)
    report = detect_drift(reference, shifted)
    assert report.drifted_features == ["avg_stake"]


@pytest.mark.parametrize("size", [500, 30_000])
def test_ks_wasserstein_match_scipy(size):
    rng = np.random.default_rng(size)
    reference = np.sort(rng.lognormal(0.0, 1.0, size))
    current = np.sort(np.round(rng.lognormal(0.1, 1.0, size + 7), 2))
    statistic, p_value, distance = ks_wasserstein(reference, current)
    expected = stats.ks_2samp(reference, current)
    assert statistic == pytest.approx(expected.statistic)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-300)
    assert distance == pytest.approx(stats.wasserstein_distance(reference, current))


def test_export_drift_sets_gauges(synthetic):
    from prometheus_client import REGISTRY

    from crmbet.monitoring.lifecycle_metrics import export_drift

    report = detect_drift(*synthetic)
    export_drift(report)
    share = REGISTRY.get_sample_value("crmbet_feature_drift_share")
    flagged = REGISTRY.get_sample_value(
        "crmbet_feature_drift_detected", {"feature": "avg_stake"}
    )
    steady = REGISTRY.get_sample_value(
        "crmbet_feature_drift_detected", {"feature": "win_rate"}
    )
    assert share == pytest.approx(report.drift_share)
    assert flagged == 1.0
    assert steady == 0.0
