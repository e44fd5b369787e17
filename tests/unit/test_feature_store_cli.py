"""The ``crmbet features`` commands of the feature store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from click.testing import Result
from typer.testing import CliRunner

from crmbet.cli import app
from crmbet.config import Settings, get_settings
from crmbet.events.adapters import bundled_bustabit_path
from crmbet.features.materialize import KeyFingerprintMismatchError, materialize
from crmbet.features.online import MemoryOnlineStore, snapshot_lock
from crmbet.training import pseudonymizer_from, read_source

#: Lets an exception out of ``CliRunner.invoke`` so a test can match it.
RAISE = {"catch_exceptions": False}


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


def test_pit_reads_upper_case_csv_seconds(
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


def _materialize(runner: CliRunner, source: str, *extra: str) -> Result:
    return runner.invoke(app, ["features", "materialize", "--input", source, *extra])


def _bets_csv(path: Path, players: dict[str, int]) -> Path:
    """Write bets numbered 1, 2, ... within each player, one minute apart."""
    lines = ["event_id,player_id,ts,event_type,amount,payout"]
    for player, count in players.items():
        for i in range(1, count + 1):
            lines.append(f"{i},{player},2026-01-10T10:{i:02d}:00Z,bet,10,0")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_materialize_keeps_ids_numbered_per_player(
    settings: Settings, tmp_path: Path
) -> None:
    source = _bets_csv(tmp_path / "bets.csv", {"alice": 2, "bob": 3})

    result = _materialize(CliRunner(), str(source))

    assert result.exit_code == 0, result.output
    assert "materialised 5 of 5 events into 2 players" in " ".join(
        result.output.split()
    )


def test_materialize_of_only_invalid_records_exits_1(
    settings: Settings, tmp_path: Path
) -> None:
    source = _bets_csv(tmp_path / "bets.csv", {"alice": 2, "bob": 3})
    source.write_text(source.read_text().replace(",bet,", ",wager,"))

    result = _materialize(CliRunner(), str(source))

    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "none of the 5 records" in text
    assert "dead letters" in text
    assert not (settings.home / "online_store.parquet").exists()


def test_materialize_counts_invalid_records(settings: Settings, tmp_path: Path) -> None:
    source = _bets_csv(tmp_path / "bets.csv", {"alice": 2, "bob": 3})
    lines = source.read_text().splitlines()
    lines[1] = lines[1].replace(",bet,", ",wager,")
    source.write_text("\n".join(lines) + "\n")

    result = _materialize(CliRunner(), str(source))

    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "1 of 5 records" in text
    assert "materialised 4 of 4 events" in text


def test_materialize_under_another_key_is_refused(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = str(_bets_csv(tmp_path / "bets.csv", {"alice": 2}))
    runner = CliRunner()
    first = _materialize(runner, source)
    monkeypatch.setenv("CRMBET_PSEUDONYM_KEY", "another-key-" + "x" * 32)
    get_settings.cache_clear()

    with pytest.raises(KeyFingerprintMismatchError) as caught:
        runner.invoke(app, ["features", "materialize", "--input", source], **RAISE)
    hint = runner.invoke(app, ["features", "get", "-p", "alice"])

    assert first.exit_code == 0, first.output
    new = pseudonymizer_from(get_settings()).fingerprint
    message = str(caught.value)
    assert new in message
    assert "CRMBET_PSEUDONYM_KEY" in message
    assert "another-key" not in message
    assert "new store" in message
    assert json.loads(hint.stdout)[0]["status"] == "unknown"
    assert new in hint.stderr
    assert "fingerprint" in hint.stderr


def test_get_on_an_empty_store_hints_to_materialize(settings: Settings) -> None:
    result = CliRunner().invoke(app, ["features", "get", "-p", "alice"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["status"] == "unknown"
    assert "empty" in result.stderr
    assert "crmbet features materialize" in " ".join(result.stderr.split())


def test_get_trims_ids_warns_past_as_of(settings: Settings, tmp_path: Path) -> None:
    runner = CliRunner()
    _materialize(runner, str(_bets_csv(tmp_path / "bets.csv", {"alice": 3})))
    before_last = "1768039320"  # 2026-01-10T10:02:00Z, before event 3

    latest = runner.invoke(app, ["features", "get", "-p", " alice "])
    past = runner.invoke(
        app, ["features", "get", "-p", "alice", "--as-of", before_last]
    )

    assert latest.exit_code == 0, latest.output
    assert json.loads(latest.stdout)[0]["player"] == "alice"
    assert json.loads(latest.stdout)[0]["status"] == "fresh"
    assert latest.stderr == ""
    assert past.exit_code == 0, past.output
    assert json.loads(past.stdout)[0]["features"]["bet_count"] == 3
    assert "crmbet features pit" in " ".join(past.stderr.split())


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "1768039320000"])
def test_get_refuses_invalid_as_of(settings: Settings, value: str) -> None:
    result = CliRunner().invoke(
        app, ["features", "get", "-p", "alice", "--as-of", value]
    )

    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "error: --as-of:" in text
    assert "Unix seconds" in text


def test_get_refuses_an_empty_player_id(settings: Settings) -> None:
    result = CliRunner().invoke(app, ["features", "get", "-p", "  "])

    assert result.exit_code == 2
    assert "--player got an empty id" in " ".join(result.output.split())


def test_get_exits_1_store_unreachable(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A port that was free a moment ago, so no server listens on it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("CRMBET_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    get_settings.cache_clear()

    result = CliRunner().invoke(app, ["features", "get", "-p", "a", "-p", "b"])

    assert result.exit_code == 1, result.output
    assert [row["status"] for row in json.loads(result.stdout)] == ["unavailable"] * 2
    assert "unreachable" in result.stderr


def test_concurrent_materialize_waits_and_merges(
    settings: Settings, tmp_path: Path
) -> None:
    first = _bets_csv(tmp_path / "first.csv", {"alice": 2})
    second = _bets_csv(tmp_path / "second.csv", {"bob": 3})
    snapshot = settings.home / "online_store.parquet"
    environment = {**os.environ, "CRMBET_HOME": str(settings.home)}
    environment["PYTHONPATH"] = os.pathsep.join(sys.path)

    with snapshot_lock(snapshot):
        other = subprocess.Popen(
            [sys.executable, "-m", "crmbet", "features", "materialize", "-i", second],
            env=environment,
            stderr=subprocess.PIPE,
            text=True,
        )
        waiting = ""
        while other.stderr and "waiting" not in waiting:
            line = other.stderr.readline()
            if not line:
                break
            waiting += line
        # Read and written while the other run waits for the lock.
        store = MemoryOnlineStore()
        materialize(read_source(first, settings=settings).events, store)
        store.snapshot(snapshot)
    _, rest = other.communicate(timeout=120)

    assert other.returncode == 0, waiting + rest
    assert "waiting" in waiting
    players = MemoryOnlineStore.from_snapshot(snapshot).get_states_frame(
        [pseudonymizer_from(settings).pseudonymize(p) for p in ("alice", "bob")]
    )
    assert sorted(players["n_events"].to_list()) == [2.0, 3.0]
