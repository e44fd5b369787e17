"""Registered features: pure functions of the player state.

Each feature has a name, version, dtype, description and the state fields
it reads, so the registry doubles as the lineage graph from raw event fields
through state fields to features. The same NumPy function computes a
feature for one player online and for millions offline.

Examples
--------
>>> feature = FEATURES["avg_stake"]
>>> feature.inputs
('n_bets', 'stake_sum')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from crmbet.features.state import (
    DECAY_WINDOWS,
    LATE_NIGHT_HOURS,
    STATE_FIELDS,
)

#: Version of the feature set as a whole; bumped when any feature changes.
FEATURE_SCHEMA_VERSION = 1

Array = np.ndarray
StateColumns = Mapping[str, Array]


@dataclass(frozen=True)
class Feature:
    """A named, versioned function of the player state."""

    name: str
    version: int
    dtype: str
    description: str
    inputs: tuple[str, ...]
    compute: Callable[[StateColumns, Array], Array] = field(repr=False, compare=False)
    group: str = "activity"
    heavy_tailed: bool = False

    def raw_fields(self) -> tuple[str, ...]:
        """Return the raw event fields this feature depends on, sorted."""
        fields = {raw for name in self.inputs for raw in STATE_FIELDS[name].raw_fields}
        return tuple(sorted(fields))


def _ratio(numerator: Array, denominator: Array) -> Array:
    """Divide elementwise, returning 0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _aged(s: StateColumns, name: str, as_of: Array) -> Array:
    """Age a decayed sum from the player's newest event to ``as_of``."""
    window = name.rsplit("_d", 1)[1]
    age = np.maximum(as_of - s["last_ts"], 0.0)
    return s[name] * np.exp(-age / DECAY_WINDOWS[window])


def _trend(s: StateColumns, prefix: str, as_of: Array) -> Array:
    """Daily rate over the 7-day window divided by the 30-day one."""
    short = _aged(s, f"{prefix}_d7d", as_of) / 7.0
    long = _aged(s, f"{prefix}_d30d", as_of) / 30.0
    return _ratio(short, long)


def _hour_share(s: StateColumns, hours: Sequence[int]) -> Array:
    return _ratio(sum(s[f"hour_{hour:02d}"] for hour in hours), s["n_bets"])


def _hour_entropy(s: StateColumns) -> Array:
    counts = np.stack([s[f"hour_{hour:02d}"] for hour in range(24)], axis=-1)
    total = counts.sum(axis=-1, keepdims=True)
    p = _ratio(counts, np.broadcast_to(total, counts.shape))
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=-1) / np.log(24.0)


def _stake_cv(s: StateColumns) -> Array:
    mean = _ratio(s["stake_sum"], s["n_bets"])
    variance = np.maximum(_ratio(s["stake_sq_sum"], s["n_bets"]) - mean**2, 0.0)
    return _ratio(np.sqrt(variance), mean)


_HOURS = tuple(f"hour_{hour:02d}" for hour in range(24))
_LATE = tuple(f"hour_{hour:02d}" for hour in LATE_NIGHT_HOURS)
_EVENING = tuple(f"hour_{hour:02d}" for hour in range(18, 24))
_DAY = 86400.0


def _definitions() -> list[Feature]:
    f = Feature
    return [
        f(
            "bet_count",
            1,
            "float64",
            "bets placed",
            ("n_bets",),
            lambda s, t: s["n_bets"],
            "activity",
            heavy_tailed=True,
        ),
        f(
            "recency_days",
            1,
            "float64",
            "days from the newest event to the as-of time",
            ("last_ts",),
            lambda s, t: np.maximum(t - s["last_ts"], 0.0) / _DAY,
            "activity",
            heavy_tailed=True,
        ),
        f(
            "tenure_days",
            1,
            "float64",
            "days between the first and the newest event",
            ("first_ts", "last_ts"),
            lambda s, t: (s["last_ts"] - s["first_ts"]) / _DAY,
            "activity",
            heavy_tailed=True,
        ),
        f(
            "bets_per_day",
            1,
            "float64",
            "bets per day of tenure, counting at least one day",
            ("n_bets", "first_ts", "last_ts"),
            lambda s, t: (
                s["n_bets"] / np.maximum((s["last_ts"] - s["first_ts"]) / _DAY, 1.0)
            ),
            "activity",
            heavy_tailed=True,
        ),
        f(
            "avg_stake",
            1,
            "float64",
            "mean stake per bet",
            ("n_bets", "stake_sum"),
            lambda s, t: _ratio(s["stake_sum"], s["n_bets"]),
            "monetary",
            heavy_tailed=True,
        ),
        f(
            "stake_cv",
            1,
            "float64",
            "coefficient of variation of the stakes",
            ("n_bets", "stake_sum", "stake_sq_sum"),
            lambda s, t: _stake_cv(s),
            "monetary",
        ),
        f(
            "max_stake",
            1,
            "float64",
            "largest stake",
            ("stake_max",),
            lambda s, t: s["stake_max"],
            "monetary",
            heavy_tailed=True,
        ),
        f(
            "total_staked",
            1,
            "float64",
            "total staked",
            ("stake_sum",),
            lambda s, t: s["stake_sum"],
            "monetary",
            heavy_tailed=True,
        ),
        f(
            "win_rate",
            1,
            "float64",
            "share of bets that paid more than the stake",
            ("n_wins", "n_bets"),
            lambda s, t: _ratio(s["n_wins"], s["n_bets"]),
            "outcome",
        ),
        f(
            "payout_ratio",
            1,
            "float64",
            "paid back divided by staked (return to player)",
            ("payout_sum", "stake_sum"),
            lambda s, t: _ratio(s["payout_sum"], s["stake_sum"]),
            "outcome",
        ),
        f(
            "net_loss",
            1,
            "float64",
            "staked minus paid back (operator's gross win)",
            ("stake_sum", "payout_sum"),
            lambda s, t: s["stake_sum"] - s["payout_sum"],
            "outcome",
        ),
        f(
            "late_night_share",
            1,
            "float64",
            "share of bets placed 00:00-05:59 UTC",
            (*_LATE, "n_bets"),
            lambda s, t: _hour_share(s, LATE_NIGHT_HOURS),
            "timing",
        ),
        f(
            "evening_share",
            1,
            "float64",
            "share of bets placed 18:00-23:59 UTC",
            (*_EVENING, "n_bets"),
            lambda s, t: _hour_share(s, range(18, 24)),
            "timing",
        ),
        f(
            "hour_entropy",
            1,
            "float64",
            "entropy of the hour-of-day histogram, 0 (one hour) to 1 (uniform)",
            _HOURS,
            lambda s, t: _hour_entropy(s),
            "timing",
        ),
        f(
            "weekend_share",
            1,
            "float64",
            "share of bets placed on Saturday or Sunday",
            ("wday_5", "wday_6", "n_bets"),
            lambda s, t: _ratio(s["wday_5"] + s["wday_6"], s["n_bets"]),
            "timing",
        ),
        f(
            "sports_share",
            1,
            "float64",
            "share of bets on sports",
            ("n_sports_bets", "n_bets"),
            lambda s, t: _ratio(s["n_sports_bets"], s["n_bets"]),
            "product",
        ),
        f(
            "casino_share",
            1,
            "float64",
            "share of bets on casino games",
            ("n_casino_bets", "n_bets"),
            lambda s, t: _ratio(s["n_casino_bets"], s["n_bets"]),
            "product",
        ),
        f(
            "crash_share",
            1,
            "float64",
            "share of bets on crash games",
            ("n_crash_bets", "n_bets"),
            lambda s, t: _ratio(s["n_crash_bets"], s["n_bets"]),
            "product",
        ),
        f(
            "bonus_share",
            1,
            "float64",
            "bonus money divided by bonus money plus stakes",
            ("bonus_sum", "bet_bonus_sum", "stake_sum"),
            lambda s, t: _ratio(
                s["bonus_sum"] + s["bet_bonus_sum"],
                s["bonus_sum"] + s["bet_bonus_sum"] + s["stake_sum"],
            ),
            "promotion",
        ),
        f(
            "cashback_share",
            1,
            "float64",
            "cashback divided by cashback plus stakes",
            ("cashback_sum", "stake_sum"),
            lambda s, t: _ratio(s["cashback_sum"], s["cashback_sum"] + s["stake_sum"]),
            "promotion",
        ),
        f(
            "crash_cashout_rate",
            1,
            "float64",
            "share of crash bets cashed out before the bust",
            ("n_cashouts", "n_crash"),
            lambda s, t: _ratio(s["n_cashouts"], s["n_crash"]),
            "crash",
        ),
        f(
            "crash_log_cashout",
            1,
            "float64",
            "mean ln(cash-out multiplier) of cashed-out crash bets, 0 without any",
            ("cashout_log_sum", "n_cashouts"),
            lambda s, t: _ratio(s["cashout_log_sum"], s["n_cashouts"]),
            "crash",
        ),
        f(
            "stake_7d_per_day",
            1,
            "float64",
            "stakes per day, exponentially decayed with a 7-day time constant",
            ("stake_d7d", "last_ts"),
            lambda s, t: _aged(s, "stake_d7d", t) / 7.0,
            "trend",
            heavy_tailed=True,
        ),
        f(
            "stake_trend_7d_30d",
            1,
            "float64",
            "7-day over 30-day decayed daily stake; above 1 means rising",
            ("stake_d7d", "stake_d30d", "last_ts"),
            lambda s, t: _trend(s, "stake", t),
            "trend",
        ),
        f(
            "activity_trend_7d_30d",
            1,
            "float64",
            "7-day over 30-day decayed daily bet count; above 1 means rising",
            ("bets_d7d", "bets_d30d", "last_ts"),
            lambda s, t: _trend(s, "bets", t),
            "trend",
        ),
        f(
            "deposit_count",
            1,
            "float64",
            "deposits made",
            ("n_deposits",),
            lambda s, t: s["n_deposits"],
            "payments",
            heavy_tailed=True,
        ),
        f(
            "avg_deposit",
            1,
            "float64",
            "mean deposit",
            ("deposit_sum", "n_deposits"),
            lambda s, t: _ratio(s["deposit_sum"], s["n_deposits"]),
            "payments",
            heavy_tailed=True,
        ),
        f(
            "withdrawal_ratio",
            1,
            "float64",
            "withdrawn divided by deposited",
            ("withdrawal_sum", "deposit_sum"),
            lambda s, t: _ratio(s["withdrawal_sum"], s["deposit_sum"]),
            "payments",
        ),
        f(
            "loss_chasing_rate",
            1,
            "float64",
            "share of bets that raised the stake within 30 min of a lost bet",
            ("n_chases", "n_bets"),
            lambda s, t: _ratio(s["n_chases"], s["n_bets"]),
            "responsible_gambling",
        ),
        f(
            "deposit_frequency_trend",
            1,
            "float64",
            "7-day over 30-day decayed daily deposit count; above 1 means rising",
            ("deposits_d7d", "deposits_d30d", "last_ts"),
            lambda s, t: _trend(s, "deposits", t),
            "responsible_gambling",
        ),
        f(
            "net_loss_7d_per_day",
            1,
            "float64",
            "net loss per day, exponentially decayed with a 7-day time constant",
            ("net_loss_d7d", "last_ts"),
            lambda s, t: _aged(s, "net_loss_d7d", t) / 7.0,
            "responsible_gambling",
        ),
    ]


#: Every registered feature by name, in a stable order.
FEATURES: dict[str, Feature] = {feature.name: feature for feature in _definitions()}

#: Features the segmentation model uses by default.
SEGMENTATION_FEATURES: tuple[str, ...] = (
    "avg_stake",
    "bets_per_day",
    "recency_days",
    "late_night_share",
    "weekend_share",
    "sports_share",
    "casino_share",
    "crash_share",
    "bonus_share",
    "cashback_share",
    "crash_log_cashout",
    "avg_deposit",
)

#: Features that feed the responsible-gambling markers.
RG_FEATURES: tuple[str, ...] = (
    "loss_chasing_rate",
    "late_night_share",
    "deposit_frequency_trend",
    "net_loss_7d_per_day",
)


def _check_names(names: Sequence[str]) -> None:
    unknown = [name for name in names if name not in FEATURES]
    if unknown:
        raise KeyError(
            f"unknown feature(s) {unknown}; run 'crmbet features list' for the "
            f"{len(FEATURES)} registered names"
        )


def compute_columns(
    state: StateColumns, as_of: float | Array, names: Sequence[str] | None = None
) -> dict[str, Array]:
    """Compute features from state columns given as NumPy arrays.

    Parameters
    ----------
    state:
        State field name to a float array, one element per player.
    as_of:
        Unix time (seconds) at which recency and decayed features are read.
    names:
        Features to compute; all registered features by default.
    """
    names = list(names) if names is not None else list(FEATURES)
    _check_names(names)
    when = np.asarray(as_of, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return {
            name: np.nan_to_num(
                np.asarray(FEATURES[name].compute(state, when), dtype=np.float64),
                nan=0.0,
                posinf=0.0,
                neginf=0.0,
            )
            for name in names
        }


def state_columns(states: pl.DataFrame) -> dict[str, Array]:
    """Return the state fields of a state table as float arrays."""
    return {
        name: states.get_column(name).fill_null(0.0).to_numpy() for name in STATE_FIELDS
    }


def compute_features(
    states: pl.DataFrame, as_of: float | None = None, names: Sequence[str] | None = None
) -> pl.DataFrame:
    """Compute features for every player of a state table.

    ``as_of`` defaults to the newest event in the table, so a training set
    is read at the moment its data ends.
    """
    if as_of is None:
        as_of = float(states["last_ts"].max()) if states.height else 0.0
    columns = compute_columns(state_columns(states), as_of, names)
    return pl.DataFrame({"player_id": states["player_id"], **columns})


def compute_one(
    state: Mapping[str, float], as_of: float, names: Sequence[str] | None = None
) -> dict[str, float]:
    """Compute features for one player's state given as a mapping of floats."""
    columns = {
        name: np.asarray([float(state.get(name) or 0.0)]) for name in STATE_FIELDS
    }
    return {
        name: float(value[0])
        for name, value in compute_columns(columns, as_of, names).items()
    }


def lineage(name: str) -> dict[str, object]:
    """Return the lineage of one feature: raw fields, state fields, related features."""
    _check_names([name])
    feature = FEATURES[name]
    shared = sorted(
        other.name
        for other in FEATURES.values()
        if other.name != name and set(other.inputs) & set(feature.inputs)
    )
    return {
        "feature": name,
        "version": feature.version,
        "dtype": feature.dtype,
        "description": feature.description,
        "group": feature.group,
        "state_fields": list(feature.inputs),
        "raw_fields": list(feature.raw_fields()),
        "features_sharing_state": shared,
        "in_segmentation": name in SEGMENTATION_FEATURES,
        "in_responsible_gambling": name in RG_FEATURES,
    }
