"""Point-in-time training sets."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

from crmbet.features import compute_features, fold
from crmbet.features.pit import point_in_time_features


@pytest.fixture(scope="module")
def events(bustabit_events: pl.DataFrame) -> pl.DataFrame:
    return bustabit_events.sort("ts").head(8000)


@pytest.fixture(scope="module")
def queries(events: pl.DataFrame) -> pl.DataFrame:
    sample = events.sample(300, seed=7).select("player_id", "ts")
    # The event's own time excludes it; one second later includes it.
    later = sample.head(50).with_columns(pl.col("ts") + timedelta(seconds=1))
    table = pl.concat([sample, later, sample.head(20)])
    return table.with_columns(pl.int_range(pl.len()).alias("label"))


def test_row_count_and_order_kept(events: pl.DataFrame, queries: pl.DataFrame) -> None:
    out = point_in_time_features(events, queries)
    assert out.height == queries.height
    assert out["label"].to_list() == queries["label"].to_list()


def test_matches_fold_of_earlier_events(
    events: pl.DataFrame, queries: pl.DataFrame
) -> None:
    out = point_in_time_features(events, queries, max_rows=2000)
    for i in (0, 5, 299, 300, 349, 360):
        row = out.row(i, named=True)
        earlier = events.filter(
            (pl.col("player_id") == row["player_id"]) & (pl.col("ts") < row["ts"])
        )
        assert row["n_prior_events"] == earlier.height
        if earlier.height == 0:
            assert row["avg_stake"] is None
            continue
        expected = compute_features(fold(earlier), as_of=row["ts"].timestamp()).row(
            0, named=True
        )
        for name, value in expected.items():
            if name != "player_id":
                assert row[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_duplicate_rows_equal(events: pl.DataFrame, queries: pl.DataFrame) -> None:
    out = point_in_time_features(events, queries, names=["avg_stake", "bet_count"])
    first, repeat = out.slice(0, 20), out.slice(350, 20)
    assert first.drop("label").equals(repeat.drop("label"))


def test_event_at_query_time_excluded(events: pl.DataFrame) -> None:
    event = events.head(1)
    at = point_in_time_features(events, event.select("player_id", "ts"))
    after = point_in_time_features(
        events, event.select("player_id", pl.col("ts") + timedelta(microseconds=1))
    )
    assert after["n_prior_events"][0] == at["n_prior_events"][0] + 1


def test_missing_columns_rejected(events: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['ts'\]"):
        point_in_time_features(events, pl.DataFrame({"player_id": ["a"]}))
