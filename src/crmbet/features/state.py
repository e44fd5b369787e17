"""Mergeable per-player state: the accumulators every feature is computed from.

A player state is one row of counts, sums, sums of squares, extrema,
histograms, time-decayed sums and a little sequence context. ``fold`` turns
events into states with one Polars group-by; ``merge`` combines two state
tables. The merge law ``merge(fold(a), fold(b)) == fold(a + b)`` is
exact (up to floating-point rounding) for every field when ``a`` ends
before ``b`` begins, and for every field except the loss-chasing count when
they interleave in time (see :data:`SEQUENCE_FIELDS`). Offline batch jobs,
Dask partitions and the online store all use these two functions, which is
why they produce the same features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import polars as pl

from crmbet.events.schema import EVENT_TYPES, PRODUCTS

#: Version of the state layout; part of every online-store key and model.
STATE_SCHEMA_VERSION = 1

#: Time constants of the decayed sums, in seconds.
DECAY_WINDOWS: dict[str, float] = {"7d": 7 * 86400.0, "30d": 30 * 86400.0}

#: A bet placed within this many seconds after a lost bet, with a larger
#: stake, counts as chasing that loss.
LOSS_CHASE_WINDOW_S = 1800.0

#: UTC hours counted as late night (00:00 to 05:59).
LATE_NIGHT_HOURS = range(0, 6)

MergeKind = Literal["sum", "max", "min", "decay", "sequence"]


@dataclass(frozen=True)
class StateField:
    """One accumulator of the player state and the raw event fields it reads."""

    name: str
    merge: MergeKind
    raw_fields: tuple[str, ...]
    description: str


def _fields() -> dict[str, StateField]:
    typed_amount = ("event_type", "amount")
    items: list[StateField] = [
        StateField("n_events", "sum", ("event_id",), "events of any type"),
        StateField("first_ts", "min", ("ts",), "time of the first event, Unix seconds"),
        StateField("last_ts", "max", ("ts",), "time of the newest event, Unix seconds"),
        StateField("n_bets", "sum", typed_amount, "bets placed"),
        StateField(
            "n_wins",
            "sum",
            (*typed_amount, "payout"),
            "bets that paid more than the stake",
        ),
        StateField("stake_sum", "sum", typed_amount, "total staked"),
        StateField("stake_sq_sum", "sum", typed_amount, "sum of squared stakes"),
        StateField("log_stake_sum", "sum", typed_amount, "sum of ln(1 + stake)"),
        StateField("stake_max", "max", typed_amount, "largest stake"),
        StateField(
            "payout_sum", "sum", ("event_type", "payout"), "total paid back on bets"
        ),
        StateField(
            "bet_bonus_sum",
            "sum",
            ("event_type", "bonus_amount"),
            "bonus money paid with bets",
        ),
        StateField("n_deposits", "sum", typed_amount, "deposits"),
        StateField("deposit_sum", "sum", typed_amount, "total deposited"),
        StateField("deposit_max", "max", typed_amount, "largest deposit"),
        StateField("n_withdrawals", "sum", typed_amount, "withdrawals"),
        StateField("withdrawal_sum", "sum", typed_amount, "total withdrawn"),
        StateField("n_bonus", "sum", typed_amount, "bonus credits"),
        StateField("bonus_sum", "sum", typed_amount, "total bonus credited"),
        StateField("n_cashback", "sum", typed_amount, "cashback credits"),
        StateField("cashback_sum", "sum", typed_amount, "total cashback credited"),
        StateField("n_crash", "sum", ("event_type", "product"), "crash-game bets"),
        StateField(
            "n_cashouts",
            "sum",
            ("product", "multiplier"),
            "crash bets cashed out before the bust",
        ),
        StateField(
            "cashout_log_sum",
            "sum",
            ("product", "multiplier"),
            "sum of ln(cash-out multiplier) over cashed-out crash bets",
        ),
        StateField(
            "cashout_max",
            "max",
            ("product", "multiplier"),
            "largest cash-out multiplier",
        ),
    ]
    for product in PRODUCTS:
        items.append(
            StateField(
                f"n_{product}_bets",
                "sum",
                ("event_type", "product"),
                f"bets on {product}",
            )
        )
        items.append(
            StateField(
                f"stake_{product}",
                "sum",
                (*typed_amount, "product"),
                f"total staked on {product}",
            )
        )
    for hour in range(24):
        items.append(
            StateField(
                f"hour_{hour:02d}",
                "sum",
                ("event_type", "ts"),
                f"bets placed between {hour:02d}:00 and {hour:02d}:59 UTC",
            )
        )
    for day in range(7):
        items.append(
            StateField(
                f"wday_{day}",
                "sum",
                ("event_type", "ts"),
                f"bets placed on ISO weekday {day + 1} (1 = Monday)",
            )
        )
    for window in DECAY_WINDOWS:
        items += [
            StateField(
                f"stake_d{window}",
                "decay",
                (*typed_amount, "ts"),
                f"stakes decayed with a {window} time constant, as of last_ts",
            ),
            StateField(
                f"bets_d{window}",
                "decay",
                ("event_type", "ts"),
                f"bet count decayed with a {window} time constant, as of last_ts",
            ),
            StateField(
                f"deposits_d{window}",
                "decay",
                ("event_type", "ts"),
                f"deposit count decayed with a {window} time constant, as of last_ts",
            ),
            StateField(
                f"net_loss_d{window}",
                "decay",
                (*typed_amount, "payout", "ts"),
                f"stake minus payout decayed with a {window} time constant",
            ),
        ]
    seq = ("event_type", "amount", "payout", "ts")
    items += [
        StateField(
            "n_chases",
            "sequence",
            seq,
            "bets with a larger stake placed within 30 min of a lost bet",
        ),
        StateField("first_bet_ts", "sequence", seq, "time of the first bet"),
        StateField("first_bet_stake", "sequence", seq, "stake of the first bet"),
        StateField("last_bet_ts", "sequence", seq, "time of the newest bet"),
        StateField("last_bet_stake", "sequence", seq, "stake of the newest bet"),
        StateField("last_bet_lost", "sequence", seq, "1 when the newest bet was lost"),
    ]
    return {item.name: item for item in items}


#: Every state field, in column order.
STATE_FIELDS: dict[str, StateField] = _fields()

#: Fields whose merge needs time order: the loss-chasing count is exact when
#: the two merged states do not interleave in time, and otherwise misses the
#: chases that span the two parts.
SEQUENCE_FIELDS: tuple[str, ...] = tuple(
    name for name, item in STATE_FIELDS.items() if item.merge == "sequence"
)

STATE_SCHEMA: dict[str, pl.DataType] = {"player_id": pl.String()} | {
    name: pl.Float64() for name in STATE_FIELDS
}


def _decay_weight(window: str) -> pl.Expr:
    tau = DECAY_WINDOWS[window]
    return ((pl.col("__t") - pl.col("__t").max()) / tau).exp()


def fold(events: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Fold canonical events into one state row per player.

    Parameters
    ----------
    events:
        A canonical event table (see :mod:`crmbet.events.schema`), eager or
        lazy, in any row order. A row that repeats an earlier row's
        ``event_id``, ``player_id`` and ``ts`` is a duplicate delivery and
        counts once.

    Returns
    -------
    polars.DataFrame
        ``player_id`` and one Float64 column per field of
        :data:`STATE_FIELDS`, sorted by ``player_id``.
    """
    frame = events.lazy() if isinstance(events, pl.DataFrame) else events
    is_bet = pl.col("event_type") == "bet"
    stake = pl.when(is_bet).then(pl.col("amount")).otherwise(0.0)
    payout = pl.when(is_bet).then(pl.col("payout")).otherwise(0.0)

    def money(kind: str) -> pl.Expr:
        return (
            pl.when(pl.col("event_type") == kind).then(pl.col("amount")).otherwise(0.0)
        )

    def count(mask: pl.Expr) -> pl.Expr:
        return mask.cast(pl.Float64).sum()

    # Sort once by an integer player code, then time. Each player's rows are
    # then contiguous and in time order, so the loss-chasing pairs and the
    # first and last bets see the bets in order. The group-by on the sorted
    # code also costs about a third less CPU than one on the string id.
    # The string player id stays out of the sorted copy: the categorical
    # column carries it as a 4-byte code.
    player = pl.col("player_id").cast(pl.Categorical)
    ordered = (
        frame.select(
            "event_id",
            # Enums hold one byte per row where strings hold 16 or more.
            pl.col("event_type").cast(pl.Enum(EVENT_TYPES)),
            "amount",
            "payout",
            "bonus_amount",
            pl.col("product").cast(pl.Enum(PRODUCTS)),
            "multiplier",
            (pl.col("ts").dt.epoch("us").cast(pl.Float64) / 1e6).alias("__t"),
            pl.col("ts").dt.hour().alias("__hour"),
            (pl.col("ts").dt.weekday() - 1).alias("__wday"),
            player.alias("__name"),
            player.to_physical().alias("__player"),
        )
        .sort("__player", "__t", "event_id")
        .collect()
    )
    # An event delivered twice (a file ingested twice, a producer retry) has
    # the same id, player and time, so after the sort its copies are
    # adjacent, and the filter keeps the first. The filter copies every
    # column, so it runs only when there is a copy to drop.
    repeat = ordered.select(
        pl.all_horizontal(
            [
                pl.col(name) == pl.col(name).shift(1)
                for name in ("__t", "event_id", "__player")
            ]
        ).fill_null(False)
    ).to_series()
    if repeat.any():
        ordered = ordered.filter(~repeat)
    bet_stake = pl.col("amount").filter(is_bet)
    bet_time = pl.col("__t").filter(is_bet)
    bet_lost = (pl.col("payout") < pl.col("amount")).filter(is_bet)
    sequence = [
        (
            bet_lost.shift(1)
            & (bet_stake > bet_stake.shift(1))
            & ((bet_time - bet_time.shift(1)) <= LOSS_CHASE_WINDOW_S)
        )
        .fill_null(False)
        .cast(pl.Float64)
        .sum()
        .alias("n_chases"),
        bet_time.first().alias("first_bet_ts"),
        bet_stake.first().alias("first_bet_stake"),
        bet_time.last().alias("last_bet_ts"),
        bet_stake.last().alias("last_bet_stake"),
        bet_lost.last().cast(pl.Float64).alias("last_bet_lost"),
    ]

    crash_cashout = (pl.col("product") == "crash") & pl.col("multiplier").is_not_null()
    aggregations: list[pl.Expr] = [
        pl.len().cast(pl.Float64).alias("n_events"),
        pl.col("__t").min().alias("first_ts"),
        pl.col("__t").max().alias("last_ts"),
        count(is_bet).alias("n_bets"),
        count(is_bet & (pl.col("payout") > pl.col("amount"))).alias("n_wins"),
        stake.sum().alias("stake_sum"),
        (stake * stake).sum().alias("stake_sq_sum"),
        stake.log1p().sum().alias("log_stake_sum"),
        stake.max().alias("stake_max"),
        payout.sum().alias("payout_sum"),
        pl.when(is_bet)
        .then(pl.col("bonus_amount"))
        .otherwise(0.0)
        .sum()
        .alias("bet_bonus_sum"),
        count(pl.col("event_type") == "deposit").alias("n_deposits"),
        money("deposit").sum().alias("deposit_sum"),
        money("deposit").max().alias("deposit_max"),
        count(pl.col("event_type") == "withdrawal").alias("n_withdrawals"),
        money("withdrawal").sum().alias("withdrawal_sum"),
        count(pl.col("event_type") == "bonus").alias("n_bonus"),
        money("bonus").sum().alias("bonus_sum"),
        count(pl.col("event_type") == "cashback").alias("n_cashback"),
        money("cashback").sum().alias("cashback_sum"),
        count(is_bet & (pl.col("product") == "crash")).alias("n_crash"),
        count(is_bet & crash_cashout).alias("n_cashouts"),
        pl.when(is_bet & crash_cashout)
        .then(pl.col("multiplier").log())
        .otherwise(0.0)
        .sum()
        .alias("cashout_log_sum"),
        pl.when(is_bet & crash_cashout)
        .then(pl.col("multiplier"))
        .otherwise(0.0)
        .max()
        .alias("cashout_max"),
    ]
    for product in PRODUCTS:
        on_product = is_bet & (pl.col("product") == product)
        aggregations.append(count(on_product).alias(f"n_{product}_bets"))
        aggregations.append(
            pl.when(on_product)
            .then(pl.col("amount"))
            .otherwise(0.0)
            .sum()
            .alias(f"stake_{product}")
        )
    for hour in range(24):
        aggregations.append(
            count(is_bet & (pl.col("__hour") == hour)).alias(f"hour_{hour:02d}")
        )
    for day in range(7):
        aggregations.append(
            count(is_bet & (pl.col("__wday") == day)).alias(f"wday_{day}")
        )
    for window in DECAY_WINDOWS:
        weight = _decay_weight(window)
        aggregations += [
            (stake * weight).sum().alias(f"stake_d{window}"),
            (is_bet.cast(pl.Float64) * weight).sum().alias(f"bets_d{window}"),
            ((pl.col("event_type") == "deposit").cast(pl.Float64) * weight)
            .sum()
            .alias(f"deposits_d{window}"),
            ((stake - payout) * weight).sum().alias(f"net_loss_d{window}"),
        ]

    states = (
        ordered.lazy()
        .set_sorted("__player")
        .group_by("__player", maintain_order=True)
        .agg(
            pl.col("__name").first().cast(pl.String).alias("player_id"),
            *aggregations,
            *sequence,
        )
    )
    return (
        states.select(list(STATE_SCHEMA)).cast(STATE_SCHEMA).sort("player_id").collect()
    )


def _rescale(
    value: pl.Expr, anchor: pl.Expr, new_anchor: pl.Expr, window: str
) -> pl.Expr:
    tau = DECAY_WINDOWS[window]
    return value * ((anchor - new_anchor) / tau).exp()


def merge(left: pl.DataFrame, right: pl.DataFrame) -> pl.DataFrame:
    """Merge two state tables into one, player by player.

    A player present in only one table keeps that state. For a player in
    both, sums add, extrema combine, decayed sums are rescaled to the newer
    ``last_ts`` before adding, and the loss-chasing sequence is joined in
    time order (see :data:`SEQUENCE_FIELDS` for the one approximation).
    """
    if left.height == 0:
        return right.select(list(STATE_SCHEMA)).cast(STATE_SCHEMA)
    if right.height == 0:
        return left.select(list(STATE_SCHEMA)).cast(STATE_SCHEMA)
    joined = left.join(right, on="player_id", how="full", suffix="__r", coalesce=True)

    def a(name: str) -> pl.Expr:
        return pl.col(name)

    def b(name: str) -> pl.Expr:
        return pl.col(f"{name}__r")

    only_left = b("n_events").is_null()
    only_right = a("n_events").is_null()
    new_last = pl.max_horizontal(a("last_ts"), b("last_ts"))
    left_bets_first = a("last_bet_ts") <= b("first_bet_ts")
    right_bets_first = b("last_bet_ts") <= a("first_bet_ts")

    def boundary_chase(earlier: str, later: str) -> pl.Expr:
        def col(side: str, name: str) -> pl.Expr:
            return a(name) if side == "a" else b(name)

        return (
            (col(earlier, "last_bet_lost") > 0)
            & (col(later, "first_bet_stake") > col(earlier, "last_bet_stake"))
            & (
                col(later, "first_bet_ts") - col(earlier, "last_bet_ts")
                <= LOSS_CHASE_WINDOW_S
            )
        ).cast(pl.Float64)

    merged: list[pl.Expr] = []
    for name, item in STATE_FIELDS.items():
        if item.merge == "sum":
            combined = a(name) + b(name)
        elif item.merge == "max":
            combined = pl.max_horizontal(a(name), b(name))
        elif item.merge == "min":
            combined = pl.min_horizontal(a(name), b(name))
        elif item.merge == "decay":
            window = name.rsplit("_d", 1)[1]
            combined = _rescale(a(name), a("last_ts"), new_last, window) + _rescale(
                b(name), b("last_ts"), new_last, window
            )
        else:
            combined = _merge_sequence(
                name, a, b, left_bets_first, right_bets_first, boundary_chase
            )
        merged.append(
            pl.when(only_left)
            .then(a(name))
            .when(only_right)
            .then(b(name))
            .otherwise(combined)
            .alias(name)
        )
    return joined.select("player_id", *merged).cast(STATE_SCHEMA).sort("player_id")


def _merge_sequence(name, a, b, left_first, right_first, boundary_chase) -> pl.Expr:  # noqa: ANN001
    no_left_bets = a("first_bet_ts").is_null()
    no_right_bets = b("first_bet_ts").is_null()
    if name == "n_chases":
        pair = (
            pl.when(no_left_bets | no_right_bets)
            .then(0.0)
            .when(left_first)
            .then(boundary_chase("a", "b"))
            .when(right_first)
            .then(boundary_chase("b", "a"))
            .otherwise(0.0)
        )
        return a(name) + b(name) + pair
    if name.startswith("first_bet"):
        left_earlier = no_right_bets | (
            ~no_left_bets & (a("first_bet_ts") <= b("first_bet_ts"))
        )
        return pl.when(left_earlier).then(a(name)).otherwise(b(name))
    left_later = no_right_bets | (~no_left_bets & (a("last_bet_ts") > b("last_bet_ts")))
    return pl.when(left_later).then(a(name)).otherwise(b(name))


def empty_states() -> pl.DataFrame:
    """Return a state table with no players."""
    return pl.DataFrame(schema=STATE_SCHEMA)


def decay_factor(age_seconds: float, window: str) -> float:
    """Return the factor that ages a decayed sum by ``age_seconds``."""
    return math.exp(-max(age_seconds, 0.0) / DECAY_WINDOWS[window])
