"""Canary guard: roll a worse challenger back without waiting for a person.

While a canary runs, :class:`CanaryGuard` reads per-variant statistics from
any object with a ``variant_stats()`` method (:class:`CanaryStatsSource`)
and compares the challenger with the champion. When the challenger is worse
beyond a threshold, the guard calls the rollback action, records the reason
on the challenger's model version in the registry, logs it and increments
``canary_rollbacks_total``. Promotion after a clean canary happens only when
``auto_promote`` is set.

Checks (all thresholds in :class:`CanaryThresholds`)
---------------------------------------------------
- error rate: the challenger's rate exceeds the champion's by more than
  ``max_error_rate_increase`` (absolute) and a one-sided two-proportion
  z-test gives ``p < error_rate_p_value``;
- latency p95: the challenger's p95 is more than ``max_latency_p95_ratio``
  times the champion's and at least ``min_latency_p95_increase_ms`` higher
  (the absolute floor keeps sub-millisecond noise from tripping the ratio);
- prediction distribution: PSI between the two segment mixes, each sorted by
  share, exceeds ``max_segment_mix_psi``. Two models number and name their
  segments independently, so the shapes are compared rather than the labels;
  this catches a challenger that puts everyone in one segment;
- responsible-gambling flags: the shares of flagged players differ by more
  than ``max_rg_flag_share_change`` in either direction (too few flags miss
  players at risk, too many withhold offers from everyone).

No check runs until both variants have ``min_samples`` requests.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

from crmbet.monitoring import lifecycle_metrics
from crmbet.monitoring.ab_eval import two_proportion_z_test
from crmbet.monitoring.drift import population_stability_index

if TYPE_CHECKING:
    from crmbet.models.registry import ModelRegistry

logger = logging.getLogger(__name__)

Action = Literal["wait", "continue", "rollback", "promote"]
State = Literal["idle", "watching", "rolled_back", "promoted", "stopped"]


@dataclass(frozen=True)
class VariantStats:
    """Traffic statistics of one variant since the canary started.

    Attributes
    ----------
    requests:
        Requests served, failed ones included.
    errors:
        Requests that failed.
    latencies_ms:
        Latency samples in milliseconds (a recent window is enough).
    segment_counts:
        Predictions per segment name or id.
    rg_flagged:
        Predictions with the responsible-gambling flag set.
    model_version:
        Registered version serving this variant, when known.
    """

    requests: int
    errors: int = 0
    latencies_ms: Sequence[float] = ()
    segment_counts: Mapping[str, int] = field(default_factory=dict)
    rg_flagged: int = 0
    model_version: str | None = None

    @property
    def error_rate(self) -> float:
        """Failed share of requests; 0.0 without requests."""
        return self.errors / self.requests if self.requests else 0.0

    @property
    def latency_p95_ms(self) -> float | None:
        """95th percentile latency, or None without samples."""
        if len(self.latencies_ms) == 0:
            return None
        return float(np.percentile(np.asarray(self.latencies_ms, dtype=np.float64), 95))

    @property
    def rg_flag_share(self) -> float:
        """Share of successful predictions with the responsible-gambling flag."""
        served = sum(self.segment_counts.values())
        return self.rg_flagged / served if served else 0.0


@runtime_checkable
class CanaryStatsSource(Protocol):
    """Anything that returns per-variant statistics by variant name."""

    def variant_stats(self) -> Mapping[str, VariantStats]:
        """Return the statistics of every variant."""
        ...


@dataclass(frozen=True)
class CanaryThresholds:
    """Limits beyond which the challenger counts as worse (see module docstring)."""

    min_samples: int = 200
    max_error_rate_increase: float = 0.02
    error_rate_p_value: float = 0.01
    max_latency_p95_ratio: float = 1.5
    min_latency_p95_increase_ms: float = 5.0
    max_segment_mix_psi: float = 0.25
    max_rg_flag_share_change: float = 0.05
    promote_after_samples: int = 2_000

    def __post_init__(self) -> None:
        if self.min_samples < 1:
            raise ValueError(f"min_samples={self.min_samples} must be at least 1")
        if self.promote_after_samples < self.min_samples:
            raise ValueError(
                f"promote_after_samples={self.promote_after_samples} must be at least "
                f"min_samples={self.min_samples}"
            )
        if self.max_latency_p95_ratio < 1.0:
            raise ValueError(
                f"max_latency_p95_ratio={self.max_latency_p95_ratio} must be >= 1"
            )


@dataclass(frozen=True)
class CanaryCheck:
    """One comparison of challenger and champion."""

    metric: str
    champion_value: float | None
    challenger_value: float | None
    threshold: float
    failed: bool
    detail: str = ""


@dataclass(frozen=True)
class CanaryDecision:
    """Decision of one evaluation, with its reason and the checks behind it."""

    action: Action
    reason: str
    at: str
    champion_version: str | None
    challenger_version: str | None
    checks: tuple[CanaryCheck, ...] = ()

    @property
    def failed_checks(self) -> list[CanaryCheck]:
        """Checks the challenger failed."""
        return [check for check in self.checks if check.failed]

    def to_dict(self) -> dict[str, object]:
        """Return the decision as plain data."""
        return asdict(self)


def sorted_share_psi(
    champion_counts: Mapping[str, int], challenger_counts: Mapping[str, int]
) -> float:
    """Return the PSI between two segment mixes sorted by share, padded with zeros.

    Examples
    --------
    >>> round(sorted_share_psi({"a": 50, "b": 50}, {"x": 50, "y": 50}), 6)
    0.0
    """
    first = sorted(champion_counts.values(), reverse=True)
    second = sorted(challenger_counts.values(), reverse=True)
    size = max(len(first), len(second), 1)
    first_shares = np.zeros(size)
    second_shares = np.zeros(size)
    first_shares[: len(first)] = first
    second_shares[: len(second)] = second
    first_shares /= max(first_shares.sum(), 1.0)
    second_shares /= max(second_shares.sum(), 1.0)
    return population_stability_index(first_shares, second_shares)


def compare_variants(
    champion: VariantStats, challenger: VariantStats, thresholds: CanaryThresholds
) -> list[CanaryCheck]:
    """Run every check of the module docstring on two variants."""
    checks = []
    test = two_proportion_z_test(
        champion.errors,
        champion.requests,
        challenger.errors,
        challenger.requests,
        alternative="greater",
    )
    increase = challenger.error_rate - champion.error_rate
    checks.append(
        CanaryCheck(
            metric="error_rate",
            champion_value=champion.error_rate,
            challenger_value=challenger.error_rate,
            threshold=thresholds.max_error_rate_increase,
            failed=increase > thresholds.max_error_rate_increase
            and test.p_value < thresholds.error_rate_p_value,
            detail=f"increase {increase:+.4f}, one-sided p={test.p_value:.3g}",
        )
    )

    base, new = champion.latency_p95_ms, challenger.latency_p95_ms
    slow = (
        base is not None
        and new is not None
        and new > base * thresholds.max_latency_p95_ratio
        and new - base >= thresholds.min_latency_p95_increase_ms
    )
    checks.append(
        CanaryCheck(
            metric="latency_p95_ms",
            champion_value=base,
            challenger_value=new,
            threshold=thresholds.max_latency_p95_ratio,
            failed=bool(slow),
            detail=f"ratio limit {thresholds.max_latency_p95_ratio}, absolute floor "
            f"{thresholds.min_latency_p95_increase_ms} ms",
        )
    )

    psi = sorted_share_psi(champion.segment_counts, challenger.segment_counts)
    checks.append(
        CanaryCheck(
            metric="segment_mix_psi",
            champion_value=0.0,
            challenger_value=psi,
            threshold=thresholds.max_segment_mix_psi,
            failed=psi > thresholds.max_segment_mix_psi,
            detail=f"largest segment share: champion "
            f"{_largest_share(champion.segment_counts):.3f}, challenger "
            f"{_largest_share(challenger.segment_counts):.3f}",
        )
    )

    change = challenger.rg_flag_share - champion.rg_flag_share
    checks.append(
        CanaryCheck(
            metric="rg_flag_share",
            champion_value=champion.rg_flag_share,
            challenger_value=challenger.rg_flag_share,
            threshold=thresholds.max_rg_flag_share_change,
            failed=abs(change) > thresholds.max_rg_flag_share_change,
            detail=f"change {change:+.4f}",
        )
    )
    return checks


def _largest_share(counts: Mapping[str, int]) -> float:
    total = sum(counts.values())
    return max(counts.values()) / total if total else 0.0


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def _call(
    action: Callable[[CanaryDecision], object], decision: CanaryDecision
) -> None:
    result = action(decision)
    if inspect.isawaitable(result):
        await result


class CanaryGuard:
    """Background task that watches a canary and rolls it back when it is worse.

    Parameters
    ----------
    stats_source:
        Returns :class:`VariantStats` per variant name.
    rollback_action:
        Called (sync or async) with the decision; must stop routing requests
        to the challenger.
    thresholds:
        Limits of the checks; :class:`CanaryThresholds` defaults when omitted.
    registry:
        Where the rollback reason is recorded, as tags on the challenger's
        model version; skipped when None or the version is unknown.
    promote_action:
        Called (sync or async) after a clean canary when ``auto_promote``.
    auto_promote:
        Promote once both variants reach ``promote_after_samples`` without a
        failed check. Off by default: a person decides.
    interval_s:
        Seconds between evaluations of the background task.
    """

    def __init__(
        self,
        stats_source: CanaryStatsSource,
        rollback_action: Callable[[CanaryDecision], object | Awaitable[object]],
        *,
        thresholds: CanaryThresholds | None = None,
        registry: ModelRegistry | None = None,
        promote_action: Callable[[CanaryDecision], object | Awaitable[object]]
        | None = None,
        auto_promote: bool = False,
        interval_s: float = 5.0,
        champion_variant: str = "champion",
        challenger_variant: str = "challenger",
    ) -> None:
        if auto_promote and promote_action is None:
            raise ValueError(
                "auto_promote=True needs a promote_action that routes all "
                "traffic to the challenger"
            )
        if interval_s <= 0:
            raise ValueError(f"interval_s={interval_s} must be positive")
        self.stats_source = stats_source
        self.rollback_action = rollback_action
        self.promote_action = promote_action
        self.thresholds = thresholds or CanaryThresholds()
        self.registry = registry
        self.auto_promote = auto_promote
        self.interval_s = interval_s
        self.champion_variant = champion_variant
        self.challenger_variant = challenger_variant
        self.state: State = "idle"
        self.last_decision: CanaryDecision | None = None
        self._task: asyncio.Task[None] | None = None

    # Evaluation ---------------------------------------------------------------

    def evaluate(self) -> CanaryDecision:
        """Compare the variants now and return the decision; acts on nothing."""
        stats = self.stats_source.variant_stats()
        champion = stats.get(self.champion_variant, VariantStats(requests=0))
        challenger = stats.get(self.challenger_variant, VariantStats(requests=0))
        versions = {
            "champion_version": champion.model_version,
            "challenger_version": challenger.model_version,
        }
        fewest = min(champion.requests, challenger.requests)

        if fewest < self.thresholds.min_samples:
            return CanaryDecision(
                action="wait",
                at=_now(),
                **versions,
                reason=f"{fewest} requests on the smaller variant, "
                f"{self.thresholds.min_samples} needed",
            )

        checks = tuple(compare_variants(champion, challenger, self.thresholds))
        failed = [check for check in checks if check.failed]
        if failed:
            reason = "; ".join(
                f"{c.metric}: challenger {_format(c.challenger_value)} vs champion "
                f"{_format(c.champion_value)} (threshold {c.threshold}, {c.detail})"
                for c in failed
            )
            return CanaryDecision(
                action="rollback", reason=reason, at=_now(), checks=checks, **versions
            )
        if self.auto_promote and fewest >= self.thresholds.promote_after_samples:
            return CanaryDecision(
                action="promote",
                at=_now(),
                checks=checks,
                **versions,
                reason=f"every check passed on {fewest} requests per variant",
            )
        return CanaryDecision(
            action="continue",
            reason="every check passed",
            at=_now(),
            checks=checks,
            **versions,
        )

    async def check(self) -> CanaryDecision:
        """Evaluate once and act on the decision (roll back or promote)."""
        decision = self.evaluate()
        self.last_decision = decision
        if decision.action == "rollback":
            await self._roll_back(decision)
        elif decision.action == "promote":
            await self._promote(decision)
        return decision

    async def _roll_back(self, decision: CanaryDecision) -> None:
        logger.warning(
            "rolling back challenger %s (champion %s): %s",
            decision.challenger_version,
            decision.champion_version,
            decision.reason,
        )
        await _call(self.rollback_action, decision)
        for check in decision.failed_checks:
            lifecycle_metrics.CANARY_ROLLBACKS.labels(check.metric).inc()
        # The traffic is already back on the champion. The state changes only
        # once the reason is in the registry, and stopping the guard must not
        # cut that write short.
        await asyncio.shield(asyncio.to_thread(self._record_rollback, decision))
        self.state = "rolled_back"

    async def _promote(self, decision: CanaryDecision) -> None:
        assert self.promote_action is not None  # checked in __init__
        logger.info(
            "promoting challenger %s after a clean canary: %s",
            decision.challenger_version,
            decision.reason,
        )
        await _call(self.promote_action, decision)
        lifecycle_metrics.CANARY_PROMOTIONS.inc()
        await asyncio.shield(asyncio.to_thread(self._record_promotion, decision))
        self.state = "promoted"

    # Registry -----------------------------------------------------------------

    def _tag(self, version: str | None, tags: Mapping[str, str]) -> bool:
        if self.registry is None or version is None:
            logger.warning(
                "canary outcome not recorded in a registry (registry=%s, "
                "challenger version=%s)",
                self.registry is not None,
                version,
            )
            return False
        from mlflow.exceptions import MlflowException

        try:
            for key, value in tags.items():
                self.registry.client.set_model_version_tag(
                    self.registry.model_name, version, key, value[:5000]
                )
        except MlflowException as error:
            logger.error(
                "could not record the canary outcome on version %s: %s", version, error
            )
            return False
        return True

    def _record_rollback(self, decision: CanaryDecision) -> None:
        first = decision.failed_checks[0]
        self._tag(
            decision.challenger_version,
            {
                "canary_status": "rolled_back",
                "rollback_reason": decision.reason,
                "rollback_metric": ",".join(c.metric for c in decision.failed_checks),
                "rollback_champion_value": _format(first.champion_value),
                "rollback_challenger_value": _format(first.challenger_value),
                "rollback_at": decision.at,
                "rollback_champion_version": decision.champion_version or "unknown",
            },
        )
        if self.registry is not None and decision.challenger_version is not None:
            from crmbet.models.registry import CHALLENGER

            if self.registry.alias_version(CHALLENGER) == decision.challenger_version:
                # The alias would otherwise let the next deployment pick the
                # rolled-back version again.
                self.registry.delete_alias(CHALLENGER)

    def _record_promotion(self, decision: CanaryDecision) -> None:
        recorded = self._tag(
            decision.challenger_version,
            {
                "canary_status": "promoted",
                "promoted_at": decision.at,
                "promotion_reason": decision.reason,
            },
        )
        if recorded and self.registry is not None:
            from crmbet.models.registry import CHALLENGER, CHAMPION

            if decision.champion_version:
                self.registry.set_alias("previous_champion", decision.champion_version)
            self.registry.set_alias(CHAMPION, str(decision.challenger_version))
            self.registry.delete_alias(CHALLENGER)

    # Background task ------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the background task is alive."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start watching in a background task of the running event loop."""
        if self.running:
            return
        self.state = "watching"
        lifecycle_metrics.CANARY_ACTIVE.set(1)
        self._task = asyncio.create_task(self._run(), name="canary-guard")
        logger.info(
            "canary guard started: %s vs %s every %.1f s",
            self.challenger_variant,
            self.champion_variant,
            self.interval_s,
        )

    async def stop(self) -> None:
        """Stop the background task and wait for it to end."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self.state == "watching":
            self.state = "stopped"
        lifecycle_metrics.CANARY_ACTIVE.set(0)
        logger.info("canary guard stopped in state %s", self.state)

    async def _run(self) -> None:
        while self.state == "watching":
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A failing stats source must not kill the guard: it logs
                # and tries again at the next interval.
                logger.exception(
                    "canary guard evaluation failed; retrying in %.1f s",
                    self.interval_s,
                )
            if self.state != "watching":
                break
            await asyncio.sleep(self.interval_s)
        lifecycle_metrics.CANARY_ACTIVE.set(0)


def _format(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"
