"""The ``crmbet scale`` commands."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from crmbet.cli import app

pytestmark = pytest.mark.integration


def test_scale_features_command(
    transactions_path: Path, tmp_path: Path, settings
) -> None:
    work_dir = tmp_path / "job"
    result = CliRunner().invoke(
        app,
        [
            "scale",
            "features",
            "--input",
            str(transactions_path),
            "--engine",
            "local",
            "--work-dir",
            str(work_dir),
            "--buckets",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2,000 players in 2 buckets" in result.output
    features = pl.read_parquet(work_dir / "features" / "**" / "*.parquet")
    assert features.height == 2000


def test_scale_rejects_unknown_engine(transactions_path: Path, settings) -> None:
    result = CliRunner().invoke(
        app,
        [
            "scale",
            "train",
            "--input",
            str(transactions_path),
            "--engine",
            "spark",
        ],
    )
    assert result.exit_code == 2
    assert "'local' or 'dask'" in result.output


def test_scale_train_command(transactions_path: Path, tmp_path: Path, settings) -> None:
    work_dir = tmp_path / "job"
    result = CliRunner().invoke(
        app,
        [
            "scale",
            "train",
            "--input",
            str(transactions_path),
            "--engine",
            "local",
            "--work-dir",
            str(work_dir),
            "--k",
            "4",
            "--no-register",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "local engine, k-means on sklearn" in result.output
    assert "trained on all players" in result.output
    segments = pl.read_parquet(work_dir / "segments" / "**" / "*.parquet")
    assert segments.height == 2000
