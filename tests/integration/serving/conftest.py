"""Fixtures of the serving tests: a registry with two versions and live HTTP servers."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from serving_support import (
    API_KEY,
    JWT_SECRET,
    LiveServer,
    Trained,
    make_system,
    run_server,
)

from crmbet.config import Settings
from crmbet.features.online import MemoryOnlineStore
from crmbet.training import train_from_events


@pytest.fixture(scope="session")
def trained(
    tmp_path_factory: pytest.TempPathFactory, bustabit_events: pl.DataFrame
) -> Trained:
    """A registry with two versions of the bustabit model, and a store snapshot."""
    home = tmp_path_factory.mktemp("serving") / "home"
    settings = Settings(home=home)
    with warnings.catch_warnings():
        # MLflow warns about its own pyfunc type hints while logging a bundle.
        warnings.simplefilter("ignore")
        first = train_from_events(
            bustabit_events, settings=settings, k=6, register=True
        )
        second = train_from_events(
            bustabit_events, settings=settings, k=5, register=True
        )
    store = MemoryOnlineStore()
    store.put_states(first.states)
    store.snapshot(Path(home) / "online_store.parquet")
    return Trained(settings, str(first.version), str(second.version), first.states)


@pytest.fixture(scope="session")
def secured(trained: Trained) -> Iterator[LiveServer]:
    """A server that requires an HS256 admin token and an API key for predictions."""
    system = make_system(
        trained,
        jwt_secret=JWT_SECRET,
        api_keys=[API_KEY],
        max_body_bytes=64 * 1024,
        max_batch_size=1000,
    )
    with run_server(system) as url:
        yield LiveServer(url, system)


@pytest.fixture(scope="session")
def open_server(trained: Trained) -> Iterator[LiveServer]:
    """A loopback server with authentication off (the development default)."""
    system = make_system(trained)
    with run_server(system) as url:
        yield LiveServer(url, system)


@pytest.fixture
def restore_routing(
    trained: Trained, secured: LiveServer, open_server: LiveServer
) -> Iterator[None]:
    """Roll any canary back after a test, so tests do not see each other's routing."""
    yield
    secured.system.rollback()
    secured.system.registry.set_alias("champion", trained.champion)
    secured.system.refresh()
    open_server.system.refresh()
