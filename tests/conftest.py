"""Shared fixtures: an isolated crmbet home, a test key and the bustabit events."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

# A fixed test key keeps pseudonyms stable across tests and avoids the
# development-key warning, which the test settings turn into an error.
os.environ.setdefault("CRMBET_PSEUDONYM_KEY", "crmbet-test-key-0123456789abcdef")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

from crmbet.config import Settings, get_settings  # noqa: E402
from crmbet.events.adapters import bundled_bustabit_path, ingest  # noqa: E402
from crmbet.events.pseudonym import Pseudonymizer  # noqa: E402

TEST_KEY = os.environ["CRMBET_PSEUDONYM_KEY"].encode()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose home, registry and snapshots live in a temporary folder."""
    monkeypatch.setenv("CRMBET_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def pseudonymizer() -> Pseudonymizer:
    return Pseudonymizer(TEST_KEY)


@pytest.fixture(scope="session")
def bustabit_events(pseudonymizer: Pseudonymizer) -> pl.DataFrame:
    """The 50,000 bundled bustabit bets as canonical events."""
    return ingest(bundled_bustabit_path(), pseudonymizer=pseudonymizer).events
