"""Fixtures of the scale-out tests: synthetic transactions and a local-engine job."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from crmbet.events.pseudonym import Pseudonymizer
from crmbet.events.synthetic import generate_transactions
from crmbet.scale.engines import LocalEngine
from crmbet.scale.job import FeatureJob, compute_player_features

#: Rows per ingest task, small so that the 2,000-player data makes several tasks.
BATCH_SIZE = 10_000


@pytest.fixture(scope="session")
def transactions() -> pl.DataFrame:
    """Two weeks of synthetic transactions of 2,000 players (about 53,000 rows)."""
    return generate_transactions(players=2000, days=14, seed=1)


@pytest.fixture(scope="session")
def transactions_path(
    transactions: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("source") / "transactions.parquet"
    transactions.write_parquet(path)
    return path


@pytest.fixture(scope="session")
def local_job(
    transactions_path: Path,
    pseudonymizer: Pseudonymizer,
    tmp_path_factory: pytest.TempPathFactory,
) -> FeatureJob:
    """The features of ``transactions_path`` computed by the local engine."""
    return compute_player_features(
        transactions_path,
        engine=LocalEngine(),
        work_dir=tmp_path_factory.mktemp("local"),
        pseudonymizer=pseudonymizer,
        n_buckets=3,
        batch_size=BATCH_SIZE,
    )
