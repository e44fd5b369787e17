"""Fixtures of the lifecycle tests: bustabit halves and a registry with a champion."""

from __future__ import annotations

import polars as pl
import pytest

from crmbet.config import Settings
from crmbet.models.registry import ModelRegistry
from crmbet.training import train_from_events

#: Warnings MLflow raises about the type hints of the registry's pyfunc
#: wrapper, which belongs to the registry, not to the code under test here.
MLFLOW_TYPE_HINT_WARNINGS = (
    "ignore:.*Any type hint is inferred:UserWarning",
    "ignore:.*Type hint used in the model's predict function:UserWarning",
    "ignore:Failed to infer signature from type hint:UserWarning",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration/lifecycle" in item.nodeid:
            for rule in MLFLOW_TYPE_HINT_WARNINGS:
                item.add_marker(pytest.mark.filterwarnings(rule))


@pytest.fixture(scope="module")
def event_halves(bustabit_events) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The bustabit events split at the median time: first and second half."""
    events = bustabit_events.sort("ts")
    middle = events["ts"][events.height // 2]
    return events.filter(pl.col("ts") < middle), events.filter(pl.col("ts") >= middle)


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory) -> Settings:
    """Settings with a registry of their own, shared by the tests of one module."""
    return Settings(home=tmp_path_factory.mktemp("lifecycle") / "home")


@pytest.fixture(scope="module")
def champion_registry(module_settings, event_halves) -> ModelRegistry:
    """A registry whose champion was trained on the first half of the events."""
    registry = ModelRegistry(module_settings)
    train_from_events(event_halves[0], settings=module_settings, k=5, registry=registry)
    return registry
