"""Canary guard decisions on hand-made variant statistics."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import REGISTRY

from crmbet.monitoring.canary_guard import (
    CanaryGuard,
    CanaryStatsSource,
    CanaryThresholds,
    VariantStats,
    sorted_share_psi,
)


class FixedStats:
    def __init__(self, champion: VariantStats, challenger: VariantStats) -> None:
        self.stats = {"champion": champion, "challenger": challenger}

    def variant_stats(self) -> dict[str, VariantStats]:
        return self.stats


def _variant(
    requests=1000, errors=0, latency=10.0, flagged=50, mix=(400, 300, 300), version="1"
) -> VariantStats:
    rng = np.random.default_rng(0)
    return VariantStats(
        requests=requests,
        errors=errors,
        latencies_ms=tuple(rng.normal(latency, latency / 10, 500)),
        segment_counts={f"s{i}": count for i, count in enumerate(mix)},
        rg_flagged=flagged,
        model_version=version,
    )


def _decide(champion: VariantStats, challenger: VariantStats, **options):
    guard = CanaryGuard(
        FixedStats(champion, challenger), lambda decision: None, **options
    )
    return guard.evaluate()


def test_source_protocol_matches():
    assert isinstance(FixedStats(_variant(), _variant()), CanaryStatsSource)


def test_equal_variants_continue():
    decision = _decide(_variant(), _variant(version="2"))
    assert decision.action == "continue"
    assert decision.failed_checks == []


def test_waits_for_min_samples():
    decision = _decide(_variant(), _variant(requests=50, errors=50, version="2"))
    assert decision.action == "wait"


def test_error_rate_rollback():
    decision = _decide(_variant(errors=5), _variant(errors=80, version="2"))
    assert decision.action == "rollback"
    assert [c.metric for c in decision.failed_checks] == ["error_rate"]


def test_small_error_increase_tolerated():
    decision = _decide(_variant(errors=10), _variant(errors=20, version="2"))
    assert decision.action == "continue"


def test_latency_rollback():
    decision = _decide(_variant(latency=10.0), _variant(latency=40.0, version="2"))
    assert [c.metric for c in decision.failed_checks] == ["latency_p95_ms"]


def test_submillisecond_latency_ratio_tolerated():
    decision = _decide(_variant(latency=0.2), _variant(latency=0.6, version="2"))
    assert decision.action == "continue"


def test_collapsed_segments_rollback():
    decision = _decide(_variant(), _variant(mix=(1000,), version="2"))
    assert [c.metric for c in decision.failed_checks] == ["segment_mix_psi"]


def test_relabelled_segments_pass():
    assert sorted_share_psi(
        {"a": 400, "b": 300, "c": 300}, {"x": 300, "y": 400, "z": 300}
    ) == pytest.approx(0.0)


def test_rg_share_drop_rollback():
    decision = _decide(_variant(flagged=100), _variant(flagged=10, version="2"))
    assert [c.metric for c in decision.failed_checks] == ["rg_flag_share"]


def test_auto_promote_needs_action():
    with pytest.raises(ValueError, match="promote_action"):
        CanaryGuard(
            FixedStats(_variant(), _variant()), lambda d: None, auto_promote=True
        )


async def test_clean_canary_promotes_when_enabled():
    promoted = []
    guard = CanaryGuard(
        FixedStats(_variant(requests=3000), _variant(requests=3000, version="2")),
        lambda decision: None,
        promote_action=promoted.append,
        auto_promote=True,
        thresholds=CanaryThresholds(promote_after_samples=2000),
    )
    decision = await guard.check()
    assert decision.action == "promote"
    assert guard.state == "promoted"
    assert len(promoted) == 1


async def test_clean_canary_waits_without_auto_promote():
    guard = CanaryGuard(
        FixedStats(_variant(requests=3000), _variant(requests=3000, version="2")),
        lambda decision: None,
    )
    assert (await guard.check()).action == "continue"
    assert guard.state == "idle"


async def test_rollback_counts_metric():
    def value() -> float:
        return (
            REGISTRY.get_sample_value(
                "canary_rollbacks_total", {"metric": "error_rate"}
            )
            or 0.0
        )

    before = value()
    rolled_back = []
    guard = CanaryGuard(
        FixedStats(_variant(errors=5), _variant(errors=80, version="2")),
        rolled_back.append,
    )
    await guard.check()
    assert guard.state == "rolled_back"
    assert len(rolled_back) == 1
    assert value() == before + 1


class BrokenStats:
    def __init__(self) -> None:
        self.calls = 0

    def variant_stats(self) -> dict[str, VariantStats]:
        self.calls += 1
        raise ConnectionError("stats backend unreachable")


async def test_guard_survives_source_errors(caplog):
    import asyncio

    source = BrokenStats()
    guard = CanaryGuard(source, lambda decision: None, interval_s=0.01)
    await guard.start()
    await asyncio.sleep(0.1)
    assert guard.running
    await guard.stop()
    assert not guard.running
    assert guard.state == "stopped"
    assert source.calls >= 2
    assert "stats backend unreachable" in caplog.text
