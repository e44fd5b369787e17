"""A/B evaluation of campaign outcomes per model variant.

Each outcome event records which variant served a player and whether the
player converted (took up the campaign, deposited, returned).
:class:`ABEvaluator` counts each player once, in the variant of their first
outcome, as converted when any of their outcomes converted, and
:meth:`ABEvaluator.evaluate` compares two variants with a two-sided
two-proportion z-test (pooled variance).

A result is only called significant when each variant also has the minimum
sample size of :func:`minimum_sample_size`: the players per variant needed
to detect ``minimum_detectable_effect`` (an absolute difference in
conversion rate) at significance ``alpha`` with probability ``power``:

    n = (z_{1-alpha/2} * sqrt(2 p (1 - p))
         + z_{power} * sqrt(p1 (1 - p1) + p2 (1 - p2)))^2 / (p2 - p1)^2

with ``p1`` the baseline rate, ``p2 = p1 + effect`` and ``p`` their mean.
Checking the p-value before that size is reached ("peeking") inflates
false positives, so such results are reported as ``insufficient_samples``.

Examples
--------
>>> minimum_sample_size(0.10, 0.02)
3841
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import polars as pl
from scipy import stats

from crmbet.errors import CrmbetError

logger = logging.getLogger(__name__)

Verdict = Literal["insufficient_samples", "no_difference", "better", "worse"]


class OutcomeError(CrmbetError, ValueError):
    """Raised when an outcome event lacks a field or has an invalid value."""


@dataclass(frozen=True)
class ProportionTest:
    """Result of a two-proportion z-test of ``b`` against ``a``."""

    rate_a: float
    rate_b: float
    difference: float
    z: float
    p_value: float


def two_proportion_z_test(
    successes_a: int,
    trials_a: int,
    successes_b: int,
    trials_b: int,
    alternative: Literal["two-sided", "greater"] = "two-sided",
) -> ProportionTest:
    """Test whether the rate of ``b`` differs from (or exceeds) the rate of ``a``.

    Uses the pooled standard error. With no trials on a side, or a pooled
    rate of 0 or 1, there is no evidence of a difference: ``z = 0`` and
    ``p = 1``.

    Examples
    --------
    >>> round(two_proportion_z_test(100, 1000, 150, 1000).p_value, 4)
    0.0007
    """
    for name, value in (
        ("successes_a", successes_a),
        ("trials_a", trials_a),
        ("successes_b", successes_b),
        ("trials_b", trials_b),
    ):
        if value < 0:
            raise ValueError(f"{name}={value} must not be negative")
    if successes_a > trials_a or successes_b > trials_b:
        raise ValueError(
            f"successes ({successes_a}, {successes_b}) exceed trials "
            f"({trials_a}, {trials_b}); count each player at most once"
        )
    rate_a = successes_a / trials_a if trials_a else 0.0
    rate_b = successes_b / trials_b if trials_b else 0.0
    if not trials_a or not trials_b:
        return ProportionTest(rate_a, rate_b, rate_b - rate_a, 0.0, 1.0)
    pooled = (successes_a + successes_b) / (trials_a + trials_b)
    error = math.sqrt(pooled * (1.0 - pooled) * (1.0 / trials_a + 1.0 / trials_b))
    if error == 0.0:
        return ProportionTest(rate_a, rate_b, rate_b - rate_a, 0.0, 1.0)
    z = (rate_b - rate_a) / error
    if alternative == "greater":
        p_value = float(stats.norm.sf(z))
    else:
        p_value = float(2.0 * stats.norm.sf(abs(z)))
    return ProportionTest(rate_a, rate_b, rate_b - rate_a, float(z), p_value)


def minimum_sample_size(
    baseline_rate: float,
    minimum_detectable_effect: float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int:
    """Return the players needed per variant for a two-sided two-proportion test."""
    if not 0.0 < baseline_rate < 1.0:
        raise ValueError(f"baseline_rate={baseline_rate} must be in (0, 1)")
    target = baseline_rate + minimum_detectable_effect
    if minimum_detectable_effect == 0.0 or not 0.0 < target < 1.0:
        raise ValueError(
            f"minimum_detectable_effect={minimum_detectable_effect} must be non-zero "
            "and "
            f"keep baseline_rate + effect inside (0, 1)"
        )
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"alpha={alpha} and power={power} must be in (0, 1)")
    z_alpha = stats.norm.ppf(1.0 - alpha / 2.0)
    z_power = stats.norm.ppf(power)
    mean = (baseline_rate + target) / 2.0
    numerator = (
        z_alpha * math.sqrt(2.0 * mean * (1.0 - mean))
        + z_power
        * math.sqrt(baseline_rate * (1.0 - baseline_rate) + target * (1.0 - target))
    ) ** 2
    return math.ceil(numerator / minimum_detectable_effect**2)


@dataclass(frozen=True)
class ABResult:
    """Comparison of a treatment variant with a control variant."""

    control: str
    treatment: str
    control_players: int
    treatment_players: int
    control_conversions: int
    treatment_conversions: int
    control_rate: float
    treatment_rate: float
    difference: float
    z: float
    p_value: float
    alpha: float
    minimum_sample_size: int
    verdict: Verdict

    def to_dict(self) -> dict[str, object]:
        """Return the result as plain data."""
        return asdict(self)


class ABEvaluator:
    """Collects outcome events per variant and tests the difference.

    Parameters
    ----------
    baseline_rate:
        Expected conversion rate of the control, for the sample size.
    minimum_detectable_effect:
        Smallest absolute difference in conversion rate worth detecting.
    alpha, power:
        Significance level and power of the test.
    """

    def __init__(
        self,
        *,
        baseline_rate: float = 0.10,
        minimum_detectable_effect: float = 0.02,
        alpha: float = 0.05,
        power: float = 0.8,
    ) -> None:
        self.alpha = alpha
        self.required = minimum_sample_size(
            baseline_rate, minimum_detectable_effect, alpha, power
        )
        self._variant: dict[str, str] = {}
        self._converted: dict[str, bool] = {}

    def record(self, variant: str, player_id: str, converted: bool) -> None:
        """Record one outcome; a player stays in the variant of their first exposure."""
        assigned = self._variant.setdefault(player_id, variant)
        if assigned != variant:
            logger.debug(
                "player %s seen in %s after %s; kept in %s",
                player_id,
                variant,
                assigned,
                assigned,
            )
            return
        self._converted[player_id] = self._converted.get(player_id, False) or bool(
            converted
        )

    def record_event(self, event: Mapping[str, object]) -> None:
        """Record an outcome event with ``variant``, ``player_id`` and ``converted``."""
        missing = [
            key for key in ("variant", "player_id", "converted") if key not in event
        ]
        if missing:
            raise OutcomeError(
                f"outcome event lacks {missing}; send variant, player_id and converted "
                f"(got keys {sorted(event)})"
            )
        converted = event["converted"]
        if not isinstance(converted, bool | int) or converted not in (0, 1):
            raise OutcomeError(
                f"converted={converted!r} is invalid; send true or false"
            )
        self.record(str(event["variant"]), str(event["player_id"]), bool(converted))

    def record_message(self, payload: bytes | str) -> None:
        """Record one outcome event sent as JSON (an HTTP body or a stream message)."""
        try:
            event = json.loads(payload)
        except json.JSONDecodeError as error:
            raise OutcomeError(
                f"outcome message is not valid JSON ({error}); send an object with "
                "variant, player_id and converted"
            ) from error
        if not isinstance(event, dict):
            raise OutcomeError(
                f"outcome message is a JSON {type(event).__name__}; send an object "
                "with variant, player_id and converted"
            )
        self.record_event(event)

    def record_events(self, events: Iterable[Mapping[str, object]]) -> None:
        """Record many outcome events."""
        for event in events:
            self.record_event(event)

    def record_frame(self, frame: pl.DataFrame) -> None:
        """Record a table with columns ``variant``, ``player_id`` and ``converted``."""
        self.record_events(
            frame.select("variant", "player_id", "converted").iter_rows(named=True)
        )

    def counts(self) -> dict[str, tuple[int, int]]:
        """Return players and conversions per variant."""
        totals: dict[str, list[int]] = {}
        for player, variant in self._variant.items():
            row = totals.setdefault(variant, [0, 0])
            row[0] += 1
            row[1] += int(self._converted.get(player, False))
        return {variant: (row[0], row[1]) for variant, row in totals.items()}

    def evaluate(
        self, control: str = "champion", treatment: str = "challenger"
    ) -> ABResult:
        """Compare ``treatment`` with ``control``."""
        counts = self.counts()
        control_players, control_conversions = counts.get(control, (0, 0))
        treatment_players, treatment_conversions = counts.get(treatment, (0, 0))
        test = two_proportion_z_test(
            control_conversions,
            control_players,
            treatment_conversions,
            treatment_players,
        )
        verdict: Verdict
        if min(control_players, treatment_players) < self.required:
            verdict = "insufficient_samples"
        elif test.p_value >= self.alpha:
            verdict = "no_difference"
        else:
            verdict = "better" if test.difference > 0 else "worse"
        return ABResult(
            control=control,
            treatment=treatment,
            control_players=control_players,
            treatment_players=treatment_players,
            control_conversions=control_conversions,
            treatment_conversions=treatment_conversions,
            control_rate=test.rate_a,
            treatment_rate=test.rate_b,
            difference=test.difference,
            z=test.z,
            p_value=test.p_value,
            alpha=self.alpha,
            minimum_sample_size=self.required,
            verdict=verdict,
        )
