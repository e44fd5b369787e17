"""Checks every online store backend must pass, run on each of them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmbet.features import fold, merge
from crmbet.features.materialize import materialize
from crmbet.features.online import (
    FIELD_NAMES,
    AppliedMark,
    MemoryOnlineStore,
    OnlineStore,
)
from crmbet.features.redis_store import RedisOnlineStore

pytestmark = pytest.mark.integration

BACKENDS = ("memory", "redis")


@pytest.fixture(params=BACKENDS)
def make_store(
    request: pytest.FixtureRequest, redis_url: str
) -> Iterator[Callable[[], OnlineStore]]:
    """A factory of empty stores of one backend, cleaned up afterwards."""
    created: list[RedisOnlineStore] = []

    def make() -> OnlineStore:
        if request.param == "memory":
            return MemoryOnlineStore()
        store = RedisOnlineStore(
            redis_url, namespace=f"crmbet-test-{uuid.uuid4().hex[:8]}"
        )
        created.append(store)
        return store

    yield make
    for store in created:
        store.delete_namespace()
        store.close()


@pytest.fixture(scope="module")
def states(bustabit_events: pl.DataFrame) -> pl.DataFrame:
    return fold(bustabit_events.sort("ts").head(2000))


def test_put_then_read(
    make_store: Callable[[], OnlineStore], states: pl.DataFrame
) -> None:
    store = make_store()
    store.put_states(states)
    ids = states["player_id"].to_list()[:5] + ["nobody"]

    stored = store.read_players(ids)

    assert isinstance(store, OnlineStore)
    assert stored.found.tolist() == [True] * 5 + [False]
    np.testing.assert_array_equal(
        stored.states[:5], states.head(5).select(FIELD_NAMES).to_numpy()
    )
    assert np.isnan(stored.states[5]).all()
    assert store.watermark == states["last_ts"].max()


def test_state_and_frame(
    make_store: Callable[[], OnlineStore], states: pl.DataFrame
) -> None:
    store = make_store()
    store.put_states(states)
    player = states["player_id"][0]

    assert store.get_state("nobody") is None
    assert store.get_state(player)["n_events"] == states["n_events"][0]
    frame = store.get_states_frame([player, "nobody"])
    assert frame["player_id"].to_list() == [player]
    assert frame.equals(states.head(1))


def test_merge_states_uses_merge_law(
    make_store: Callable[[], OnlineStore], bustabit_events: pl.DataFrame
) -> None:
    events = bustabit_events.sort("ts").head(4000)
    first, second = fold(events.head(2000)), fold(events.tail(2000))
    store = make_store()
    store.put_states(first)
    store.merge_states(second)

    expected = merge(first, second)
    got = store.get_states_frame(expected["player_id"].to_list()).sort("player_id")
    np.testing.assert_allclose(
        got.select(FIELD_NAMES).to_numpy(),
        expected.select(FIELD_NAMES).to_numpy(),
        rtol=1e-12,
    )


def test_marks_round_trip(
    make_store: Callable[[], OnlineStore], states: pl.DataFrame
) -> None:
    store = make_store()
    player = states["player_id"][0]
    mark = AppliedMark(float(states["last_ts"][0]), frozenset({"e1", "e2"}))
    store.put_states(states.head(1), {player: mark})

    assert store.applied_marks([player, "nobody"]) == {player: mark}


def test_listener_sees_writes(
    make_store: Callable[[], OnlineStore], states: pl.DataFrame
) -> None:
    store = make_store()
    seen: list[list[str] | None] = []
    store.add_listener(seen.append)
    store.put_states(states.head(3))

    assert states.head(3)["player_id"].to_list() in seen
    assert store.health()["status"] == "healthy"


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=1499), max_size=4, unique=True),
    replay=st.integers(min_value=0, max_value=3),
)
def test_batches_with_replays_equal_one_fold(
    make_store: Callable[[], OnlineStore],
    bustabit_events: pl.DataFrame,
    cuts: list[int],
    replay: int,
) -> None:
    events = bustabit_events.sort("ts", "event_id").head(1500)
    bounds = [0, *sorted(cuts), events.height]
    batches = [events.slice(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]
    store = make_store()
    for i, batch in enumerate(batches):
        materialize(batch, store)
        if i < replay:
            # Replaying a batch, or the whole prefix, must change nothing.
            materialize(pl.concat(batches[: i + 1]), store)

    expected = fold(events)
    got = store.get_states_frame(expected["player_id"].to_list()).sort("player_id")
    np.testing.assert_allclose(
        got.select(FIELD_NAMES).to_numpy(),
        expected.select(FIELD_NAMES).to_numpy(),
        rtol=1e-9,
        atol=1e-9,
    )
