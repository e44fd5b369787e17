"""Rule-based risk scores: responsible-gambling harm, churn and bonus abuse.

Each score is in [0, 1] and computed from registered features, vectorised
over any number of players. The responsible-gambling markers and their
thresholds:

=======================  ==========================  =====================
marker                   feature                     full intensity at
=======================  ==========================  =====================
loss chasing             loss_chasing_rate           0.30 (30% of bets)
late-night play          late_night_share            0.60
rising deposits          deposit_frequency_trend     3.0 (intensity 0 at 1.0)
=======================  ==========================  =====================

A marker counts only for players with at least ``MIN_BETS_FOR_MARKERS``
bets, so one unlucky evening does not flag anyone; a missing bet count does
not discount the markers. The harm score is the mean of the three
intensities. A player is flagged, and gets no bonus or promotion, when any
marker reaches full intensity, when the harm score reaches
``HARM_FLAG_THRESHOLD``, or when a marker's feature is missing (absent or
NaN), because the markers of such a player cannot be ruled out. Features
computed from a player's state are never missing; a request that supplies
only some features can lack them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

MIN_BETS_FOR_MARKERS = 5
HARM_FLAG_THRESHOLD = 0.5
MARKER_FEATURES = {
    "loss_chasing": "loss_chasing_rate",
    "late_night_play": "late_night_share",
    "rising_deposits": "deposit_frequency_trend",
}
#: Reason given when a player is flagged because marker features are missing.
MISSING_MARKERS_REASON = "harm_markers_unknown"
RISK_FEATURES: tuple[str, ...] = (
    "bet_count",
    "loss_chasing_rate",
    "late_night_share",
    "deposit_frequency_trend",
    "deposit_count",
    "recency_days",
    "bets_per_day",
    "bonus_share",
    "withdrawal_ratio",
)


@dataclass
class RiskScores:
    """Risk scores and harm markers for a batch of players (arrays of one length)."""

    harm_score: np.ndarray
    harm_flag: np.ndarray
    markers: dict[str, np.ndarray]
    churn_risk: np.ndarray
    bonus_abuse_risk: np.ndarray
    #: True where a marker's feature was missing, so the markers are unknown.
    markers_unknown: np.ndarray | None = None

    def reasons(self, index: int) -> list[str]:
        """Return the names of the markers at full intensity for one player."""
        reasons = [
            name for name, values in self.markers.items() if values[index] >= 1.0
        ]
        if self.markers_unknown is not None and self.markers_unknown[index]:
            reasons.append(MISSING_MARKERS_REASON)
        return reasons


def withheld_note(reasons: list[str]) -> str:
    """Explain why bonus and promotion offers were removed for a flagged player."""
    if MISSING_MARKERS_REASON in reasons:
        return (
            "bonus and promotion offers withheld: responsible-gambling markers "
            f"cannot be scored without {', '.join(MARKER_FEATURES.values())}; "
            "send them, or the player id so that they come from the feature store"
        )
    return (
        "bonus and promotion offers withheld: responsible-gambling markers "
        f"{', '.join(reasons) or 'combined harm score'} are strong for this player"
    )


def _get(features: Mapping[str, np.ndarray], name: str, size: int) -> np.ndarray:
    value = features.get(name)
    if value is None:
        return np.zeros(size)
    return np.nan_to_num(np.asarray(value, dtype=np.float64), nan=0.0)


def _missing(features: Mapping[str, np.ndarray], name: str, size: int) -> np.ndarray:
    value = features.get(name)
    if value is None:
        return np.ones(size, dtype=bool)
    return np.isnan(np.asarray(value, dtype=np.float64))


def score_risk(
    features: Mapping[str, np.ndarray], size: int | None = None
) -> RiskScores:
    """Score every player in a column mapping of feature arrays.

    ``size`` is the number of players; it defaults to the length of the
    columns and is needed only when ``features`` is empty.

    Examples
    --------
    >>> import numpy as np
    >>> scores = score_risk({"bet_count": np.array([50.0, 50.0]),
    ...                      "loss_chasing_rate": np.array([0.4, 0.0]),
    ...                      "late_night_share": np.array([0.1, 0.1]),
    ...                      "deposit_frequency_trend": np.array([1.0, np.nan])})
    >>> scores.harm_flag.tolist()
    [True, True]
    >>> scores.reasons(0), scores.reasons(1)
    (['loss_chasing'], ['harm_markers_unknown'])
    """
    if size is None:
        size = max((np.asarray(v).size for v in features.values()), default=0)
    enough_bets = (_get(features, "bet_count", size) >= MIN_BETS_FOR_MARKERS) | (
        _missing(features, "bet_count", size)
    )
    unknown = np.zeros(size, dtype=bool)
    for name in MARKER_FEATURES.values():
        unknown |= _missing(features, name, size)
    markers = {
        "loss_chasing": np.clip(_get(features, "loss_chasing_rate", size) / 0.30, 0, 1),
        "late_night_play": np.clip(
            _get(features, "late_night_share", size) / 0.60, 0, 1
        ),
        "rising_deposits": np.where(
            _get(features, "deposit_count", size) >= 3,
            np.clip(
                (_get(features, "deposit_frequency_trend", size) - 1.0) / 2.0, 0, 1
            ),
            0.0,
        ),
    }
    markers = {
        name: np.where(enough_bets, values, 0.0) for name, values in markers.items()
    }
    stacked = np.vstack(list(markers.values())) if size else np.zeros((3, 0))
    harm_score = stacked.mean(axis=0)
    harm_flag = (
        (harm_score >= HARM_FLAG_THRESHOLD) | (stacked >= 1.0).any(axis=0) | unknown
    )

    # Churn: the chance the player has gone, from how long they have been away
    # compared with their usual gap between bets (at least one day).
    usual_gap = 1.0 / np.maximum(_get(features, "bets_per_day", size), 1e-6)
    usual_gap = np.maximum(usual_gap, 1.0)
    churn = 1.0 - np.exp(-_get(features, "recency_days", size) / (3.0 * usual_gap))

    # Bonus abuse: much of the money is bonus, and most deposits go back out.
    bonus_part = np.clip(_get(features, "bonus_share", size) / 0.3, 0, 1)
    cash_out = np.clip(_get(features, "withdrawal_ratio", size), 0, 1)
    bonus_abuse = bonus_part * cash_out
    return RiskScores(harm_score, harm_flag, markers, churn, bonus_abuse, unknown)
