"""Health scores: component checks combined into system and pipeline scores.

Each check returns a :class:`ComponentCheck` with a status (``healthy`` = 1,
``degraded`` = 0.5, ``unhealthy`` = 0) and a scope. :func:`combine_health`
averages the status values of each scope with the weights below,
renormalised over the checks actually given, so a deployment without Kafka
is not penalised for having no consumer:

- ``system_health_score`` (can the service serve requests?): model 0.35,
  online store 0.25, registry 0.15, stream 0.15, cache 0.10;
- ``pipeline_health_score`` (are the predictions still trustworthy?): data
  freshness 0.30, drift 0.30, consumer lag 0.20, model age 0.10, canary 0.10.

A check with another name weighs :data:`DEFAULT_WEIGHT`. The overall status
is ``unhealthy`` when the model is unhealthy or a score is below 0.5,
``degraded`` when a score is below 1, ``healthy`` otherwise.

Examples
--------
>>> report = combine_health([check_model(True, "3"), check_drift(0.0)])
>>> report.system_health_score, report.pipeline_health_score
(1.0, 1.0)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from crmbet.monitoring import lifecycle_metrics

logger = logging.getLogger(__name__)

HealthStatus = Literal["healthy", "degraded", "unhealthy"]
Scope = Literal["system", "pipeline"]

STATUS_SCORE: dict[str, float] = {"healthy": 1.0, "degraded": 0.5, "unhealthy": 0.0}
SYSTEM_WEIGHTS: dict[str, float] = {
    "model": 0.35,
    "online_store": 0.25,
    "registry": 0.15,
    "stream": 0.15,
    "cache": 0.10,
}
PIPELINE_WEIGHTS: dict[str, float] = {
    "data_freshness": 0.30,
    "drift": 0.30,
    "consumer_lag": 0.20,
    "model_age": 0.10,
    "canary": 0.10,
}
DEFAULT_WEIGHT = 0.10


@dataclass(frozen=True)
class ComponentCheck:
    """The result of checking one component."""

    name: str
    status: HealthStatus
    scope: Scope = "system"
    detail: dict[str, object] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """Numeric value of the status: 1, 0.5 or 0."""
        return STATUS_SCORE[self.status]


@dataclass(frozen=True)
class HealthReport:
    """Combined health of every checked component."""

    status: HealthStatus
    system_health_score: float
    pipeline_health_score: float
    components: dict[str, ComponentCheck]

    def to_dict(self) -> dict[str, object]:
        """Return the report in the shape of the ``/health`` endpoints."""
        return {
            "status": self.status,
            "system_health_score": self.system_health_score,
            "pipeline_health_score": self.pipeline_health_score,
            "components": {
                name: {"status": check.status, "scope": check.scope, **check.detail}
                for name, check in self.components.items()
            },
        }


def _weighted(checks: list[ComponentCheck], weights: dict[str, float]) -> float:
    if not checks:
        return 1.0
    total = sum(weights.get(c.name, DEFAULT_WEIGHT) for c in checks)
    return sum(weights.get(c.name, DEFAULT_WEIGHT) * c.score for c in checks) / total


def combine_health(checks: Iterable[ComponentCheck]) -> HealthReport:
    """Combine component checks into the two scores and an overall status."""
    checks = list(checks)
    names = [c.name for c in checks]
    if len(set(names)) != len(names):
        raise ValueError(f"component checks have duplicate names: {names}")
    system = _weighted([c for c in checks if c.scope == "system"], SYSTEM_WEIGHTS)
    pipeline = _weighted([c for c in checks if c.scope == "pipeline"], PIPELINE_WEIGHTS)
    components = {c.name: c for c in checks}
    model_down = "model" in components and components["model"].status == "unhealthy"
    status: HealthStatus
    if model_down or min(system, pipeline) < 0.5:
        status = "unhealthy"
    elif min(system, pipeline) < 1.0:
        status = "degraded"
    else:
        status = "healthy"
    lifecycle_metrics.HEALTH_SCORE.labels("system").set(system)
    lifecycle_metrics.HEALTH_SCORE.labels("pipeline").set(pipeline)
    return HealthReport(
        status=status,
        system_health_score=round(system, 4),
        pipeline_health_score=round(pipeline, 4),
        components=components,
    )


def _by_limits(value: float, degraded: float, unhealthy: float) -> HealthStatus:
    if value >= unhealthy:
        return "unhealthy"
    if value >= degraded:
        return "degraded"
    return "healthy"


def check_model(loaded: bool, version: str | None = None) -> ComponentCheck:
    """Check that a model is loaded; without one no prediction can be served."""
    return ComponentCheck(
        "model", "healthy" if loaded else "unhealthy", detail={"version": version}
    )


def check_probe(
    name: str, probe: Callable[[], object], scope: Scope = "system"
) -> ComponentCheck:
    """Run ``probe``, e.g. a Redis ping: an exception or False means unhealthy."""
    start = time.perf_counter()
    try:
        ok = probe()
    except Exception as error:  # Any failure of a probe means the component is down.
        logger.warning(
            "health probe %s failed: %s: %s", name, type(error).__name__, error
        )
        return ComponentCheck(
            name, "unhealthy", scope, {"error": f"{type(error).__name__}: {error}"}
        )
    latency_ms = (time.perf_counter() - start) * 1000.0
    status: HealthStatus = "healthy" if ok is not False else "unhealthy"
    return ComponentCheck(name, status, scope, {"latency_ms": round(latency_ms, 3)})


def check_drift(
    drift_share: float | None, degraded: float = 0.1, unhealthy: float = 0.3
) -> ComponentCheck:
    """Grade the share of drifted features of the latest drift check."""
    if drift_share is None:
        return ComponentCheck(
            "drift", "degraded", "pipeline", {"reason": "no drift check has run"}
        )
    return ComponentCheck(
        "drift",
        _by_limits(drift_share, degraded, unhealthy),
        "pipeline",
        {"drift_share": drift_share},
    )


def check_freshness(
    newest_event_ts: float | None,
    now: float | None = None,
    degraded_s: float = 3_600.0,
    unhealthy_s: float = 6 * 3_600.0,
) -> ComponentCheck:
    """Grade the age of the newest event seen (a Unix time in seconds)."""
    if newest_event_ts is None:
        return ComponentCheck(
            "data_freshness", "degraded", "pipeline", {"reason": "no event seen yet"}
        )
    age = max((now if now is not None else time.time()) - newest_event_ts, 0.0)
    return ComponentCheck(
        "data_freshness",
        _by_limits(age, degraded_s, unhealthy_s),
        "pipeline",
        {"age_s": round(age, 1)},
    )


def check_consumer_lag(
    lag: int | None, degraded: int = 10_000, unhealthy: int = 100_000
) -> ComponentCheck:
    """Grade the consumer group's lag in messages."""
    if lag is None:
        return ComponentCheck(
            "consumer_lag", "degraded", "pipeline", {"reason": "lag unknown"}
        )
    return ComponentCheck(
        "consumer_lag", _by_limits(lag, degraded, unhealthy), "pipeline", {"lag": lag}
    )


def check_model_age(
    trained_at: str | None,
    now: datetime | None = None,
    degraded_days: float = 35.0,
    unhealthy_days: float = 90.0,
) -> ComponentCheck:
    """Grade the age of the champion from its ISO ``trained_at`` time.

    The defaults fit a monthly retraining cycle with a few days of slack.
    """
    if not trained_at:
        return ComponentCheck(
            "model_age", "degraded", "pipeline", {"reason": "training time unknown"}
        )
    trained = datetime.fromisoformat(trained_at)
    if trained.tzinfo is None:
        trained = trained.replace(tzinfo=UTC)
    days = ((now or datetime.now(UTC)) - trained).total_seconds() / 86_400.0
    return ComponentCheck(
        "model_age",
        _by_limits(days, degraded_days, unhealthy_days),
        "pipeline",
        {"age_days": round(days, 2)},
    )


def check_canary(state: str | None) -> ComponentCheck:
    """Grade the canary guard's state: a rollback degrades until someone looks."""
    status: HealthStatus = "degraded" if state == "rolled_back" else "healthy"
    return ComponentCheck("canary", status, "pipeline", {"state": state or "none"})
