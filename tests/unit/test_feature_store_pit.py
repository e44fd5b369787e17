"""Point-in-time training sets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from crmbet.errors import QueryValidationError
from crmbet.features import FEATURES, compute_features, fold
from crmbet.features.pit import point_in_time_features, read_queries


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


@pytest.fixture(scope="module")
def player_at(events: pl.DataFrame) -> tuple[str, datetime, int]:
    """A player, a whole-second time after some of its events, and their count."""
    player = events["player_id"].value_counts(sort=True)["player_id"][0]
    times = events.filter(pl.col("player_id") == player)["ts"].sort()
    at = times[len(times) // 2].replace(microsecond=0) + timedelta(seconds=1)
    prior = events.filter((pl.col("player_id") == player) & (pl.col("ts") < at))
    assert prior.height > 0
    return player, at, prior.height


def test_numeric_ts_read_as_unix_seconds(
    events: pl.DataFrame, player_at: tuple[str, datetime, int]
) -> None:
    player, at, prior = player_at
    seconds = int(at.timestamp())

    out = point_in_time_features(
        events, pl.DataFrame({"player_id": [player], "ts": [seconds]})
    )
    as_float = point_in_time_features(
        events, pl.DataFrame({"player_id": [player] * 2, "ts": [seconds + 0.0] * 2})
    )

    assert out["ts"].to_list() == [at]
    assert out["n_prior_events"].to_list() == [prior]
    assert as_float["n_prior_events"].to_list() == [prior, prior]
    assert out["avg_stake"][0] is not None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1_638_316_800_000, r"row 2: ts=1638316800000 is too large for Unix seconds"),
        (1_638_316_800_000_000, r"row 2: ts=1638316800000000 is too large"),
        (946_684_000, r"row 2: ts=946684000 is before 2000-01-01; check the unit"),
    ],
)
def test_numeric_ts_in_wrong_unit_rejected(
    events: pl.DataFrame, value: int, message: str
) -> None:
    queries = pl.DataFrame({"player_id": ["a", "b"], "ts": [1_638_316_800, value]})
    with pytest.raises(QueryValidationError, match=message) as caught:
        point_in_time_features(events, queries)
    assert [error.row for error in caught.value.errors] == [2]


def test_mixed_iso_forms_accepted(
    events: pl.DataFrame, player_at: tuple[str, datetime, int]
) -> None:
    player, at, prior = player_at
    local = at.astimezone(timezone(timedelta(hours=2)))
    written = [
        at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        at.strftime("%Y-%m-%d %H:%M:%S"),
        local.isoformat(),
    ]
    out = point_in_time_features(
        events, pl.DataFrame({"player_id": [player] * 3, "ts": written})
    )
    assert out["ts"].to_list() == [at] * 3
    assert out["n_prior_events"].to_list() == [prior] * 3


def test_unparsable_ts_names_row_value_and_forms(events: pl.DataFrame) -> None:
    queries = pl.DataFrame(
        {
            "player_id": ["a", "b", "c"],
            "ts": ["2021-11-16T20:12:25Z", None, "yesterday"],
        }
    )
    with pytest.raises(QueryValidationError) as caught:
        point_in_time_features(events, queries)
    text = str(caught.value)
    assert "2 invalid value(s) in the query table" in text
    assert "row 2: ts=None is missing" in text
    assert (
        "row 3: ts='yesterday' is not a timestamp; write ISO 8601, e.g. "
        "2024-05-01T21:00:00Z, 2024-05-01 21:00:00 or 2024-05-01T23:00:00+02:00, "
        "or Unix seconds"
    ) in text


def test_numeric_player_ids_read_as_text(events: pl.DataFrame) -> None:
    renamed = events.with_columns(
        pl.when(pl.col("player_id") == events["player_id"][0])
        .then(pl.lit("1234"))
        .otherwise(pl.col("player_id"))
        .alias("player_id")
    )
    at = events["ts"].max() + timedelta(seconds=1)
    expected = renamed.filter(pl.col("player_id") == "1234").height
    queries = pl.DataFrame({"player_id": [1234], "ts": [at]})

    out = point_in_time_features(renamed, queries)

    assert out["player_id"].to_list() == ["1234"]
    assert out["n_prior_events"].to_list() == [expected]


def test_empty_player_ids_rejected_by_row(events: pl.DataFrame) -> None:
    at = datetime(2021, 12, 1, tzinfo=UTC)
    queries = pl.DataFrame({"player_id": ["a", None, "  "], "ts": [at] * 3})
    with pytest.raises(QueryValidationError) as caught:
        point_in_time_features(events, queries)
    assert [(error.row, error.field) for error in caught.value.errors] == [
        (2, "player_id"),
        (3, "player_id"),
    ]
    assert "row 2: player_id=None is missing" in str(caught.value)


def test_query_column_named_like_a_feature_rejected(
    events: pl.DataFrame, queries: pl.DataFrame
) -> None:
    clashing = queries.with_columns(pl.lit(1.0).alias("avg_stake"))
    with pytest.raises(ValueError, match=r"\['avg_stake'\] named like the computed"):
        point_in_time_features(events, clashing)

    own_output = point_in_time_features(events, queries, names=["bet_count"])
    with pytest.raises(ValueError, match=r"\['n_prior_events', 'bet_count'\]"):
        point_in_time_features(events, own_output, names=["bet_count"])


def test_no_query_rows_give_an_empty_table(events: pl.DataFrame) -> None:
    empty = pl.DataFrame(
        schema={"player_id": pl.String, "ts": pl.String, "label": pl.Int64}
    )
    out = point_in_time_features(events, empty)
    assert out.height == 0
    assert out.columns == ["player_id", "ts", "label", "n_prior_events", *FEATURES]
    assert out.schema["ts"] == pl.Datetime("us", "UTC")
    assert out.schema["avg_stake"] == pl.Float64


@pytest.mark.parametrize("name", ["q.CSV", "q.txt", "q.csv"])
def test_queries_csv_read_whatever_the_suffix(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("player_id,ts,label\n007,1638316800,1\n8,2021-12-01 00:00:00,0\n")
    table = read_queries(path)
    assert table["player_id"].to_list() == ["007", "8"]
    assert table["ts"].to_list() == [datetime(2021, 12, 1, tzinfo=UTC)] * 2
    assert table["label"].to_list() == [1, 0]


def test_queries_parquet_recognised_by_its_first_bytes(tmp_path: Path) -> None:
    path = tmp_path / "queries.dat"
    pl.DataFrame({"player_id": ["a"], "ts": [1_638_316_800]}).write_parquet(path)
    table = read_queries(path)
    assert table["ts"].to_list() == [datetime(2021, 12, 1, tzinfo=UTC)]


def test_queries_errors_name_the_file(tmp_path: Path) -> None:
    fake = tmp_path / "q.Parquet"
    fake.write_text("player_id,ts\na,1638316800\n")
    with pytest.raises(ValueError, match=rf"{fake} is named as Parquet but does not"):
        read_queries(fake)

    bad = tmp_path / "q.csv"
    bad.write_text("player_id,ts\na,1638316800\nb,soon\n")
    with pytest.raises(
        QueryValidationError, match=rf"in queries file {bad}:\n  row 2: ts='soon'"
    ):
        read_queries(bad)
