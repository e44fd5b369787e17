"""Traffic routing between the champion and a challenger, with per-variant stats.

A player's variant depends only on a stable hash of the pseudonymised player
id and the experiment's salt, so the same player always gets the same model
while the split is unchanged, and a canary at fraction ``f`` reaches about
``f`` of the distinct players. Raising the fraction keeps every player who
already had the challenger on it, because a player is in the challenger
slice when their bucket is below the fraction.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

CHAMPION = "champion"
CHALLENGER = "challenger"

Mode = Literal["single", "canary", "ab_test"]


def bucket(player_id: str, salt: str = "") -> float:
    """Return a stable number in [0, 1) for a player id (BLAKE2b, first 8 bytes)."""
    digest = hashlib.blake2b(f"{salt}:{player_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass
class VariantStats:
    """Running statistics of one variant, read by dashboards and a canary guard."""

    model_version: str | None
    requests: int = 0
    errors: int = 0
    flagged: int = 0
    segments: Counter[str] = field(default_factory=Counter)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    players: set[str] = field(default_factory=set)

    #: Distinct players are counted exactly up to this many, then no longer grow.
    MAX_TRACKED_PLAYERS = 100_000

    def record(
        self, player_id: str, segment: str, flagged: bool, latency_ms: float
    ) -> None:
        """Count one served prediction."""
        self.requests += 1
        self.flagged += int(flagged)
        self.segments[segment] += 1
        self.latencies_ms.append(latency_ms)
        if len(self.players) < self.MAX_TRACKED_PLAYERS:
            self.players.add(player_id)

    def record_batch(
        self,
        player_ids: list[str],
        segments: Iterable[str] | Mapping[str, int],
        flags: np.ndarray,
    ) -> None:
        """Count the predictions of one batch request (no latency samples).

        ``segments`` contains each player's segment, or the count per segment.
        """
        self.requests += len(player_ids)
        self.flagged += int(np.count_nonzero(flags))
        self.segments.update(segments)
        room = self.MAX_TRACKED_PLAYERS - len(self.players)
        if room > 0:
            self.players.update(player_ids[:room])

    def summary(self) -> dict[str, object]:
        """Return counts, error rate, latency percentiles and segment shares."""
        latencies = np.fromiter(self.latencies_ms, dtype=np.float64)
        answered = max(self.requests, 1)
        return {
            "model_version": self.model_version,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.errors / max(self.requests + self.errors, 1),
            "distinct_players": len(self.players),
            "responsible_gambling_flag_share": self.flagged / answered,
            "latency_ms_p50": float(np.percentile(latencies, 50))
            if latencies.size
            else None,
            "latency_ms_p99": float(np.percentile(latencies, 99))
            if latencies.size
            else None,
            "segment_share": {name: n / answered for name, n in self.segments.items()},
        }


class TrafficRouter:
    """Chooses the variant of each player and keeps per-variant statistics.

    Examples
    --------
    >>> router = TrafficRouter("1")
    >>> router.start("canary", "2", 0.5, salt="s")
    >>> router.route("player") in ("champion", "challenger")
    True
    """

    def __init__(self, champion_version: str | None) -> None:
        self.mode: Mode = "single"
        self.traffic = 0.0
        self.salt = ""
        self.stats: dict[str, VariantStats] = {CHAMPION: VariantStats(champion_version)}
        self._lock = threading.Lock()

    def start(
        self, mode: Mode, challenger_version: str, traffic: float, salt: str
    ) -> None:
        """Send ``traffic`` of the players to the challenger; stats start afresh."""
        if not 0.0 <= traffic <= 1.0:
            raise ValueError(
                f"traffic={traffic} is invalid; use a fraction between 0 and 1"
            )
        with self._lock:
            self.mode, self.traffic, self.salt = mode, traffic, salt
            self.stats = {
                CHAMPION: VariantStats(self.stats[CHAMPION].model_version),
                CHALLENGER: VariantStats(challenger_version),
            }

    def stop(self, champion_version: str | None) -> None:
        """Send every player to the champion."""
        with self._lock:
            self.mode, self.traffic, self.salt = "single", 0.0, ""
            self.stats = {CHAMPION: VariantStats(champion_version)}

    def route(self, player_id: str) -> str:
        """Return the variant that serves ``player_id``."""
        if self.mode == "single" or self.traffic <= 0.0:
            return CHAMPION
        return CHALLENGER if bucket(player_id, self.salt) < self.traffic else CHAMPION

    def variant_stats(self, variant: str) -> VariantStats:
        """Return the statistics of a variant, the champion's if it is gone."""
        return self.stats.get(variant) or self.stats[CHAMPION]

    def summary(self) -> dict[str, object]:
        """Return the mode, traffic fraction and every variant's statistics."""
        return {
            "mode": self.mode,
            "challenger_traffic": self.traffic,
            "variants": {name: stats.summary() for name, stats in self.stats.items()},
        }
