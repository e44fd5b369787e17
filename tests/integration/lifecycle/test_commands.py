"""The drift, retrain and ab commands through the real ``crmbet`` application."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from crmbet.cli import app
from crmbet.features.definitions import compute_features
from crmbet.features.state import fold
from crmbet.models.registry import CHAMPION, ModelRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

runner = CliRunner()


@pytest.fixture(scope="module")
def files(event_halves, tmp_path_factory):
    folder = tmp_path_factory.mktemp("drift")
    first, second = event_halves
    reference = folder / "reference.parquet"
    compute_features(fold(first)).write_parquet(reference)
    shifted = folder / "shifted.csv"
    compute_features(fold(second)).with_columns(pl.col("avg_stake") * 3.0).write_csv(
        shifted
    )
    events = folder / "events.parquet"
    second.write_parquet(events)
    return {
        "reference": reference,
        "shifted": shifted,
        "events": events,
        "first_events": folder / "first.parquet",
        "folder": folder,
    }


def test_drift_events_against_features(files, settings):
    out = files["folder"] / "stable.json"
    html = files["folder"] / "stable.html"
    result = runner.invoke(
        app,
        [
            "drift",
            "--reference",
            str(files["reference"]),
            "--current",
            str(files["events"]),
            "--json",
            str(out),
            "--no-report",
        ],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(out.read_text())
    assert body["drifted_features"] == []
    assert body["current_rows"] > 2000
    assert not html.exists()


def test_drift_fails_on_shift(files, settings):
    out = files["folder"] / "shifted.json"
    html = files["folder"] / "shifted.html"
    result = runner.invoke(
        app,
        [
            "drift",
            "--reference",
            str(files["reference"]),
            "--current",
            str(files["shifted"]),
            "--json",
            str(out),
            "--report",
            str(html),
            "--engine",
            "matplotlib",
            "--columns",
            "avg_stake,win_rate,deposit_count",
            "--fail-on-drift",
        ],
    )
    assert result.exit_code == 1, result.output
    assert json.loads(out.read_text())["drifted_features"] == ["avg_stake"]
    assert "avg_stake" in result.output
    page = html.read_text()
    assert page.count("<img") == 2
    assert "constant" in page


def test_drift_missing_file_named(files, settings):
    result = runner.invoke(
        app,
        [
            "drift",
            "--reference",
            str(files["folder"] / "nope.csv"),
            "--current",
            str(files["shifted"]),
            "--no-report",
        ],
    )
    assert result.exit_code != 0
    assert "nope.csv" in str(result.exception)


def test_retrain_then_drift_against_champion(files, settings, event_halves):
    event_halves[0].write_parquet(files["first_events"])
    first = runner.invoke(
        app,
        [
            "retrain",
            "--input",
            str(files["first_events"]),
            "--k",
            "4",
            "--register-only",
        ],
    )
    assert first.exit_code == 0, first.output
    assert "promoted to champion" in first.output
    assert "there was no champion" in first.output
    registry = ModelRegistry(settings)
    assert registry.alias_version(CHAMPION) == "1"

    out = files["folder"] / "champion.json"
    result = runner.invoke(
        app,
        [
            "drift",
            "--reference",
            "champion",
            "--current",
            str(files["events"]),
            "--json",
            str(out),
            "--no-report",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["drifted_features"] == []


def test_ab_command(tmp_path, settings):
    rng = np.random.default_rng(0)
    players = 6000
    variants = np.where(np.arange(players) % 2 == 0, "champion", "challenger")
    rates = np.where(variants == "champion", 0.10, 0.16)
    frame = pl.DataFrame(
        {
            "variant": variants,
            "player_id": [f"p{i}" for i in range(players)],
            "converted": rng.random(players) < rates,
        }
    )
    path = tmp_path / "outcomes.parquet"
    frame.write_parquet(path)
    result = runner.invoke(app, ["ab", "--outcomes", str(path), "--mde", "0.05"])
    assert result.exit_code == 0, result.output
    assert "verdict: better" in result.output
