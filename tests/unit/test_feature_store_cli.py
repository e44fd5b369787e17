"""The ``crmbet features`` commands of the feature store."""

from __future__ import annotations

import json

import polars as pl
from typer.testing import CliRunner

from crmbet.cli import app
from crmbet.config import Settings
from crmbet.events.adapters import bundled_bustabit_path


def test_materialize_twice_then_get(settings: Settings, tmp_path) -> None:  # noqa: ANN001
    runner = CliRunner()
    source = str(bundled_bustabit_path())

    first = runner.invoke(app, ["features", "materialize", "--input", source])
    second = runner.invoke(app, ["features", "materialize", "--input", source])

    assert first.exit_code == 0, first.output
    assert "materialised 50,000 of 50,000 events" in " ".join(first.output.split())
    assert "materialised 0 of 50,000 events" in " ".join(second.output.split())
    assert (settings.home / "online_store.parquet").exists()

    got = runner.invoke(app, ["features", "get", "--player", "pd17d1eda179c"])
    assert got.exit_code == 0, got.output
    body = json.loads(got.output)
    assert body[0]["status"] == "fresh"
    assert body[0]["features"]["bet_count"] >= 1


def test_pit_command_keeps_rows(settings: Settings, tmp_path) -> None:  # noqa: ANN001
    queries = pl.DataFrame(
        {
            "player_id": ["pd17d1eda179c", "pd17d1eda179c", "nobody"],
            "ts": ["2021-12-01T00:00:00Z"] * 3,
        }
    ).with_columns(pl.col("ts").str.to_datetime(time_zone="UTC"))
    queries.write_parquet(tmp_path / "q.parquet")
    out = tmp_path / "train.parquet"

    result = CliRunner().invoke(
        app,
        [
            "features",
            "pit",
            "--input",
            str(bundled_bustabit_path()),
            "--queries",
            str(tmp_path / "q.parquet"),
            "--out",
            str(out),
        ],
    )

    assert result.exit_code == 0, result.output
    table = pl.read_parquet(out)
    assert table.height == 3
    assert table["n_prior_events"].to_list()[2] == 0
    assert table["n_prior_events"][0] > 0
    assert table["n_prior_events"][0] == table["n_prior_events"][1]


def test_materialize_reads_the_operators_own_columns_and_labels(
    settings: Settings,
    tmp_path,  # noqa: ANN001
) -> None:
    source = tmp_path / "export.csv"
    source.write_text(
        "txn,customer,when,kind,value\n"
        "t1,c1,2026-01-10T10:00:00Z,dep,50\n"
        "t2,c1,2026-01-10 10:05:00,wager,10\n"
        "t3,c2,2026-01-10T11:00:00Z,wager,5\n"
        "t4,c2,2026-01-10T11:01:00Z,spin,5\n"
    )
    mapping = {
        "columns": {
            "event_id": "txn",
            "player_id": "customer",
            "ts": "when",
            "event_type": "kind",
            "amount": "value",
        },
        "event_type_values": {"dep": "deposit", "wager": "bet"},
    }
    runner = CliRunner()
    done = runner.invoke(
        app,
        [
            "features",
            "materialize",
            "--input",
            str(source),
            "--mapping",
            json.dumps(mapping),
        ],
    )
    assert done.exit_code == 0, done.output
    # 'spin' has no translation, so its row is a dead letter; the rest land.
    assert "materialised 3 of 3 events into 2 players" in " ".join(done.output.split())

    bad = runner.invoke(
        app,
        ["features", "materialize", "--input", str(source), "--mapping", "[1]"],
    )
    assert bad.exit_code == 2
    assert "must be a JSON object" in bad.output


def test_pit_reads_unix_seconds_from_a_csv_with_an_upper_case_suffix(
    settings: Settings,
    tmp_path,  # noqa: ANN001
) -> None:
    queries = tmp_path / "q.CSV"
    queries.write_text(
        "player_id,ts,label\n"
        "pd17d1eda179c,1638316800,1\n"
        "pd17d1eda179c,2021-12-01T00:00:00Z,0\n"
    )
    out = tmp_path / "train.parquet"

    result = CliRunner().invoke(
        app,
        [
            "features",
            "pit",
            "--input",
            str(bundled_bustabit_path()),
            "--queries",
            str(queries),
            "--out",
            str(out),
        ],
    )

    assert result.exit_code == 0, result.output
    table = pl.read_parquet(out)
    assert table["label"].to_list() == [1, 0]
    assert table["n_prior_events"][0] > 0
    assert table["n_prior_events"][0] == table["n_prior_events"][1]
    assert table["avg_stake"][0] == table["avg_stake"][1]


def test_pit_reads_the_operators_own_columns(
    settings: Settings,
    tmp_path,  # noqa: ANN001
) -> None:
    source = tmp_path / "export.dat"
    source.write_text(
        "txn,customer,when,kind,value\n"
        "t1,c1,2026-01-10T10:00:00Z,wager,50\n"
        "t2,c1,2026-01-10 10:05:00,wager,10\n"
        "t3,c2,2026-01-10T11:00:00Z,wager,5\n"
    )
    mapping = {
        "columns": {
            "event_id": "txn",
            "player_id": "customer",
            "ts": "when",
            "event_type": "kind",
            "amount": "value",
        },
        "event_type_values": {"wager": "bet"},
    }
    queries = tmp_path / "q.csv"
    queries.write_text("player_id,ts\nc1,2026-01-10T10:01:00Z\nc1,2026-01-11\n")
    out = tmp_path / "train.parquet"

    result = CliRunner().invoke(
        app,
        [
            "features",
            "pit",
            "--input",
            str(source),
            "--format",
            "csv",
            "--mapping",
            json.dumps(mapping),
            "--queries",
            str(queries),
            "--out",
            str(out),
        ],
    )

    assert result.exit_code == 0, result.output
    table = pl.read_parquet(out)
    assert table["n_prior_events"].to_list() == [1.0, 2.0]
    assert table["avg_stake"].to_list() == [50.0, 30.0]


def test_pit_out_folder_rejected_with_its_path(
    settings: Settings,
    tmp_path,  # noqa: ANN001
) -> None:
    queries = tmp_path / "q.csv"
    queries.write_text("player_id,ts\npd17d1eda179c,2021-12-01T00:00:00Z\n")
    folder = tmp_path / "sets"
    folder.mkdir()

    result = CliRunner().invoke(
        app,
        [
            "features",
            "pit",
            "--input",
            str(bundled_bustabit_path()),
            "--queries",
            str(queries),
            "--out",
            str(folder),
        ],
        # Wide enough that the error box does not wrap the path.
        env={"COLUMNS": "500"},
    )

    assert result.exit_code == 2
    assert f"--out {folder} is a folder" in " ".join(result.output.split())
