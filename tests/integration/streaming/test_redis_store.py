"""The Redis stream store: one atomic commit, fencing and the dedupe window."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from crmbet.features.state import fold
from crmbet.streaming.state_matrix import StateMatrix
from crmbet.streaming.stores import Commit, RedisStateStore, StaleOffsetError

pytestmark = pytest.mark.integration


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
def store(redis_url, redis_namespace) -> RedisStateStore:
    return RedisStateStore(redis_url, redis_namespace)


@pytest.fixture
def states(bustabit_events: pl.DataFrame) -> pl.DataFrame:
    return fold(bustabit_events.head(500))


def test_commit_round_trips_states(store, states):
    store.commit(_commit(states, None, 500, ["a", "b"]), window=10)
    assert store.load_offsets("g", "tx", [0, 1]) == {0: 500, 1: None}
    assert store.load_dedupe_ids("g", "tx", 0) == ["a", "b"]
    assert store.get_segments(["p", "q"]) == {"p": "Regular"}
    stored = store.states_frame().sort("player_id")
    assert stored.equals(states.sort("player_id"))


def test_stale_commit_writes_nothing(store, states):
    store.commit(_commit(states.head(3), None, 100, ["a"]), window=10)
    with pytest.raises(StaleOffsetError, match="expected 50"):
        store.commit(_commit(states, 50, 500, ["b"]), window=10)
    assert store.load_offsets("g", "tx", [0]) == {0: 100}
    assert store.states_frame().height == 3
    assert store.load_dedupe_ids("g", "tx", 0) == ["a"]


def test_window_trims_whole_commits(store, states):
    store.load_dedupe_ids("g", "tx", 0)
    store.commit(_commit(states.head(1), None, 3, ["a", "b", "c"]), window=4)
    store.commit(_commit(states.head(1), 3, 5, ["d", "e"]), window=4)
    store.commit(_commit(states.head(1), 5, 7, ["f", "g"]), window=4)
    assert store.load_dedupe_ids("g", "tx", 0) == ["d", "e", "f", "g"]


def test_states_and_segments_read_together(store, states):
    store.commit(_commit(states.head(3), None, 3, ["a"]), window=10)
    known = states["player_id"].head(3).to_list()
    requested = ["unknown-1", known[2], "p", known[0], "unknown-2"]

    matrix, segments = store.get_states_and_segments(requested)

    assert matrix.player_ids == [known[2], known[0]]
    expected = StateMatrix.from_frame(
        states.filter(pl.col("player_id").is_in(known)).sort("player_id")
    )
    rows = {player: i for i, player in enumerate(expected.player_ids)}
    for i, player in enumerate(matrix.player_ids):
        assert np.array_equal(
            matrix.values[i], expected.values[rows[player]], equal_nan=True
        )
    assert segments == {"p": "Regular"}


def test_states_and_segments_of_nobody(store):
    matrix, segments = store.get_states_and_segments([])
    assert len(matrix) == 0
    assert segments == {}
    matrix, segments = store.get_states_and_segments(["nobody"])
    assert len(matrix) == 0
    assert segments == {}


def test_commit_keeps_unusual_player_ids(store, states):
    odd = ["p\nnew line", 'p "quoted" ü', "p:colon", "p\\back"]
    renamed = states.head(4).with_columns(pl.Series("player_id", odd))
    commit = _commit(renamed, None, 4, ["a"])
    commit.segments = {odd[0]: "Night Owl", odd[1]: "Regular"}
    store.commit(commit, window=10)

    matrix, segments = store.get_states_and_segments(odd)

    assert matrix.player_ids == odd
    assert segments == {odd[0]: "Night Owl", odd[1]: "Regular"}
    stored = store.states_frame().sort("player_id")
    assert stored.equals(renamed.sort("player_id"))
