"""A/B evaluation: two-proportion z-test, sample size and outcome events."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from crmbet.monitoring.ab_eval import (
    ABEvaluator,
    OutcomeError,
    minimum_sample_size,
    two_proportion_z_test,
)


def test_z_squared_equals_chi_squared():
    result = two_proportion_z_test(120, 1000, 150, 1000)
    table = np.array([[120, 880], [150, 850]])
    chi2 = stats.chi2_contingency(table, correction=False)
    assert result.z**2 == pytest.approx(chi2.statistic)
    assert result.p_value == pytest.approx(chi2.pvalue)


def test_one_sided_halves_p():
    two = two_proportion_z_test(100, 1000, 130, 1000)
    one = two_proportion_z_test(100, 1000, 130, 1000, alternative="greater")
    assert one.p_value == pytest.approx(two.p_value / 2)


def test_no_trials_no_evidence():
    assert two_proportion_z_test(0, 0, 5, 10).p_value == 1.0


def test_successes_above_trials_rejected():
    with pytest.raises(ValueError, match="exceed trials"):
        two_proportion_z_test(11, 10, 1, 10)


def test_sample_size_reference_value():
    # 10% baseline, +2 points, alpha 0.05 two-sided, power 0.8: 3,841 per
    # variant by the pooled-variance normal approximation.
    assert minimum_sample_size(0.10, 0.02) == 3841


def test_sample_size_achieves_power():
    n = minimum_sample_size(0.10, 0.03)
    rng = np.random.default_rng(0)
    control = rng.binomial(n, 0.10, 2000)
    treatment = rng.binomial(n, 0.13, 2000)
    hits = [
        two_proportion_z_test(a, n, b, n).p_value < 0.05
        for a, b in zip(control, treatment, strict=True)
    ]
    assert np.mean(hits) == pytest.approx(0.8, abs=0.04)


def _simulate(
    evaluator: ABEvaluator, players: int, rate_a: float, rate_b: float
) -> None:
    rng = np.random.default_rng(1)
    for i in range(players):
        variant = "champion" if i % 2 == 0 else "challenger"
        rate = rate_a if variant == "champion" else rate_b
        evaluator.record_event(
            {
                "variant": variant,
                "player_id": f"p{i}",
                "converted": bool(rng.random() < rate),
            }
        )


def test_better_variant_detected():
    evaluator = ABEvaluator(baseline_rate=0.10, minimum_detectable_effect=0.05)
    _simulate(evaluator, 4000, 0.10, 0.16)
    assert evaluator.evaluate().verdict == "better"


def test_equal_variants_no_difference():
    evaluator = ABEvaluator(baseline_rate=0.10, minimum_detectable_effect=0.05)
    _simulate(evaluator, 4000, 0.10, 0.10)
    assert evaluator.evaluate().verdict == "no_difference"


def test_small_sample_insufficient():
    evaluator = ABEvaluator(baseline_rate=0.10, minimum_detectable_effect=0.02)
    _simulate(evaluator, 400, 0.10, 0.30)
    result = evaluator.evaluate()
    assert result.verdict == "insufficient_samples"
    assert result.minimum_sample_size == 3841


def test_player_counted_once():
    evaluator = ABEvaluator()
    evaluator.record("champion", "p1", False)
    evaluator.record("champion", "p1", True)
    evaluator.record("challenger", "p1", True)
    assert evaluator.counts() == {"champion": (1, 1)}


def test_event_without_variant_rejected():
    with pytest.raises(OutcomeError, match="variant"):
        ABEvaluator().record_event({"player_id": "p1", "converted": True})


def test_json_messages_recorded():
    evaluator = ABEvaluator()
    evaluator.record_message(
        b'{"variant": "challenger", "player_id": "p1", "converted": true}'
    )
    evaluator.record_message(
        '{"variant": "champion", "player_id": "p2", "converted": false}'
    )
    assert evaluator.counts() == {"challenger": (1, 1), "champion": (1, 0)}


def test_invalid_message_rejected():
    with pytest.raises(OutcomeError, match="not valid JSON"):
        ABEvaluator().record_message(b"converted=1")
    with pytest.raises(OutcomeError, match="JSON list"):
        ABEvaluator().record_message(b"[1, 2]")
