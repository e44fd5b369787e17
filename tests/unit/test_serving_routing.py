"""Sticky hash routing between champion and challenger."""

from __future__ import annotations

import numpy as np
import pytest

from crmbet.serving.routing import CHALLENGER, CHAMPION, TrafficRouter, bucket

PLAYERS = [f"p_{i:06d}" for i in range(10_000)]


def test_bucket_stable_and_in_range() -> None:
    values = np.array([bucket(p, "salt") for p in PLAYERS])
    assert values.min() >= 0.0
    assert values.max() < 1.0
    assert bucket("p_000001", "salt") == values[1]
    assert bucket("p_000001", "other") != values[1]


def test_buckets_are_uniform() -> None:
    counts, _ = np.histogram([bucket(p) for p in PLAYERS], bins=10, range=(0, 1))
    assert counts.min() > 850
    assert counts.max() < 1150


@pytest.mark.parametrize("traffic", [0.05, 0.2, 0.5])
def test_canary_share_close_to_traffic(traffic: float) -> None:
    router = TrafficRouter("1")
    router.start("canary", "2", traffic, salt="canary-2")
    share = sum(router.route(p) == CHALLENGER for p in PLAYERS) / len(PLAYERS)
    assert abs(share - traffic) <= 0.03


def test_stop_routes_all_to_champion() -> None:
    router = TrafficRouter("1")
    router.start("canary", "2", 0.9, salt="s")
    router.stop("1")
    assert {router.route(p) for p in PLAYERS[:500]} == {CHAMPION}
    assert list(router.stats) == [CHAMPION]


def test_invalid_traffic_rejected() -> None:
    with pytest.raises(ValueError, match="traffic=1.5"):
        TrafficRouter("1").start("canary", "2", 1.5, salt="s")


def test_stats_summary_counts() -> None:
    router = TrafficRouter("1")
    stats = router.variant_stats(CHAMPION)
    stats.record("a", "Regular", flagged=True, latency_ms=2.0)
    stats.record("a", "Casual", flagged=False, latency_ms=4.0)
    stats.errors += 1
    summary = router.summary()["variants"][CHAMPION]
    assert summary["requests"] == 2
    assert summary["distinct_players"] == 1
    assert summary["responsible_gambling_flag_share"] == 0.5
    assert summary["error_rate"] == pytest.approx(1 / 3)
    assert summary["segment_share"] == {"Regular": 0.5, "Casual": 0.5}


def test_batch_stats_counts() -> None:
    stats = TrafficRouter("1").variant_stats(CHAMPION)
    stats.record_batch(
        ["a", "b", "a"],
        ["Regular", "Regular", "Casual"],
        np.array([True, False, False]),
    )
    assert stats.requests == 3
    assert stats.flagged == 1
    assert stats.segments == {"Regular": 2, "Casual": 1}
    assert stats.players == {"a", "b"}
