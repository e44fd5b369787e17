"""NumPy fold and merge of micro-batches against the Polars fold and merge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from crmbet.events.schema import EVENT_SCHEMA
from crmbet.features.state import STATE_FIELDS, fold, merge
from crmbet.streaming.state_matrix import (
    FIELD_NAMES,
    StateMatrix,
    fold_events,
    merge_states,
)

START = datetime(2024, 1, 1, tzinfo=UTC)
EVENT_TYPES = st.sampled_from(
    ["bet", "bet", "bet", "deposit", "withdrawal", "bonus", "cashback"]
)


@st.composite
def event_tables(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(min_value=1, max_value=80))
    rows = []
    for i in range(n):
        kind = draw(EVENT_TYPES)
        stake = draw(st.floats(min_value=0, max_value=1e5, allow_nan=False))
        row: dict[str, object] = {
            "event_id": f"h{draw(st.integers(0, 10_000))}-{i}",
            "player_id": draw(st.sampled_from(["p1", "p2", "p3", "p4"])),
            # Few distinct times, so that ties are common.
            "ts": START + timedelta(seconds=draw(st.sampled_from([0, 60, 3600])) * i),
            "event_type": kind,
            "amount": stake,
            "payout": 0.0,
            "bonus_amount": 0.0,
            "product": None,
            "multiplier": None,
            "game": None,
            "session_id": None,
            "channel": None,
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
    return pl.DataFrame(rows, schema=EVENT_SCHEMA)


def _same(matrix: StateMatrix, frame: pl.DataFrame) -> None:
    assert_frame_equal(matrix.to_frame(), frame, rtol=1e-9, atol=1e-9)


def test_field_names_cover_state_fields() -> None:
    assert FIELD_NAMES == list(STATE_FIELDS)


def test_fold_matches_polars_on_bustabit(bustabit_events: pl.DataFrame) -> None:
    _same(fold_events(bustabit_events), fold(bustabit_events))


def test_fold_of_nothing_is_empty(bustabit_events: pl.DataFrame) -> None:
    folded = fold_events(bustabit_events.head(0))
    assert len(folded) == 0
    assert folded.to_frame().height == 0


def test_merge_matches_polars_on_time_split(bustabit_events: pl.DataFrame) -> None:
    ordered = bustabit_events.sort("ts", "event_id")
    before, after = ordered.head(30_000), ordered.tail(20_000)
    stored = StateMatrix.from_frame(fold(before))
    batch = fold_events(after)
    known = set(batch.player_ids)
    stored_of_batch = StateMatrix.from_frame(
        fold(before).filter(pl.col("player_id").is_in(known))
    )
    merged = merge_states(stored_of_batch, batch)
    expected = merge(fold(before), fold(after)).filter(pl.col("player_id").is_in(known))
    _same(merged, expected)
    assert len(stored) > len(stored_of_batch)


def test_matrix_frame_round_trip(bustabit_events: pl.DataFrame) -> None:
    states = fold(bustabit_events.head(5_000))
    matrix = StateMatrix.from_frame(states)
    assert np.isnan(matrix.column("first_bet_ts")).sum() == (
        states["first_bet_ts"].null_count()
    )
    assert_frame_equal(matrix.to_frame(), states)


@given(events=event_tables(), cut_share=st.floats(min_value=0, max_value=1))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fold_and_merge_match_polars(events: pl.DataFrame, cut_share: float) -> None:
    _same(fold_events(events), fold(events))
    cut = int(events.height * cut_share)
    # Row order, not time order: the two parts may interleave in time.
    before, after = events.head(cut), events.tail(events.height - cut)
    batch = fold_events(after)
    stored = fold(before).filter(pl.col("player_id").is_in(batch.player_ids))
    merged = merge_states(StateMatrix.from_frame(stored), batch)
    expected = merge(fold(before), fold(after)).filter(
        pl.col("player_id").is_in(merged.player_ids)
    )
    _same(merged, expected)
