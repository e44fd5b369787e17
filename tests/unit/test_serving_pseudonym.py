"""The serving pseudonymizer gives the same pseudonyms as the event pipeline."""

from __future__ import annotations

import pytest

from crmbet.events.pseudonym import Pseudonymizer
from crmbet.serving.system import FastPseudonymizer


@pytest.mark.parametrize("raw_id", ["alice", "", "player-42", "ünïcødé", "x" * 300])
def test_fast_matches_reference(raw_id: str) -> None:
    reference = Pseudonymizer(b"unit-test-key")
    fast = FastPseudonymizer(b"unit-test-key", reference)
    assert fast(raw_id) == reference.pseudonymize(raw_id)


def test_key_mismatch_rejected() -> None:
    with pytest.raises(RuntimeError, match="disagrees"):
        FastPseudonymizer(b"one-key", Pseudonymizer(b"another-key"))


def test_key_hidden_in_repr() -> None:
    fast = FastPseudonymizer(b"secret-key", Pseudonymizer(b"secret-key"))
    assert "secret" not in repr(fast)
