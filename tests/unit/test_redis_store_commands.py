"""Commands the Redis online store packs itself, compared with hiredis."""

from __future__ import annotations

import hiredis
import pytest

from crmbet.features.redis_store import _pack_mget


@pytest.mark.parametrize(
    "ids",
    [
        ["a1", "b2", "c3"],
        ["short", "much-longer-id"],
        ["spieler-ä", "spieler-b"],
        ["x"],
    ],
)
def test_mget_matches_hiredis(ids: list[str]) -> None:
    expected = hiredis.pack_command((b"MGET", *[f"ns:v1:vector:{i}" for i in ids]))

    assert _pack_mget("ns:v1:vector:", ids) == expected
