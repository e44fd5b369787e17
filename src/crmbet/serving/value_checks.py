"""Range checks on feature values, shared by every prediction interface.

The Python predictor, the HTTP bodies and the Open Inference Protocol apply
the same rules, so a value rejected in one is rejected in all. Values must
be finite and at least 0 unless the feature can be negative. Shares and
rates must be at most 1. NaN (or null in JSON) marks a missing value and
passes.
"""

from __future__ import annotations

import numpy as np

#: Features that can be negative; every other feature is a count, amount,
#: share or duration and must be at least 0.
SIGNED_FEATURES = frozenset({"net_loss", "net_loss_7d_per_day"})

#: Shares and rates, which lie between 0 and 1.
UNIT_INTERVAL_FEATURES = frozenset(
    {
        "win_rate",
        "late_night_share",
        "evening_share",
        "weekend_share",
        "sports_share",
        "casino_share",
        "crash_share",
        "bonus_share",
        "cashback_share",
        "crash_cashout_rate",
        "loss_chasing_rate",
    }
)

#: Rounding slack above 1 for shares computed by other systems.
_UNIT_SLACK = 1e-9


def value_problem(name: str, value: float) -> str | None:
    """Return why ``value`` cannot be feature ``name``, or None when it can."""
    if value != value:
        return None
    if value in (float("inf"), float("-inf")):
        return f"{name}={value!r} is not finite; send a finite number, or null"
    if value < 0 and name not in SIGNED_FEATURES:
        return (
            f"{name}={value!r} is negative; it is a count, amount, share or "
            "duration, so send 0 or more"
        )
    if name in UNIT_INTERVAL_FEATURES and value > 1 + _UNIT_SLACK:
        return (
            f"{name}={value!r} is above 1; it is a share, so send a value from 0 to 1"
        )
    return None


def column_problems(
    name: str, values: np.ndarray, limit: int = 10
) -> list[tuple[int, str]]:
    """Return up to ``limit`` (row, reason) pairs of invalid values in a column."""
    bad = np.isinf(values)
    if name not in SIGNED_FEATURES:
        bad |= values < 0
    if name in UNIT_INTERVAL_FEATURES:
        bad |= values > 1 + _UNIT_SLACK
    rows = np.flatnonzero(bad)[:limit].tolist()
    return [(row, value_problem(name, float(values[row])) or "") for row in rows]
