"""Embedded online store: the newest state of every player, in process memory.

The store keeps one state row per player and an event-time watermark, the
newest event time it has seen, at which online features are read. It can
snapshot itself to a Parquet file and load it back, so a restart keeps it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import polars as pl

from crmbet.features.state import STATE_FIELDS, empty_states, merge

logger = logging.getLogger(__name__)


class MemoryOnlineStore:
    """Player states in a dict, merged batch by batch with the merge law.

    Examples
    --------
    >>> store = MemoryOnlineStore()
    >>> store.get_state("nobody") is None
    True
    """

    def __init__(self) -> None:
        self._states: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self.watermark = 0.0

    def __len__(self) -> int:
        return len(self._states)

    def put_states(self, states: pl.DataFrame) -> None:
        """Replace the stored states of the players in ``states``."""
        with self._lock:
            for row in states.iter_rows(named=True):
                player = row.pop("player_id")
                self._states[player] = row
            if states.height:
                self.watermark = max(self.watermark, float(states["last_ts"].max()))

    def merge_states(self, states: pl.DataFrame) -> None:
        """Merge a batch of newly folded states into the stored ones."""
        ids = states["player_id"].to_list()
        current = self.get_states_frame(ids)
        self.put_states(merge(current, states))

    def get_state(self, player_id: str) -> dict[str, float] | None:
        """Return one player's state, or None for an unknown player."""
        return self._states.get(player_id)

    def get_states_frame(self, player_ids: list[str]) -> pl.DataFrame:
        """Return the stored states of the known players among ``player_ids``."""
        rows = [
            {"player_id": pid, **self._states[pid]} for pid in player_ids if pid in self._states
        ]
        if not rows:
            return empty_states()
        return pl.DataFrame(rows, schema=empty_states().schema)

    def to_frame(self) -> pl.DataFrame:
        """Return every stored state as a state table."""
        return self.get_states_frame(list(self._states))

    def snapshot(self, path: str | Path) -> Path:
        """Write every state to a Parquet file and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.to_frame().write_parquet(path)
        logger.info("wrote a snapshot of %d player states to %s", len(self), path)
        return path

    @classmethod
    def from_snapshot(cls, path: str | Path) -> MemoryOnlineStore:
        """Load a store from a snapshot written by :meth:`snapshot`."""
        store = cls()
        frame = pl.read_parquet(path)
        missing = [name for name in STATE_FIELDS if name not in frame.columns]
        if missing:
            raise ValueError(
                f"snapshot {path} lacks state fields {missing[:5]}; it was written by "
                "another state schema version, so rebuild it with 'crmbet train'"
            )
        store.put_states(frame)
        return store
