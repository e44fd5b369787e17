"""Mergeable per-player state: the accumulators every feature is computed from.

A player state is one row of counts, sums, sums of squares, extrema,
histograms, time-decayed sums and a little sequence context. ``fold`` turns
events into states with one Polars group-by; ``merge`` combines two state
tables. The merge law ``merge(fold(a), fold(b)) == fold(a + b)`` holds
exactly (up to floating-point rounding) for every field when ``a`` ends
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

from crmbet.events.schema import PRODUCTS

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
        StateField("n_wins", "sum", (*typed_amount, "payout"), "bets that paid more than the stake"),
        StateField("stake_sum", "sum", typed_amount, "total staked"),
        StateField("stake_sq_sum", "sum", typed_amount, "sum of squared stakes"),
        StateField("log_stake_sum", "sum", typed_amount, "sum of ln(1 + stake)"),
        StateField("stake_max", "max", typed_amount, "largest stake"),
        StateField("payout_sum", "sum", ("event_type", "payout"), "total paid back on bets"),
        StateField("bet_bonus_sum", "sum", ("event_type", "bonus_amount"),
                   "bonus money paid with bets"),
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
        StateField("n_cashouts", "sum", ("product", "multiplier"),
                   "crash bets cashed out before the bust"),
        StateField("cashout_log_sum", "sum", ("product", "multiplier"),
                   "sum of ln(cash-out multiplier) over cashed-out crash bets"),
        StateField("cashout_max", "max", ("product", "multiplier"),
                   "largest cash-out multiplier"),
    ]
    for product in PRODUCTS:
        items.append(StateField(f"n_{product}_bets", "sum", ("event_type", "product"),
                                f"bets on {product}"))
        items.append(StateField(f"stake_{product}", "sum", (*typed_amount, "product"),
                                f"total staked on {product}"))
    for hour in range(24):
        items.append(StateField(f"hour_{hour:02d}", "sum", ("event_type", "ts"),
                                f"bets placed between {hour:02d}:00 and {hour:02d}:59 UTC"))
    for day in range(7):
        items.append(StateField(f"wday_{day}", "sum", ("event_type", "ts"),
                                f"bets placed on ISO weekday {day + 1} (1 = Monday)"))
    for window in DECAY_WINDOWS:
        items += [
            StateField(f"stake_d{window}", "decay", (*typed_amount, "ts"),
                       f"stakes decayed with a {window} time constant, as of last_ts"),
            StateField(f"bets_d{window}", "decay", ("event_type", "ts"),
                       f"bet count decayed with a {window} time constant, as of last_ts"),
            StateField(f"deposits_d{window}", "decay", ("event_type", "ts"),
                       f"deposit count decayed with a {window} time constant, as of last_ts"),
            StateField(f"net_loss_d{window}", "decay", (*typed_amount, "payout", "ts"),
                       f"stake minus payout decayed with a {window} time constant"),
        ]
    seq = ("event_type", "amount", "payout", "ts")
    items += [
        StateField("n_chases", "sequence", seq,
                   "bets with a larger stake placed within 30 min of a lost bet"),
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
        lazy, in any row order.

    Returns
    -------
    polars.DataFrame
        ``player_id`` and one Float64 column per field of
        :data:`STATE_FIELDS`, sorted by ``player_id``.
    """
    frame = events.lazy() if isinstance(events, pl.DataFrame) else events
    is_bet = pl.col("event_type") == "bet"

    # Sort once by time, a numeric sort far cheaper than one by player id.
    # Group-bys and stable sorts keep rows in this order within a player.
    ordered = (
        frame.select(
            "player_id", "event_id", "event_type", "amount", "payout", "bonus_amount",
            "product", "multiplier",
            (pl.col("ts").dt.epoch("us").cast(pl.Float64) / 1e6).alias("__t"),
            pl.col("ts").dt.hour().alias("__hour"),
            (pl.col("ts").dt.weekday() - 1).alias("__wday"),
        )
        .sort("__t", "event_id")
        .collect()
    )
    if ordered.height == 0:
        return empty_states()

    # Plain columns first, so that the group-by below only sums, counts and
    # takes extrema, which Polars runs on its fast path.
    columns = ordered.lazy().with_columns(
        pl.col("__t").max().over("player_id").alias("__last"),
        is_bet.alias("__is_bet"),
    ).with_columns(_event_columns()).collect()
    states = columns.lazy().group_by("player_id").agg(_aggregations()).collect()

    bets = columns.filter(pl.col("__is_bet"))
    for table in (_sequence(bets), *_histograms(bets)):
        states = states.join(table, on="player_id", how="left")
    filled = [pl.col(name).fill_null(0.0) for name in STATE_FIELDS
              if name not in SEQUENCE_FIELDS or name == "n_chases"]
    return (
        states.with_columns(filled)
        .select(list(STATE_SCHEMA))
        .cast(STATE_SCHEMA)
        .sort("player_id")
    )


def _event_columns() -> list[pl.Expr]:
    bet = pl.col("__is_bet")
    kind = pl.col("event_type")
    amount = pl.col("amount")
    stake = pl.when(bet).then(amount).otherwise(0.0)
    payout = pl.when(bet).then(pl.col("payout")).otherwise(0.0)
    cashout = bet & (pl.col("product") == "crash") & pl.col("multiplier").is_not_null()
    columns = [
        bet.cast(pl.Float64).alias("__bet"),
        stake.alias("__stake"),
        payout.alias("__payout"),
        (bet & (pl.col("payout") > amount)).cast(pl.Float64).alias("__win"),
        pl.when(bet).then(pl.col("bonus_amount")).otherwise(0.0).alias("__bet_bonus"),
        cashout.cast(pl.Float64).alias("__cashout"),
        pl.when(cashout).then(pl.col("multiplier")).otherwise(1.0).alias("__multiplier"),
    ]
    for name in ("deposit", "withdrawal", "bonus", "cashback"):
        columns.append((kind == name).cast(pl.Float64).alias(f"__n_{name}"))
        columns.append(pl.when(kind == name).then(amount).otherwise(0.0).alias(f"__{name}"))
    for window, tau in DECAY_WINDOWS.items():
        columns.append(((pl.col("__t") - pl.col("__last")) / tau).exp().alias(f"__w{window}"))
    return columns


def _aggregations() -> list[pl.Expr]:
    def total(name: str) -> pl.Expr:
        return pl.col(name).sum()

    stake = pl.col("__stake")
    aggregations = [
        pl.len().cast(pl.Float64).alias("n_events"),
        pl.col("__t").min().alias("first_ts"),
        pl.col("__t").max().alias("last_ts"),
        total("__bet").alias("n_bets"),
        total("__win").alias("n_wins"),
        stake.sum().alias("stake_sum"),
        (stake * stake).sum().alias("stake_sq_sum"),
        stake.log1p().sum().alias("log_stake_sum"),
        stake.max().alias("stake_max"),
        total("__payout").alias("payout_sum"),
        total("__bet_bonus").alias("bet_bonus_sum"),
        total("__n_deposit").alias("n_deposits"),
        total("__deposit").alias("deposit_sum"),
        pl.col("__deposit").max().alias("deposit_max"),
        total("__n_withdrawal").alias("n_withdrawals"),
        total("__withdrawal").alias("withdrawal_sum"),
        total("__n_bonus").alias("n_bonus"),
        total("__bonus").alias("bonus_sum"),
        total("__n_cashback").alias("n_cashback"),
        total("__cashback").alias("cashback_sum"),
        total("__cashout").alias("n_cashouts"),
        pl.col("__multiplier").log().sum().alias("cashout_log_sum"),
        (pl.col("__multiplier") * pl.col("__cashout")).max().alias("cashout_max"),
    ]
    for window in DECAY_WINDOWS:
        weight = pl.col(f"__w{window}")
        aggregations += [
            (stake * weight).sum().alias(f"stake_d{window}"),
            (pl.col("__bet") * weight).sum().alias(f"bets_d{window}"),
            (pl.col("__n_deposit") * weight).sum().alias(f"deposits_d{window}"),
            ((stake - pl.col("__payout")) * weight).sum().alias(f"net_loss_d{window}"),
        ]
    return aggregations


def _histograms(bets: pl.DataFrame) -> list[pl.DataFrame]:
    """Count bets per hour, weekday and product with group-bys and pivots."""
    tables = []
    for key, names in (
        ("__hour", {hour: f"hour_{hour:02d}" for hour in range(24)}),
        ("__wday", {day: f"wday_{day}" for day in range(7)}),
    ):
        counts = bets.group_by("player_id", key).agg(pl.len().cast(pl.Float64).alias("n"))
        wide = counts.pivot(on=key, index="player_id", values="n")
        tables.append(_wide_columns(wide, names))
    per_product = bets.group_by("player_id", "product").agg(
        pl.len().cast(pl.Float64).alias("n"), pl.col("amount").sum().alias("stake")
    )
    counts = per_product.pivot(on="product", index="player_id", values="n")
    stakes = per_product.pivot(on="product", index="player_id", values="stake")
    tables.append(_wide_columns(counts, {p: f"n_{p}_bets" for p in PRODUCTS}))
    tables.append(_wide_columns(stakes, {p: f"stake_{p}" for p in PRODUCTS}))
    crash = _wide_columns(counts, {"crash": "n_crash"})
    tables.append(crash)
    return tables


def _wide_columns(wide: pl.DataFrame, names: dict[object, str]) -> pl.DataFrame:
    present = {str(key): name for key, name in names.items() if str(key) in wide.columns}
    missing = [name for key, name in names.items() if str(key) not in wide.columns]
    return wide.select(
        "player_id",
        *[pl.col(key).fill_null(0.0).cast(pl.Float64).alias(name) for key, name in present.items()],
        *[pl.lit(0.0).alias(name) for name in missing],
    )


def _sequence(bets: pl.DataFrame) -> pl.DataFrame:
    """Loss-chasing pairs and the first and newest bet of each player.

    ``bets`` is in time order; a stable sort on the player keeps that order
    within each player, so neighbouring rows are consecutive bets.
    """
    lost = pl.col("payout") < pl.col("amount")
    by_player = bets.select("player_id", "__t", "amount", "payout").sort(
        "player_id", maintain_order=True
    )
    same_player = pl.col("player_id") == pl.col("player_id").shift(1)
    chase = (
        same_player
        & lost.shift(1)
        & (pl.col("amount") > pl.col("amount").shift(1))
        & ((pl.col("__t") - pl.col("__t").shift(1)) <= LOSS_CHASE_WINDOW_S)
    ).fill_null(False)
    return by_player.with_columns(chase.cast(pl.Float64).alias("__chase")).group_by(
        "player_id"
    ).agg(
        pl.col("__chase").sum().alias("n_chases"),
        pl.col("__t").first().alias("first_bet_ts"),
        pl.col("amount").first().alias("first_bet_stake"),
        pl.col("__t").last().alias("last_bet_ts"),
        pl.col("amount").last().alias("last_bet_stake"),
        lost.last().cast(pl.Float64).alias("last_bet_lost"),
    )


def _rescale(value: pl.Expr, anchor: pl.Expr, new_anchor: pl.Expr, window: str) -> pl.Expr:
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
            & (col(later, "first_bet_ts") - col(earlier, "last_bet_ts") <= LOSS_CHASE_WINDOW_S)
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
            combined = _merge_sequence(name, a, b, left_bets_first, right_bets_first,
                                       boundary_chase)
        merged.append(
            pl.when(only_left).then(a(name)).when(only_right).then(b(name))
            .otherwise(combined).alias(name)
        )
    return joined.select("player_id", *merged).cast(STATE_SCHEMA).sort("player_id")


def _merge_sequence(name, a, b, left_first, right_first, boundary_chase) -> pl.Expr:  # noqa: ANN001
    no_left_bets = a("first_bet_ts").is_null()
    no_right_bets = b("first_bet_ts").is_null()
    if name == "n_chases":
        pair = (
            pl.when(no_left_bets | no_right_bets).then(0.0)
            .when(left_first).then(boundary_chase("a", "b"))
            .when(right_first).then(boundary_chase("b", "a"))
            .otherwise(0.0)
        )
        return a(name) + b(name) + pair
    if name.startswith("first_bet"):
        left_earlier = no_right_bets | (~no_left_bets & (a("first_bet_ts") <= b("first_bet_ts")))
        return pl.when(left_earlier).then(a(name)).otherwise(b(name))
    left_later = no_right_bets | (~no_left_bets & (a("last_bet_ts") > b("last_bet_ts")))
    return pl.when(left_later).then(a(name)).otherwise(b(name))


def empty_states() -> pl.DataFrame:
    """Return a state table with no players."""
    return pl.DataFrame(schema=STATE_SCHEMA)


def decay_factor(age_seconds: float, window: str) -> float:
    """Return the factor that ages a decayed sum by ``age_seconds``."""
    return math.exp(-max(age_seconds, 0.0) / DECAY_WINDOWS[window])
