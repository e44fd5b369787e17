"""The embedded stream store: atomic commits, fencing and snapshots."""

from __future__ import annotations

import polars as pl
import pytest

from crmbet.features.state import fold
from crmbet.streaming.stores import Commit, EmbeddedStateStore, StaleOffsetError


def _commit(
    states: pl.DataFrame, expected: int | None, offset: int, ids: list[str]
) -> Commit:
    return Commit(
        group_id="g",
        topic="tx",
        states=states,
        offsets={0: offset},
        expected={0: expected},
        new_ids={0: ids},
        segments={"p": "Regular"},
    )


@pytest.fixture
def states(bustabit_events: pl.DataFrame) -> pl.DataFrame:
    return fold(bustabit_events.head(500))


def test_commit_stores_states_and_offsets(states):
    store = EmbeddedStateStore()
    store.commit(_commit(states, None, 500, ["a", "b"]), window=10)
    assert store.load_offsets("g", "tx", [0, 1]) == {0: 500, 1: None}
    assert store.load_dedupe_ids("g", "tx", 0) == ["a", "b"]
    assert store.states_frame().height == states.height
    assert store.get_segments(["p", "q"]) == {"p": "Regular"}


def test_commit_with_stale_offset_changes_nothing(states):
    store = EmbeddedStateStore()
    store.commit(_commit(states.head(3), None, 100, ["a"]), window=10)
    with pytest.raises(StaleOffsetError, match="expected 50"):
        store.commit(_commit(states, 50, 500, ["b"]), window=10)
    assert store.load_offsets("g", "tx", [0]) == {0: 100}
    assert store.states_frame().height == 3
    assert store.load_dedupe_ids("g", "tx", 0) == ["a"]


def test_window_keeps_newest_ids(states):
    store = EmbeddedStateStore()
    store.commit(_commit(states, None, 5, ["a", "b", "c"]), window=2)
    assert store.load_dedupe_ids("g", "tx", 0) == ["b", "c"]


def test_snapshot_restores_states_with_offsets(states, tmp_path):
    path = tmp_path / "state.zip"
    store = EmbeddedStateStore(path)
    store.commit(_commit(states, None, 500, ["a"]), window=10)
    store.snapshot()
    restored = EmbeddedStateStore(path)
    assert restored.load_offsets("g", "tx", [0]) == {0: 500}
    assert restored.load_dedupe_ids("g", "tx", 0) == ["a"]
    assert restored.get_segments(["p"]) == {"p": "Regular"}
    assert (
        restored.states_frame()
        .sort("player_id")
        .equals(store.states_frame().sort("player_id"))
    )
    assert not list(tmp_path.glob("*.tmp"))
