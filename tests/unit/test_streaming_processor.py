"""The micro-batch processor: dedupe, ownership, dead letters and the merge law."""

from __future__ import annotations

import orjson
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from crmbet.events.adapters import ingest_frame
from crmbet.features.state import fold
from crmbet.streaming.processor import BatchProcessor, _PseudonymCache
from crmbet.streaming.records import RecordBatch
from crmbet.streaming.stores import EmbeddedStateStore

RAW = pl.DataFrame(
    {
        "event_id": [f"e{i}" for i in range(8)],
        "player_id": ["alice", "bob", "alice", "bob", "alice", "carol", "alice", "bob"],
        "ts": [f"2024-05-01T1{i}:00:00Z" for i in range(8)],
        "event_type": [
            "deposit",
            "bet",
            "bet",
            "bet",
            "bet",
            "bet",
            "withdrawal",
            "bet",
        ],
        "amount": ["100", "5", "10", "7", "20", "3", "50", "2"],
        "payout": [None, "0", "0", "14", "0", "6", None, "0"],
    }
)


def _batch(rows: list[dict], offsets: list[int], partitions: list[int] | None = None):
    return RecordBatch(
        topic="tx",
        values=[orjson.dumps(row) for row in rows],
        partitions=partitions or [0] * len(rows),
        offsets=offsets,
        timestamps_ms=[0] * len(rows),
    )


@pytest.fixture
def processor(pseudonymizer) -> BatchProcessor:
    processor = BatchProcessor(
        EmbeddedStateStore(), pseudonymizer, group_id="g", topic="tx"
    )
    processor.assign([0])
    return processor


def _expected(pseudonymizer, rows: pl.DataFrame) -> pl.DataFrame:
    return fold(ingest_frame(rows, pseudonymizer=pseudonymizer).events)


def test_batches_merge_to_one_fold(processor, pseudonymizer):
    rows = RAW.to_dicts()
    for start in (0, 3, 5):
        stop = {0: 3, 3: 5, 5: 8}[start]
        processor.apply(
            processor.process(_batch(rows[start:stop], list(range(start, stop))))
        )
    online = processor.store.states_frame().sort("player_id")
    assert_frame_equal(online, _expected(pseudonymizer, RAW), rel_tol=1e-12)
    assert processor.positions == {0: 8}


def test_duplicate_event_ids_count_once(processor, pseudonymizer):
    rows = RAW.to_dicts()
    processor.apply(processor.process(_batch(rows[:4], [0, 1, 2, 3])))
    result = processor.process(_batch([rows[1], rows[4], rows[4]], [4, 5, 6]))
    processor.apply(result)
    assert result.n_duplicates == 2
    online = processor.store.states_frame().sort("player_id")
    assert_frame_equal(online, _expected(pseudonymizer, RAW.head(5)), rel_tol=1e-12)


def test_records_before_stored_offset_are_skipped(processor):
    rows = RAW.to_dicts()
    processor.apply(processor.process(_batch(rows[:4], [0, 1, 2, 3])))
    result = processor.process(_batch(rows[2:6], [2, 3, 4, 5]))
    assert result.n_skipped == 2
    assert result.n_events == 2


def test_unowned_partition_is_ignored(processor):
    result = processor.process(_batch(RAW.to_dicts()[:2], [0, 1], partitions=[3, 3]))
    assert result.commit is None
    assert result.n_skipped == 2


def test_invalid_records_become_dead_letters(processor):
    rows = RAW.to_dicts()[:3]
    rows[1] = {**rows[1], "amount": "-1"}
    result = processor.process(_batch(rows, [0, 1, 2]))
    assert [letter.offset for letter in result.dead_letters] == [1]
    assert result.dead_letters[0].reason == "invalid_amount"
    assert result.n_events == 2
    assert result.commit is not None and result.commit.offsets == {0: 3}


def test_pseudonyms_match_pseudonymizer(pseudonymizer):
    cache = _PseudonymCache(pseudonymizer)
    raw = ["alice", "bob", "alice", "ünïcode", "", "1234", "bob"]
    assert cache.pseudonymize(raw) == [pseudonymizer.pseudonymize(r) for r in raw]
    # A second batch hits the cache and must give the same pseudonyms.
    assert cache.pseudonymize(raw[::-1]) == [
        pseudonymizer.pseudonymize(r) for r in raw[::-1]
    ]


def test_pseudonym_column_keeps_row_order(pseudonymizer):
    frame = pl.DataFrame({"player_id": ["b", "a", "b", "c"], "amount": [1, 2, 3, 4]})
    out = _PseudonymCache(pseudonymizer).column(frame)
    expected = [pseudonymizer.pseudonymize(r) for r in ["b", "a", "b", "c"]]
    assert out["player_id"].to_list() == expected
    assert out["amount"].to_list() == [1, 2, 3, 4]


def test_pseudonym_cache_hashes_each_new_id_once(pseudonymizer):
    hashed: list[str] = []

    class Counting:
        def pseudonymize_many(self, raw_ids: list[str]) -> list[str]:
            hashed.extend(raw_ids)
            return pseudonymizer.pseudonymize_many(raw_ids)

    cache = _PseudonymCache(Counting())  # type: ignore[arg-type]
    cache.pseudonymize(["a", "b", "a"])
    cache.pseudonymize(["b", "c", "c"])
    assert hashed == ["a", "b", "c"]


def test_mixed_partitions_skip_and_offsets(pseudonymizer):
    processor = BatchProcessor(
        EmbeddedStateStore(), pseudonymizer, group_id="g", topic="tx"
    )
    processor.assign([0, 1])
    processor.positions[1] = 10
    rows = RAW.to_dicts()[:6]
    batch = _batch(rows, [5, 9, 10, 6, 11, 0], partitions=[0, 1, 1, 0, 1, 2])

    result = processor.process(batch)

    # Partition 1 skips offset 9 (before its position 10); partition 2 is
    # not owned.
    assert result.n_skipped == 2
    assert result.n_events == 4
    assert result.commit is not None
    assert result.commit.offsets == {0: 7, 1: 12}
    assert result.commit.expected == {0: None, 1: 10}


def test_segment_changes_json_matches_to_dict():
    import numpy as np

    from crmbet.streaming.processor import SegmentChanges
    from crmbet.streaming.sinks import LocalSink

    changes = SegmentChanges(
        player_ids=["p_1", 'p_\u00e9"2', "p_3"],
        old_segments=[None, 'Night "Owl"', "Regular"],
        new_segments=["Regular", "Caf\u00e9 VIP", 'Night "Owl"'],
        cluster_ids=np.array([0, 2, 1]),
        model_version="4",
        event_times=np.array([1_637_640_720.0, 1_637_640_720.25, -86_400.5]),
        changed_at=1_764_864_543.0,
    )
    expected = [orjson.dumps(change.to_dict()) for change in changes]
    assert changes.values() == expected
    assert changes.keys() == [p.encode() for p in changes.player_ids]
    assert changes[1].old_segment == 'Night "Owl"'
    assert [c.player_id for c in changes[1:]] == ['p_\u00e9"2', "p_3"]
    unversioned = SegmentChanges(
        ["p"], ["a"], ["b"], np.array([1]), None, np.array([0.0]), 0.0
    )
    assert unversioned.values() == [orjson.dumps(unversioned[0].to_dict())]
    sink = LocalSink(keep=2)
    sink.send_segment_changes(changes)
    assert [c.player_id for c in sink.segment_changes] == ['p_\u00e9"2', "p_3"]
    assert len(SegmentChanges.empty()) == 0


def test_dedupe_windows_are_per_partition(pseudonymizer):
    processor = BatchProcessor(
        EmbeddedStateStore(), pseudonymizer, group_id="g", topic="tx"
    )
    processor.assign([0, 1])
    rows = RAW.to_dicts()
    first = processor.process(_batch(rows[:2], [0, 1], partitions=[0, 1]))
    processor.apply(first)
    assert first.commit is not None
    assert first.commit.new_ids == {0: ["e0"], 1: ["e1"]}

    # e0 was seen in partition 0 only, e1 in partition 1 only.
    again = [rows[0], rows[0], rows[1], rows[2], rows[3]]
    result = processor.process(
        _batch(again, [1, 2, 2, 3, 4], partitions=[0, 1, 0, 1, 0])
    )
    assert result.n_duplicates == 2  # e0 in partition 0, and e0 repeated
    assert result.n_events == 3
    assert result.commit is not None
    assert result.commit.new_ids == {0: ["e1", "e3"], 1: ["e2"]}
