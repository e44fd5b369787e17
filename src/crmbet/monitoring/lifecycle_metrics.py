"""Prometheus metrics of the model lifecycle: drift, retraining, canary, A/B.

The objects live in prometheus-client's default registry, so they appear on
the same ``/metrics`` page as the serving metrics. Alert rules in
``deploy/prometheus/`` and the Grafana dashboard in ``deploy/grafana/`` read
these names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

if TYPE_CHECKING:
    from crmbet.monitoring.drift import DriftReport

#: Automatic canary rollbacks, by the metric that failed (exported as
#: ``canary_rollbacks_total``).
CANARY_ROLLBACKS = Counter(
    "canary_rollbacks",
    "Canary deployments rolled back by the canary guard",
    ["metric"],
)
#: Challengers promoted by the canary guard after a clean canary.
CANARY_PROMOTIONS = Counter(
    "canary_promotions", "Challengers promoted automatically after a clean canary"
)
#: 1 while a canary guard watches a challenger, 0 otherwise.
CANARY_ACTIVE = Gauge("crmbet_canary_active", "Whether a canary guard is running")

#: Population stability index of each feature in the latest drift check.
FEATURE_DRIFT_PSI = Gauge(
    "crmbet_feature_drift_psi", "Population stability index of a feature", ["feature"]
)
#: 1 for each feature flagged by the latest drift check, 0 otherwise.
FEATURE_DRIFT_DETECTED = Gauge(
    "crmbet_feature_drift_detected", "Whether a feature drifted", ["feature"]
)
#: Share of tested features that drifted in the latest check.
FEATURE_DRIFT_SHARE = Gauge(
    "crmbet_feature_drift_share", "Share of tested features that drifted"
)
#: Retraining runs, by outcome (promoted or kept_as_challenger).
RETRAINS = Counter("crmbet_retrains", "Retraining runs", ["outcome"])
#: System and pipeline health scores in [0, 1].
HEALTH_SCORE = Gauge("crmbet_health_score", "Health score in [0, 1]", ["scope"])


def export_drift(report: DriftReport) -> None:
    """Set the drift gauges from a :class:`~crmbet.monitoring.drift.DriftReport`."""
    for item in report.features:
        FEATURE_DRIFT_DETECTED.labels(item.feature).set(1.0 if item.drifted else 0.0)
        if item.psi is not None:
            FEATURE_DRIFT_PSI.labels(item.feature).set(item.psi)
    FEATURE_DRIFT_SHARE.set(report.drift_share)
