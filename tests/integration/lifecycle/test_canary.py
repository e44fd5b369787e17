"""Canary guard against real models, an in-process router and an MLflow registry."""

from __future__ import annotations

import asyncio
import time

import polars as pl
import pytest
from prometheus_client import REGISTRY

from crmbet.features.definitions import compute_features
from crmbet.features.state import fold
from crmbet.models.bundle import train_segments
from crmbet.models.registry import CHALLENGER, CHAMPION
from crmbet.monitoring.canary_guard import CanaryGuard, CanaryThresholds
from crmbet.monitoring.canary_router import CHALLENGER_VARIANT, InProcessCanaryRouter
from crmbet.serving.predictor import SegmentPredictor

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class SlowPredictor:
    """A correct predictor that takes 20 ms longer per request."""

    def __init__(self, inner: SegmentPredictor) -> None:
        self.inner = inner
        self.version = inner.version

    def predict_features(self, features, player_id=None):
        time.sleep(0.02)
        return self.inner.predict_features(features, player_id=player_id)


@pytest.fixture(scope="module")
def requests(event_halves) -> list[tuple[str, dict[str, float]]]:
    features = compute_features(fold(event_halves[1]))
    rows = features.drop("player_id").to_dicts()
    return list(zip(features["player_id"].to_list(), rows, strict=True))


def _rollbacks(metric: str) -> float:
    return (
        REGISTRY.get_sample_value("canary_rollbacks_total", {"metric": metric}) or 0.0
    )


async def _serve_until(router, requests, guard, *, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    index = 0
    while guard.state == "watching" and time.monotonic() < deadline:
        for _ in range(25):
            player, features = requests[index % len(requests)]
            router.predict(features, player)
            index += 1
        await asyncio.sleep(0.01)


async def _run_canary(registry, challenger, requests, *, seconds=60.0):
    champion = SegmentPredictor(registry.load(CHAMPION))
    router = InProcessCanaryRouter(champion, challenger, challenger_share=0.5)
    guard = CanaryGuard(
        router,
        router.rollback,
        registry=registry,
        interval_s=0.05,
        thresholds=CanaryThresholds(min_samples=100),
    )
    await guard.start()
    try:
        await _serve_until(router, requests, guard, seconds=seconds)
    finally:
        await guard.stop()
    return router, guard


async def test_one_segment_challenger_rolled_back(
    champion_registry, event_halves, requests
):
    features = compute_features(fold(event_halves[1]))
    model, _ = train_segments(features, k=1)
    version = champion_registry.register(model)
    champion_registry.set_alias(CHALLENGER, version)
    before = _rollbacks("segment_mix_psi")

    router, guard = await _run_canary(
        champion_registry, SegmentPredictor(model), requests
    )

    assert guard.state == "rolled_back"
    assert _rollbacks("segment_mix_psi") == before + 1
    served = router.variant_stats()[CHALLENGER_VARIANT].requests
    variants = {
        router.predict(features, player)[0] for player, features in requests[:500]
    }
    assert variants == {"champion"}
    assert router.variant_stats()[CHALLENGER_VARIANT].requests == served

    tags = champion_registry.client.get_model_version(
        champion_registry.model_name, version
    ).tags
    assert tags["canary_status"] == "rolled_back"
    assert "segment_mix_psi" in tags["rollback_metric"]
    assert "segment_mix_psi" in tags["rollback_reason"]
    assert tags["rollback_champion_version"] == champion_registry.alias_version(
        CHAMPION
    )
    assert tags["rollback_at"]
    assert champion_registry.alias_version(CHALLENGER) is None


async def test_slow_challenger_rolled_back(champion_registry, requests):
    champion_version = champion_registry.alias_version(CHAMPION)
    slow = SlowPredictor(SegmentPredictor(champion_registry.load(champion_version)))
    slow.version = champion_version
    before = _rollbacks("latency_p95_ms")

    router, guard = await _run_canary(champion_registry, slow, requests)

    assert guard.state == "rolled_back"
    assert [c.metric for c in guard.last_decision.failed_checks] == ["latency_p95_ms"]
    assert _rollbacks("latency_p95_ms") == before + 1
    variants = {
        router.predict(features, player)[0] for player, features in requests[:200]
    }
    assert variants == {"champion"}
    tags = champion_registry.client.get_model_version(
        champion_registry.model_name, champion_version
    ).tags
    assert "latency_p95_ms" in tags["rollback_reason"]


async def test_same_model_canary_stays(champion_registry, requests):
    champion = SegmentPredictor(champion_registry.load(CHAMPION))
    router = InProcessCanaryRouter(
        champion, SegmentPredictor(champion.model), challenger_share=0.5
    )
    guard = CanaryGuard(
        router,
        router.rollback,
        interval_s=0.05,
        thresholds=CanaryThresholds(min_samples=100),
    )
    for player, features in requests[:1000]:
        router.predict(features, player)
    decision = await guard.check()
    assert decision.action == "continue", decision.reason
    assert router.variant_stats()[CHALLENGER_VARIANT].requests > 300


def test_router_keeps_player_variant(champion_registry):
    champion = SegmentPredictor(champion_registry.load(CHAMPION))
    router = InProcessCanaryRouter(champion, champion, challenger_share=0.3)
    players = [f"player-{i}" for i in range(2000)]
    first = [router.route(p) for p in players]
    assert first == [router.route(p) for p in players]
    share = sum(v == CHALLENGER_VARIANT for v in first) / len(players)
    assert share == pytest.approx(0.3, abs=0.04)
    assert pl.Series(first).n_unique() == 2
