"""Health scores combined from component checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crmbet.monitoring.health import (
    check_canary,
    check_consumer_lag,
    check_drift,
    check_freshness,
    check_model,
    check_model_age,
    check_probe,
    combine_health,
)


def test_all_healthy_scores_one():
    report = combine_health(
        [
            check_model(True, "1"),
            check_probe("online_store", lambda: True),
            check_drift(0.0),
            check_consumer_lag(10),
        ]
    )
    assert report.status == "healthy"
    assert report.system_health_score == 1.0
    assert report.pipeline_health_score == 1.0


def test_weights_applied():
    report = combine_health(
        [check_model(True), check_probe("online_store", lambda: False)]
    )
    # model 0.35 healthy, online store 0.25 unhealthy: 0.35 / 0.60
    assert report.system_health_score == pytest.approx(0.35 / 0.60, abs=1e-4)
    assert report.status == "degraded"


def test_missing_model_unhealthy():
    report = combine_health([check_model(False), check_probe("registry", lambda: True)])
    assert report.status == "unhealthy"


def test_failing_probe_reports_error():
    def probe() -> bool:
        raise ConnectionError("connection refused")

    check = check_probe("online_store", probe)
    assert check.status == "unhealthy"
    assert "connection refused" in check.detail["error"]


@pytest.mark.parametrize(
    ("share", "status"),
    [
        (0.05, "healthy"),
        (0.15, "degraded"),
        (0.5, "unhealthy"),
        (None, "degraded"),
    ],
)
def test_drift_grades(share, status):
    assert check_drift(share).status == status


def test_stale_data_degrades_pipeline():
    report = combine_health([check_model(True), check_freshness(0.0, now=2 * 3600.0)])
    assert report.pipeline_health_score == 0.5
    assert report.system_health_score == 1.0


def test_model_age_grades():
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert (
        check_model_age((now - timedelta(days=10)).isoformat(), now).status == "healthy"
    )
    assert (
        check_model_age((now - timedelta(days=100)).isoformat(), now).status
        == "unhealthy"
    )


def test_rollback_degrades():
    assert check_canary("rolled_back").status == "degraded"


def test_duplicate_names_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        combine_health([check_model(True), check_model(False)])


def test_report_shape():
    body = combine_health([check_model(True, "7")]).to_dict()
    assert body["components"]["model"] == {
        "status": "healthy",
        "scope": "system",
        "version": "7",
    }
