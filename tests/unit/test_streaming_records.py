"""Decoding micro-batches and naming dead-letter reasons."""

from __future__ import annotations

import orjson
import pytest

from crmbet.streaming.dedupe import DedupeWindow
from crmbet.streaming.records import RecordBatch, decode, reason_code


def _batch(values: list[bytes | None]) -> RecordBatch:
    n = len(values)
    return RecordBatch(
        topic="tx",
        values=values,
        partitions=[0] * n,
        offsets=list(range(10, 10 + n)),
        keys=[b"k"] * n,
    )


def test_decode_clean_batch_reads_every_row():
    values = [orjson.dumps({"event_id": f"e{i}", "amount": i}) for i in range(3)]
    frame, index, dead = decode(_batch(values))
    assert frame.height == 3
    assert index == [0, 1, 2]
    assert dead == []
    assert frame["amount"].to_list() == ["0", "1", "2"]


def test_decode_sets_broken_json_aside():
    values = [
        b'{"event_id": "a"}',
        b'{"event_id": ',
        b"[1, 2]",
        None,
        b'{"event_id":\n "b"}',
    ]
    frame, index, dead = decode(_batch(values))
    assert frame["event_id"].to_list() == ["a", "b"]
    assert index == [0, 4]
    assert [letter.offset for letter in dead] == [11, 12, 13]
    assert {letter.reason for letter in dead} == {"invalid_json"}
    assert "not an object" in dead[1].error
    headers = dict(dead[0].headers())
    assert headers["source_offset"] == b"11"
    assert headers["source_topic"] == b"tx"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("player_id=None is missing; give every record a player", "missing_player_id"),
        ("amount='-5' is negative; send a non-negative amount", "invalid_amount"),
        ("amount='ten' is not a number; write a number", "invalid_amount"),
        (
            "event_type='refund' is not a known event type; use one of",
            "unknown_event_type",
        ),
        ("ts='2999-01-01' is more than 1 day in the future; check", "future_timestamp"),
        ("ts='yesterday' is not a timestamp; write ISO 8601", "invalid_ts"),
    ],
)
def test_reason_code_names_the_field(message, reason):
    assert reason_code([message]) == reason


def test_dedupe_window_forgets_oldest():
    window = DedupeWindow(3, ["a", "b", "c"])
    assert window.add("d")
    assert "a" not in window
    assert not window.add("c")
    assert window.ids() == ["b", "c", "d"]
    assert window.intersection({"b", "x"}) == {"b"}


@pytest.mark.parametrize("size", [1, 3, 5, 8])
def test_dedupe_extend_matches_add(size):
    batches = [["a", "b"], ["c", "a", "d"], [], ["e", "f", "g", "h", "i"], ["b"]]
    one_by_one = DedupeWindow(size)
    at_once = DedupeWindow(size)
    for ids in batches:
        for event_id in ids:
            one_by_one.add(event_id)
        at_once.extend(ids)
        assert at_once.ids() == one_by_one.ids()
    assert len(at_once) <= size


def test_decode_empty_value_is_dead_letter():
    batch = RecordBatch(
        topic="tx",
        values=[b'{"event_id": "a"}', b"", None],
        partitions=[0, 0, 0],
        offsets=[0, 1, 2],
    )
    frame, index, dead = decode(batch)
    assert frame.height == 1
    assert index == [0]
    assert [letter.offset for letter in dead] == [1, 2]
    assert {letter.reason for letter in dead} == {"invalid_json"}
