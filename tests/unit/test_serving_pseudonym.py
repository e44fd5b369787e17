"""Pseudonyms stay HMAC-SHA256, with or without the serving cache."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from crmbet.events.pseudonym import PSEUDONYM_HEX_CHARS, Pseudonymizer
from crmbet.serving.system import PseudonymCache

RAW_IDS = ["alice", "", "player-42", "ünïcødé", "x" * 300]
# Keys shorter than, equal to and longer than the SHA-256 block of 64 bytes.
KEYS = [b"unit-test-key", b"k" * 64, b"long-key-" * 20]


def reference(key: bytes, raw_id: str) -> str:
    digest = hmac.new(key, raw_id.encode(), hashlib.sha256).hexdigest()
    return "p_" + digest[:PSEUDONYM_HEX_CHARS]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("raw_id", RAW_IDS)
def test_pseudonymize_matches_hmac(key: bytes, raw_id: str) -> None:
    assert Pseudonymizer(key).pseudonymize(raw_id) == reference(key, raw_id)


@pytest.mark.parametrize("key", KEYS)
def test_pseudonymize_many_matches_hmac(key: bytes) -> None:
    expected = [reference(key, raw_id) for raw_id in RAW_IDS]
    assert Pseudonymizer(key).pseudonymize_many(RAW_IDS) == expected


@pytest.mark.parametrize("max_entries", [0, 2, 4, 1000])
def test_cache_matches_hmac(max_entries: int) -> None:
    key = b"unit-test-key"
    cache = PseudonymCache(Pseudonymizer(key), max_entries)
    batch = [f"player-{i % 7}" for i in range(20)]
    for _ in range(3):
        assert cache.many(batch) == [reference(key, raw_id) for raw_id in batch]
        assert cache("alice") == reference(key, "alice")


def test_cache_size_bounded() -> None:
    cache = PseudonymCache(Pseudonymizer(b"unit-test-key"), 100)
    cache.many([f"player-{i}" for i in range(1000)])
    for i in range(1000, 1300):
        cache(f"player-{i}")
    assert len(cache) <= 100


def test_cache_keeps_recent_ids() -> None:
    cache = PseudonymCache(Pseudonymizer(b"unit-test-key"), 100)
    cache.many([f"player-{i}" for i in range(50)])
    cache.many([f"player-{i}" for i in range(50, 60)])
    assert "player-55" in cache._recent or "player-55" in cache._older
    assert "player-5" in cache._older


def test_key_hidden_in_repr() -> None:
    cache = PseudonymCache(Pseudonymizer(b"secret-key"), 10)
    assert "secret" not in repr(cache)
    assert "secret" not in repr(Pseudonymizer(b"secret-key"))


def test_pickled_pseudonymizer_gives_the_same_pseudonyms() -> None:
    # Dask ships the pseudonymizer to its workers by pickling it.
    import pickle

    original = Pseudonymizer(b"k" * 80)
    copy = pickle.loads(pickle.dumps(original))
    assert copy.pseudonymize("alice") == original.pseudonymize("alice")
