"""The crmbet command, run in-process with Typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from crmbet.cli import app
from crmbet.config import Settings
from crmbet.events.pseudonym import Pseudonymizer

pytestmark = pytest.mark.integration
runner = CliRunner()


def test_features_list_shows_every_feature() -> None:
    result = runner.invoke(app, ["features", "list"])
    assert result.exit_code == 0, result.output
    assert "registered features" in result.output
    assert "loss_chasing_rate" in result.output


def test_features_lineage_prints_json() -> None:
    result = runner.invoke(app, ["features", "lineage", "win_rate"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["state_fields"] == ["n_wins", "n_bets"]


def test_features_lineage_unknown_name_fails() -> None:
    result = runner.invoke(app, ["features", "lineage", "nope"])
    assert result.exit_code == 2


def test_train_rejects_bad_k(settings: Settings, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--input", str(tmp_path), "--k", "many"])
    assert result.exit_code != 0
    assert "--k" in result.output


def test_demo_generate_train_predict_segments_report(
    settings: Settings, tmp_path: Path
) -> None:
    demo = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo.html")])
    assert demo.exit_code == 0, demo.output
    assert "Night Owl" in demo.output
    # MLflow's own prints and download bars stay out of the command's output.
    for noise in ("Successfully registered model", "Downloading artifacts"):
        assert noise not in demo.output
    assert (tmp_path / "demo.html").stat().st_size > 10_000

    data = tmp_path / "synthetic.parquet"
    generated = runner.invoke(
        app,
        [
            "generate",
            "--players",
            "600",
            "--days",
            "14",
            "--seed",
            "3",
            "--out",
            str(data),
        ],
    )
    assert generated.exit_code == 0, generated.output
    trained = runner.invoke(app, ["train", "--input", str(data), "--k", "5"])
    assert trained.exit_code == 0, trained.output
    assert "adjusted Rand index" in trained.output
    assert "model version 2" in trained.output

    segments = runner.invoke(app, ["segments", "--model", "2"])
    assert segments.exit_code == 0, segments.output
    assert "version 2" in segments.output

    predicted = runner.invoke(
        app, ["predict", "--player", "player-000001", "--model", "2"]
    )
    assert predicted.exit_code == 0, predicted.output
    body = json.loads(predicted.output)
    assert body["feature_source"] == "online_store"
    assert body["feature_status"] == "fresh"
    assert body["model_version"] == "2"

    # The pseudonym printed in outputs finds the same player.
    pseudonym = Pseudonymizer(settings.pseudonym_key_bytes()).pseudonymize(
        "player-000001"
    )
    by_pseudonym = runner.invoke(
        app, ["predict", "--player", pseudonym, "--model", "2"]
    )
    assert by_pseudonym.exit_code == 0, by_pseudonym.output
    assert json.loads(by_pseudonym.output)["feature_source"] == "online_store"
    assert json.loads(by_pseudonym.output)["segment"] == body["segment"]

    unknown = runner.invoke(app, ["predict", "--player", "nobody", "--model", "2"])
    assert unknown.exit_code == 0, unknown.output
    cold = json.loads(unknown.output)
    assert (cold["feature_source"], cold["feature_status"]) == ("cold_start", "unknown")

    out = tmp_path / "predictions.csv"
    batch = runner.invoke(app, ["predict", "--input", str(data), "--out", str(out)])
    assert batch.exit_code == 0, batch.output
    assert out.read_text().count("\n") == 601
    assert "source_player_id" not in out.read_text()
    assert "600 players by segment" in batch.output

    with_ids = tmp_path / "predictions.parquet"
    batch = runner.invoke(
        app,
        [
            "predict",
            "--input",
            str(data),
            "--format",
            "parquet",
            "--out",
            str(with_ids),
            "--source-ids",
        ],
    )
    assert batch.exit_code == 0, batch.output
    table = pl.read_parquet(with_ids)
    assert table.columns[:2] == ["source_player_id", "player_id"]
    assert table["source_player_id"].null_count() == 0
    raw = pl.read_parquet(data)["player_id"].unique().sort().to_list()
    assert table["source_player_id"].sort().to_list() == raw
    pseudonymizer = Pseudonymizer(settings.pseudonym_key_bytes())
    first = table.row(0, named=True)
    assert pseudonymizer.pseudonymize(first["source_player_id"]) == first["player_id"]

    report = runner.invoke(app, ["report", "--out", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output
    html = (tmp_path / "r.html").read_text()
    assert html.count("data:image/png;base64") == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--input", "missing.csv"], "not found"),
        (["train", "--input", "x.csv", "--k", "1"], "at least 2"),
        (["train", "--input", "x.csv", "--k-min", "9", "--k-max", "3"], "swap them"),
        (["train", "--input", "x.csv", "--mapping", "{bad"], "not valid JSON"),
    ],
)
def test_cli_errors_are_one_line(
    settings: Settings, tmp_path: Path, monkeypatch, args: list[str], message: str
) -> None:
    import os
    import subprocess
    import sys

    import crmbet

    monkeypatch.chdir(tmp_path)
    source = str(Path(crmbet.__file__).resolve().parents[1])
    env = os.environ | {"PYTHONPATH": source}
    (tmp_path / "x.csv").write_text("event_id,player_id,ts,event_type,amount\n")
    done = subprocess.run(
        [sys.executable, "-m", "crmbet", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert message in output
    assert "Traceback" not in output


def test_train_reports_repeated_deliveries(settings: Settings, tmp_path: Path) -> None:
    rows = [f"e{i},p{i % 5},2026-01-10T1{i % 10}:00:00Z,bet,{i}" for i in range(10)]
    source = tmp_path / "twice.csv"
    source.write_text(
        "event_id,player_id,ts,event_type,amount\n" + "\n".join(rows + rows) + "\n"
    )
    trained = runner.invoke(app, ["train", "--input", str(source), "--k", "2"])
    assert trained.exit_code == 0, trained.output
    assert "events=20 (10 repeated deliveries counted once)" in " ".join(
        trained.output.split()
    )


def test_train_promote_moves_champion(settings: Settings, tmp_path: Path) -> None:
    data = tmp_path / "s.parquet"
    assert (
        runner.invoke(
            app, ["generate", "--players", "300", "--days", "7", "--out", str(data)]
        ).exit_code
        == 0
    )
    first = runner.invoke(app, ["train", "--input", str(data), "--k", "3"])
    assert "version 1 is the champion" in first.output
    second = runner.invoke(app, ["train", "--input", str(data), "--k", "4"])
    assert "predictions still use the champion, version 1" in second.output
    third = runner.invoke(app, ["train", "--input", str(data), "--k", "4", "--promote"])
    assert "version 3 is the champion" in third.output
