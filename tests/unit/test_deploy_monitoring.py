"""Prometheus alert rules and the Grafana dashboard under deploy/."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "crmbet-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "crmbet-alerts-test.yml"
DASHBOARD = DEPLOY / "grafana" / "crmbet-lifecycle.json"

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None,
    reason="promtool not installed (Debian package 'prometheus'); CI installs it",
)


@needs_promtool
def test_alert_rules_valid():
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


@needs_promtool
def test_alert_rules_fire():
    result = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=RULE_TESTS.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_cover_required_alerts():
    text = RULES.read_text()
    for metric in (
        "model_latency_seconds_bucket",
        "model_requests_total",
        "crmbet_feature_drift_share",
        "stream_consumer_lag",
        "canary_rollbacks_total",
    ):
        assert metric in text, metric


def test_dashboard_panels_query_prometheus():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    expressions = [t["expr"] for panel in panels for t in panel["targets"]]
    joined = " ".join(expressions)
    for metric in (
        "canary_rollbacks_total",
        "crmbet_feature_drift_psi",
        "stream_consumer_lag",
        "model_latency_seconds_bucket",
        "crmbet_health_score",
    ):
        assert metric in joined, metric
    for expression in expressions:
        assert expression.count("(") == expression.count(")"), expression


def test_dashboard_metrics_exported():
    from prometheus_client import REGISTRY

    from crmbet.monitoring import lifecycle_metrics  # noqa: F401

    exported = {
        sample.name for family in REGISTRY.collect() for sample in family.samples
    }
    exported |= {family.name for family in REGISTRY.collect()}
    text = DASHBOARD.read_text()
    for name in set(
        re.findall(r"(canary_\w+|crmbet_(?:feature|canary|health|retrains)\w*)", text)
    ):
        base = name.removesuffix("_total")
        assert name in exported or base in exported, name


def test_serving_and_stream_metrics_used_by_rules_exist():
    from prometheus_client.metrics import MetricWrapperBase

    from crmbet.monitoring import metrics as serving_metrics
    from crmbet.streaming import metrics as stream_metrics

    exported = set()
    for module in (serving_metrics, stream_metrics):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                exported.update(family.name for family in value.describe())
    for name in ("model_latency_seconds", "model_requests", "stream_consumer_lag"):
        assert name in exported, name
