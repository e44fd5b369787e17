"""A minimal in-process canary router that the canary guard can watch.

It sends a fixed share of players (chosen by a stable hash of the player id,
so a player keeps one variant) to the challenger, records per-variant
statistics in the shape :class:`~crmbet.monitoring.canary_guard.CanaryGuard`
reads, and honours rollback and promotion. It serves embedded use and tests;
the HTTP service routes with its own serving system through the same
``variant_stats()`` protocol.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any, Protocol

from crmbet.monitoring.canary_guard import CanaryDecision, VariantStats

logger = logging.getLogger(__name__)

CHAMPION_VARIANT = "champion"
CHALLENGER_VARIANT = "challenger"


class Predictor(Protocol):
    """Predictor interface of the router; ``SegmentPredictor`` implements it."""

    def predict_features(
        self, features: Mapping[str, float], player_id: str | None = None
    ) -> Any:
        """Return a prediction with ``segment`` and ``responsible_gambling_flag``."""
        ...


class _Recorder:
    def __init__(self, version: str | None, latency_window: int) -> None:
        self.version = version
        self.requests = 0
        self.errors = 0
        self.latencies: deque[float] = deque(maxlen=latency_window)
        self.segments: Counter[str] = Counter()
        self.flagged = 0

    def snapshot(self) -> VariantStats:
        return VariantStats(
            requests=self.requests,
            errors=self.errors,
            latencies_ms=tuple(self.latencies),
            segment_counts=dict(self.segments),
            rg_flagged=self.flagged,
            model_version=self.version,
        )


class InProcessCanaryRouter:
    """Routes each player to the champion or, for a share of players, the challenger.

    Parameters
    ----------
    champion, challenger:
        Predictors of the two variants; the challenger may be None (no canary).
    challenger_share:
        Share of players, in [0, 1], sent to the challenger.
    champion_version, challenger_version:
        Registered versions, reported with the statistics; read from the
        predictors' ``version`` attribute when omitted.
    latency_window:
        Latency samples kept per variant for the p95.
    """

    def __init__(
        self,
        champion: Predictor,
        challenger: Predictor | None = None,
        *,
        challenger_share: float = 0.1,
        champion_version: str | None = None,
        challenger_version: str | None = None,
        latency_window: int = 5_000,
    ) -> None:
        if not 0.0 <= challenger_share <= 1.0:
            raise ValueError(f"challenger_share={challenger_share} must be in [0, 1]")
        self._lock = threading.Lock()
        self._champion = champion
        self._challenger = challenger
        self.challenger_share = challenger_share if challenger is not None else 0.0
        self._latency_window = latency_window
        self._stats = {
            CHAMPION_VARIANT: _Recorder(
                champion_version or getattr(champion, "version", None), latency_window
            ),
            CHALLENGER_VARIANT: _Recorder(
                challenger_version or getattr(challenger, "version", None),
                latency_window,
            ),
        }

    def route(self, player_id: str) -> str:
        """Return the variant that serves ``player_id``."""
        if self._challenger is None or self.challenger_share == 0.0:
            return CHAMPION_VARIANT
        bucket = zlib.crc32(player_id.encode()) % 10_000
        return (
            CHALLENGER_VARIANT
            if bucket < self.challenger_share * 10_000
            else CHAMPION_VARIANT
        )

    def predict(self, features: Mapping[str, float], player_id: str) -> tuple[str, Any]:
        """Serve one player and return the variant used with its prediction."""
        with self._lock:
            variant = self.route(player_id)
            predictor = (
                self._challenger if variant == CHALLENGER_VARIANT else self._champion
            )
        recorder = self._stats[variant]
        start = time.perf_counter()
        try:
            prediction = predictor.predict_features(features, player_id=player_id)
        except Exception:
            with self._lock:
                recorder.requests += 1
                recorder.errors += 1
            raise
        latency_ms = (time.perf_counter() - start) * 1000.0
        with self._lock:
            recorder.requests += 1
            recorder.latencies.append(latency_ms)
            recorder.segments[str(prediction.segment)] += 1
            recorder.flagged += bool(prediction.responsible_gambling_flag)
        return variant, prediction

    def variant_stats(self) -> dict[str, VariantStats]:
        """Return the statistics of both variants since the canary started."""
        with self._lock:
            return {name: recorder.snapshot() for name, recorder in self._stats.items()}

    def rollback(self, decision: CanaryDecision | None = None) -> None:
        """Stop sending players to the challenger."""
        with self._lock:
            self._challenger = None
            self.challenger_share = 0.0
        logger.warning(
            "canary rolled back: every player now goes to the champion (%s)",
            decision.reason if decision else "manual",
        )

    def promote(self, decision: CanaryDecision | None = None) -> None:
        """Make the challenger the champion for every player."""
        with self._lock:
            if self._challenger is None:
                raise RuntimeError("no challenger to promote; deploy one first")
            self._champion = self._challenger
            self._challenger = None
            self.challenger_share = 0.0
            self._stats[CHAMPION_VARIANT] = self._stats[CHALLENGER_VARIANT]
            self._stats[CHALLENGER_VARIANT] = _Recorder(None, self._latency_window)
        logger.info("canary promoted: the challenger serves every player")
