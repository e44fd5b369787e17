"""Tests for the synthetic transaction generator."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.preprocessing import StandardScaler

from crmbet.events import synthetic
from crmbet.events.schema import EVENT_SCHEMA, EVENT_TYPES, PRODUCTS
from crmbet.events.synthetic import (
    ARCHETYPES,
    DEFAULT_START,
    generate_transactions,
    write_synthetic,
)

PLAYERS = 20_000
DAYS = 30
WINDOW_END = DEFAULT_START + timedelta(days=DAYS)

#: Intended population shares of the archetypes.
EXPECTED_SHARES = {
    "high_roller": 0.04,
    "night_owl": 0.08,
    "weekend_warrior": 0.10,
    "bonus_hunter": 0.06,
    "cashback_hunter": 0.05,
    "sports_bettor": 0.15,
    "crash_player": 0.10,
    "casual": 0.30,
    "lapsing": 0.12,
}

#: Per-player features that are money amounts, counts or durations and get
#: log1p before scaling; the others are shares in [0, 1].
LOG_FEATURES = (
    "average_stake",
    "bets_per_active_day",
    "recency_days",
    "bonus_to_staked",
    "cashback_to_staked",
    "average_deposit",
)
SHARE_FEATURES = (
    "night_share",
    "weekend_share",
    "sports_share",
    "casino_share",
    "crash_share",
    "win_rate",
)


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    return generate_transactions(players=PLAYERS, days=DAYS, seed=7)


@pytest.fixture(scope="module")
def bets(events: pl.DataFrame) -> pl.DataFrame:
    return events.filter(pl.col("event_type") == "bet")


def player_features(events: pl.DataFrame, window_end: datetime) -> pl.DataFrame:
    """Compute one row of segmentation features per player."""
    bet = pl.col("event_type") == "bet"
    stake = pl.col("amount").filter(bet)
    bet_ts = pl.col("ts").filter(bet)
    product = pl.col("product").filter(bet)

    def money(event_type: str) -> pl.Expr:
        return pl.col("amount").filter(pl.col("event_type") == event_type)

    features = events.group_by("player_id").agg(
        pl.col("archetype").first(),
        average_stake=stake.mean(),
        bets_per_active_day=stake.len() / bet_ts.dt.date().n_unique(),
        recency_days=(pl.lit(window_end) - pl.col("ts").max()).dt.total_seconds()
        / 86_400,
        night_share=(bet_ts.dt.hour() < 6).mean(),
        weekend_share=(bet_ts.dt.weekday() >= 6).mean(),
        sports_share=(product == "sports").mean(),
        casino_share=(product == "casino").mean(),
        crash_share=(product == "crash").mean(),
        bonus_to_staked=money("bonus").sum() / stake.sum(),
        cashback_to_staked=money("cashback").sum() / stake.sum(),
        average_deposit=money("deposit").mean(),
        win_rate=(pl.col("payout") > pl.col("amount")).filter(bet).mean(),
    )
    return features.sort("player_id")


def test_same_seed_returns_equal_frame() -> None:
    first = generate_transactions(players=300, days=14, seed=3)
    second = generate_transactions(players=300, days=14, seed=3)
    assert first.equals(second)


def test_different_seed_changes_frame() -> None:
    first = generate_transactions(players=300, days=14, seed=3)
    second = generate_transactions(players=300, days=14, seed=4)
    assert not first.equals(second)
    assert first["event_id"][0].startswith("s3-")
    assert second["event_id"][0].startswith("s4-")


def test_schema_is_canonical_plus_archetype(events: pl.DataFrame) -> None:
    expected = {**EVENT_SCHEMA, "archetype": pl.String()}
    assert events.columns == list(expected)
    for column, dtype in expected.items():
        assert events.schema[column] == dtype, column


def test_rows_sorted_by_ts_then_event_id(events: pl.DataFrame) -> None:
    assert events["event_id"].is_unique().all()
    assert events.equals(events.sort("ts", "event_id"))


def test_categorical_values_are_known(events: pl.DataFrame) -> None:
    assert set(events["event_type"].unique()) == set(EVENT_TYPES)
    assert set(events["product"].drop_nulls().unique()) == set(PRODUCTS)
    assert set(events["channel"].unique()) == {"web", "mobile", "retail"}
    assert set(events["archetype"].unique()) == set(ARCHETYPES)
    assert events["player_id"].str.contains(r"^player-\d{6}$").all()


def test_archetype_shares(events: pl.DataFrame) -> None:
    assert set(ARCHETYPES) == set(EXPECTED_SHARES)
    players = events.group_by("player_id").agg(pl.col("archetype").first())
    assert players.height == PLAYERS
    counts = dict(players["archetype"].value_counts().iter_rows())
    for archetype, share in EXPECTED_SHARES.items():
        observed = counts.get(archetype, 0) / PLAYERS
        assert abs(observed - share) < 0.015, (archetype, observed)


def test_archetype_is_constant_per_player(events: pl.DataFrame) -> None:
    per_player = events.group_by("player_id").agg(pl.col("archetype").n_unique())
    assert (per_player["archetype"] == 1).all()


def test_every_player_deposits_and_bets(events: pl.DataFrame) -> None:
    kinds = events.group_by("player_id").agg(pl.col("event_type").unique())
    for kind in ("deposit", "bet"):
        assert kinds["event_type"].list.contains(kind).all(), kind


def test_non_bets_have_no_bet_fields(events: pl.DataFrame) -> None:
    others = events.filter(pl.col("event_type") != "bet")
    assert others.height > 0
    assert others["product"].is_null().all()
    assert others["game"].is_null().all()
    assert others["multiplier"].is_null().all()
    assert others["session_id"].is_null().all()
    assert (others["payout"] == 0.0).all()


def test_bets_have_product_game_and_session(bets: pl.DataFrame) -> None:
    assert bets["product"].null_count() == 0
    assert bets["game"].null_count() == 0
    assert bets["session_id"].null_count() == 0
    assert bets["channel"].null_count() == 0


def test_money_columns_finite_and_non_negative(events: pl.DataFrame) -> None:
    for column in ("amount", "payout", "bonus_amount"):
        values = events[column]
        assert values.null_count() == 0, column
        assert values.is_finite().all(), column
        assert (values >= 0).all(), column
    assert (events["bonus_amount"] == 0.0).all()
    stakes = events.filter(pl.col("event_type") == "bet")["amount"]
    assert (stakes > 0).all()


def test_multiplier_only_on_won_crash_bets(bets: pl.DataFrame) -> None:
    with_multiplier = bets.filter(pl.col("multiplier").is_not_null())
    assert with_multiplier.height > 0
    assert (with_multiplier["product"] == "crash").all()
    assert (with_multiplier["multiplier"] >= 1.0).all()
    assert (with_multiplier["payout"] > 0).all()

    crash = bets.filter(pl.col("product") == "crash")
    lost = crash.filter(pl.col("payout") == 0)
    won = crash.filter(pl.col("payout") > 0)
    assert lost["multiplier"].is_null().all()
    assert won["multiplier"].is_not_null().all()
    expected_payout = (won["amount"] * won["multiplier"]).round(2)
    assert ((won["payout"] - expected_payout).abs() < 0.011).all()


def test_products_keep_a_house_edge(bets: pl.DataFrame) -> None:
    returns = bets.group_by("product").agg(
        (pl.col("payout").sum() / pl.col("amount").sum()).alias("return_to_player")
    )
    for product, return_to_player in returns.iter_rows():
        assert 0.80 < return_to_player < 1.0, (product, return_to_player)


def test_events_inside_window(events: pl.DataFrame) -> None:
    assert events["ts"].min() >= DEFAULT_START
    assert events["ts"].max() < WINDOW_END


def test_lapsing_players_stop_before_last_40_percent(events: pl.DataFrame) -> None:
    cutoff = DEFAULT_START + timedelta(days=0.6 * DAYS)
    lapsing = events.filter(pl.col("archetype") == "lapsing")
    assert lapsing.height > 0
    assert lapsing["ts"].max() < cutoff


def test_archetype_time_patterns(bets: pl.DataFrame) -> None:
    shares = bets.group_by("archetype").agg(
        night=(pl.col("ts").dt.hour() < 6).mean(),
        weekend=(pl.col("ts").dt.weekday() >= 6).mean(),
    )
    by_archetype = {row[0]: row[1:] for row in shares.iter_rows()}
    night_owl_night, _ = by_archetype["night_owl"]
    _, warrior_weekend = by_archetype["weekend_warrior"]
    casual_night, casual_weekend = by_archetype["casual"]
    assert night_owl_night > 0.6
    assert casual_night < 0.1
    assert warrior_weekend > 0.7
    assert casual_weekend < 0.45


def test_kmeans_recovers_archetypes(events: pl.DataFrame) -> None:
    features = player_features(events, WINDOW_END)
    assert features.null_count().sum_horizontal().item() == 0
    logged = features.select(
        *(pl.col(name).log1p() for name in LOG_FEATURES), *SHARE_FEATURES
    ).to_numpy()
    scaled = StandardScaler().fit_transform(logged)
    model = KMeans(n_clusters=len(ARCHETYPES), n_init=5, random_state=0)
    labels = model.fit_predict(scaled)
    score = adjusted_rand_score(features["archetype"].to_numpy(), labels)
    assert score >= 0.75


def test_weekend_follows_start_weekday() -> None:
    wednesday = datetime(2026, 1, 7, tzinfo=UTC)
    frame = generate_transactions(players=3_000, days=28, seed=1, start=wednesday)
    warriors = frame.filter(
        (pl.col("archetype") == "weekend_warrior") & (pl.col("event_type") == "bet")
    )
    weekend_share = (warriors["ts"].dt.weekday() >= 6).mean()
    assert weekend_share > 0.7


def test_start_is_truncated_to_midnight_utc() -> None:
    naive_afternoon = datetime(2025, 3, 1, 15, 30)
    frame = generate_transactions(players=200, days=3, seed=0, start=naive_afternoon)
    midnight = datetime(2025, 3, 1, tzinfo=UTC)
    assert frame["ts"].min() >= midnight
    assert frame["ts"].max() < midnight + timedelta(days=3)


def test_single_player_single_day() -> None:
    frame = generate_transactions(players=1, days=1)
    assert frame["player_id"].unique().to_list() == ["player-000000"]
    assert "bet" in frame["event_type"].to_list()
    assert frame["ts"].max() < DEFAULT_START + timedelta(days=1)


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"players": 0, "days": 5}, ValueError),
        ({"players": 5, "days": 0}, ValueError),
        ({"players": 5, "days": 5, "seed": -1}, ValueError),
        ({"players": 2.5, "days": 5}, TypeError),
        ({"players": True, "days": 5}, TypeError),
        ({"players": 5, "days": 5, "start": "2026-01-05"}, TypeError),
    ],
)
def test_invalid_arguments_raise(arguments: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        generate_transactions(**arguments)


@pytest.mark.parametrize("show_progress", [False, True])
def test_write_synthetic_round_trip(tmp_path, show_progress: bool) -> None:
    target = tmp_path / "nested" / "events.parquet"
    rows = write_synthetic(
        target, players=150, days=10, seed=2, show_progress=show_progress
    )
    written = pl.read_parquet(target)
    assert rows == written.height
    assert written.equals(generate_transactions(players=150, days=10, seed=2))


def test_amounts_scale_with_archetype(bets: pl.DataFrame) -> None:
    median_stake = dict(
        bets.group_by("archetype").agg(pl.col("amount").median()).iter_rows()
    )
    assert median_stake["high_roller"] > 20 * median_stake["casual"]


def test_docstring_examples_pass() -> None:
    result = doctest.testmod(synthetic, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_bets_per_player_vary_within_archetype(bets: pl.DataFrame) -> None:
    counts = bets.group_by("player_id", "archetype").agg(pl.len())
    spread = counts.group_by("archetype").agg(pl.col("len").std().alias("std"))
    assert (spread["std"] > 0).all()
