"""Player state: fold against hand computations and the merge law."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from crmbet.events.schema import EVENT_SCHEMA
from crmbet.features import state as state_module
from crmbet.features.state import (
    DECAY_WINDOWS,
    SEQUENCE_FIELDS,
    STATE_FIELDS,
    empty_states,
    fold,
    fold_with_first_rows,
    merge,
)

START = datetime(2024, 1, 1, tzinfo=UTC)


def _events(rows: list[dict[str, object]]) -> pl.DataFrame:
    base = {
        "payout": 0.0,
        "bonus_amount": 0.0,
        "product": None,
        "multiplier": None,
        "game": None,
        "session_id": None,
        "channel": None,
    }
    return pl.DataFrame([base | row for row in rows], schema=EVENT_SCHEMA)


def _bet(
    i: int,
    player: str,
    minutes: float,
    stake: float,
    payout: float,
    product: str = "casino",
    multiplier: float | None = None,
) -> dict[str, object]:
    return {
        "event_id": f"e{i}",
        "player_id": player,
        "ts": START + timedelta(minutes=minutes),
        "event_type": "bet",
        "amount": stake,
        "payout": payout,
        "product": product,
        "multiplier": multiplier,
    }


def test_fold_counts_and_sums_by_hand() -> None:
    events = _events(
        [
            _bet(1, "a", 0, 10, 0),
            _bet(2, "a", 10, 20, 50),  # larger stake 10 min after a loss: a chase
            _bet(3, "a", 120, 5, 0, "crash"),
            {
                "event_id": "e4",
                "player_id": "a",
                "ts": START,
                "event_type": "deposit",
                "amount": 100.0,
            },
            _bet(5, "b", 0, 1, 2, "crash", 2.0),
        ]
    )
    states = fold(events)
    a = states.filter(pl.col("player_id") == "a").row(0, named=True)
    assert a["n_events"] == 4
    assert a["n_bets"] == 3
    assert a["n_wins"] == 1
    assert a["stake_sum"] == 35
    assert a["stake_sq_sum"] == 100 + 400 + 25
    assert a["stake_max"] == 20
    assert a["payout_sum"] == 50
    assert a["n_deposits"] == 1
    assert a["deposit_sum"] == 100
    assert a["n_chases"] == 1
    assert a["n_casino_bets"] == 2
    assert a["n_crash_bets"] == 1
    assert a["hour_00"] == 2
    assert a["hour_02"] == 1
    assert a["wday_0"] == 3  # 2024-01-01 was a Monday
    b = states.filter(pl.col("player_id") == "b").row(0, named=True)
    assert b["n_cashouts"] == 1
    assert b["cashout_log_sum"] == pytest.approx(np.log(2.0))


def test_fold_ignores_input_order() -> None:
    rows = [
        _bet(1, "a", 0, 10, 0),
        _bet(2, "a", 10, 20, 0),
        _bet(3, "a", 20, 30, 0),
        _bet(4, "a", 25, 5, 0),
    ]
    expected = fold(_events(rows)).row(0, named=True)
    reversed_state = fold(_events(rows[::-1])).row(0, named=True)
    assert expected["n_chases"] == 2
    assert reversed_state == expected
    assert expected["first_bet_stake"] == 10
    assert expected["last_bet_stake"] == 5


def test_fold_counts_a_duplicate_delivery_once(
    bustabit_events: pl.DataFrame,
) -> None:
    # The whole file delivered twice, plus a third copy of its first 1,000 rows.
    replayed = pl.concat(
        [bustabit_events, bustabit_events.head(1000), bustabit_events]
    ).sample(fraction=1.0, shuffle=True, seed=3)
    assert_frame_equal(fold(replayed), fold(bustabit_events), rtol=1e-9)


@pytest.mark.parametrize("order", ["time", "shuffled"])
def test_first_rows_point_at_each_players_first_event(
    bustabit_events: pl.DataFrame, order: str
) -> None:
    events = (
        bustabit_events.sort("ts", "event_id")
        if order == "time"
        else bustabit_events.sample(fraction=1.0, shuffle=True, seed=5)
    )
    states, first_rows = fold_with_first_rows(events)
    assert_frame_equal(states, fold(events))
    assert events["player_id"].gather(first_rows).equals(states["player_id"])
    first_seen = events["ts"].gather(first_rows).dt.epoch("us") / 1e6
    assert first_seen.to_list() == states["first_ts"].to_list()


def test_fold_same_for_time_ordered_and_shuffled_input(
    bustabit_events: pl.DataFrame,
) -> None:
    # Time-ordered input takes the sort by player alone, shuffled input the
    # sort on player, time and event id; replays must drop in both.
    replayed = pl.concat([bustabit_events, bustabit_events.head(1000)])
    in_time_order = replayed.sort("ts", "event_id")
    shuffled = replayed.sample(fraction=1.0, shuffle=True, seed=4)
    assert_frame_equal(fold(in_time_order), fold(shuffled), rtol=1e-9)
    assert_frame_equal(fold(in_time_order), fold(bustabit_events), rtol=1e-9)


def test_fold_orders_same_time_bets_by_event_id() -> None:
    # In time order, but the tie at minute 10 is not in event-id order.
    rows = [
        _bet(1, "a", 0, 10, 0),
        _bet(3, "a", 10, 30, 0),
        _bet(2, "a", 10, 20, 0),
    ]
    state = fold(_events(rows)).row(0, named=True)
    assert state["last_bet_stake"] == 30
    assert state["n_chases"] == 2


def test_fold_leaves_bet_fields_null_without_bets() -> None:
    deposit = {
        "event_id": "d1",
        "player_id": "a",
        "ts": START,
        "event_type": "deposit",
        "amount": 50.0,
    }
    state = fold(_events([deposit])).row(0, named=True)
    assert state["first_bet_ts"] is None
    assert state["last_bet_lost"] is None
    assert state["n_chases"] == 0
    assert state["deposit_max"] == 50


def test_fold_keeps_distinct_events_with_the_same_time() -> None:
    rows = [_bet(1, "a", 0, 10, 0), _bet(2, "a", 0, 10, 0), _bet(1, "a", 0, 10, 0)]
    state = fold(_events(rows)).row(0, named=True)
    assert state["n_bets"] == 2
    assert state["stake_sum"] == 20


def test_fold_decayed_sum_by_hand() -> None:
    events = _events([_bet(1, "a", 0, 10, 0), _bet(2, "a", 60 * 24 * 7, 10, 0)])
    state = fold(events).row(0, named=True)
    # The first stake is one 7-day time constant older than the anchor.
    assert state["stake_d7d"] == pytest.approx(10 + 10 * np.exp(-1))
    assert state["stake_d30d"] == pytest.approx(10 + 10 * np.exp(-7 / 30))


def test_fold_of_nothing_is_empty() -> None:
    assert fold(_events([])).height == 0


def test_merge_with_empty_is_identity(bustabit_events: pl.DataFrame) -> None:
    states = fold(bustabit_events.head(500))
    assert_frame_equal(merge(states, empty_states()), states)
    assert_frame_equal(merge(empty_states(), states), states)


def test_merge_law_on_bustabit_time_split(bustabit_events: pl.DataFrame) -> None:
    ordered = bustabit_events.sort("ts", "event_id")
    cut = ordered["ts"][ordered.height // 3]
    before = ordered.filter(pl.col("ts") < cut)
    after = ordered.filter(pl.col("ts") >= cut)
    assert_frame_equal(merge(fold(before), fold(after)), fold(ordered), rtol=1e-9)


def test_merge_law_on_interleaved_split_except_sequence(
    bustabit_events: pl.DataFrame,
) -> None:
    shuffled = bustabit_events.sample(fraction=1.0, shuffle=True, seed=3)
    half = shuffled.height // 2
    merged = merge(fold(shuffled[:half]), fold(shuffled[half:]))
    whole = fold(bustabit_events)
    others = [name for name in STATE_FIELDS if name not in SEQUENCE_FIELDS]
    assert_frame_equal(
        merged.select("player_id", *others),
        whole.select("player_id", *others),
        rtol=1e-9,
    )


def test_merge_is_associative(bustabit_events: pl.DataFrame) -> None:
    ordered = bustabit_events.sort("ts", "event_id")
    thirds = [ordered[i * 16_000 : (i + 1) * 16_000] for i in range(3)]
    thirds[2] = ordered[32_000:]
    a, b, c = (fold(part) for part in thirds)
    assert_frame_equal(merge(merge(a, b), c), merge(a, merge(b, c)), rtol=1e-9)


EVENT_TYPES = st.sampled_from(
    ["bet", "bet", "bet", "deposit", "withdrawal", "bonus", "cashback"]
)


@st.composite
def event_tables(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(min_value=2, max_value=60))
    rows = []
    for i in range(n):
        kind = draw(EVENT_TYPES)
        stake = draw(st.floats(min_value=0, max_value=1e5, allow_nan=False))
        row: dict[str, object] = {
            "event_id": f"h{i}",
            "player_id": draw(st.sampled_from(["p1", "p2", "p3"])),
            "ts": START + timedelta(seconds=draw(st.integers(0, 90 * 86400))),
            "event_type": kind,
            "amount": stake,
        }
        if kind == "bet":
            product = draw(st.sampled_from(["sports", "casino", "crash"]))
            won = draw(st.booleans())
            multiplier = draw(st.floats(min_value=1, max_value=100)) if won else None
            row |= {
                "product": product,
                "payout": stake * (multiplier or 0.0),
                "multiplier": multiplier if product == "crash" else None,
                "bonus_amount": draw(st.floats(min_value=0, max_value=10)),
            }
        rows.append(row)
    return _events(rows)


@given(events=event_tables(), cut_share=st.floats(min_value=0, max_value=1))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_merge_law_property(events: pl.DataFrame, cut_share: float) -> None:
    ordered = events.sort("ts", "event_id")
    times = ordered["ts"]
    cut = times.min() + (times.max() - times.min()) * cut_share
    before = ordered.filter(pl.col("ts") < cut)
    after = ordered.filter(pl.col("ts") >= cut)
    assert_frame_equal(
        merge(fold(before), fold(after)), fold(ordered), rtol=1e-9, atol=1e-9
    )


def test_decay_windows_are_seven_and_thirty_days() -> None:
    assert DECAY_WINDOWS == {"7d": 7 * 86400.0, "30d": 30 * 86400.0}


def test_fold_hour_and_weekday_at_boundaries() -> None:
    times = [
        datetime(2024, 1, 7, 23, 59, 59, 999_999, tzinfo=UTC),  # Sunday
        datetime(2024, 1, 8, 0, 0, tzinfo=UTC),  # Monday
        datetime(1969, 12, 31, 23, 30, tzinfo=UTC),  # Wednesday, before 1970
    ]
    rows = [{**_bet(i, "a", 0, 10, 0), "ts": ts} for i, ts in enumerate(times, start=1)]
    state = fold(_events(rows)).row(0, named=True)
    assert state["hour_23"] == 2
    assert state["hour_00"] == 1
    assert state["wday_6"] == 1
    assert state["wday_0"] == 1
    assert state["wday_2"] == 1


def test_fold_survives_player_hash_collision(
    bustabit_events: pl.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = fold(bustabit_events)
    # Every player gets the same grouping hash, as in a collision.
    monkeypatch.setattr(
        state_module,
        "_player_hashes",
        lambda: (pl.col("player_id").hash(seed=0) * 0, pl.col("player_id").hash(1)),
    )
    assert_frame_equal(fold(bustabit_events), expected, rtol=1e-9)
    shuffled = bustabit_events.sample(fraction=1.0, shuffle=True, seed=5)
    assert_frame_equal(fold(shuffled), expected, rtol=1e-9)
