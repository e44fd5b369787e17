"""Bounded windows of recent event ids, one per partition.

A producer that retries after a timeout can write the same event twice.
Both copies land in the same partition, because records are keyed by the
player, and usually close together, so remembering the last ``size`` ids
per partition catches them. The window is stored with the state, so a
restart or a rebalance keeps it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable


class DedupeWindow:
    """The last ``size`` event ids of one partition, oldest first.

    Examples
    --------
    >>> window = DedupeWindow(2, ["a", "b"])
    >>> window.add("c")
    True
    >>> "a" in window, window.add("b")
    (False, False)
    """

    def __init__(self, size: int, ids: Iterable[str] = ()) -> None:
        self.size = size
        self._ids: dict[str, None] = {}
        self.extend(ids)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, event_id: str) -> bool:
        """Remember ``event_id``; return False when it was already in the window."""
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self.size:
            # dicts keep insertion order, so the first key is the oldest id.
            del self._ids[next(iter(self._ids))]
        return True

    def extend(self, event_ids: Iterable[str]) -> None:
        """Remember many ids at once, dropping the oldest beyond ``size``.

        An id already in the window keeps its old position, as with :meth:`add`.
        """
        self._ids.update(dict.fromkeys(event_ids))
        overflow = len(self._ids) - self.size
        if overflow <= 0:
            return
        if overflow > self.size:
            # Rebuilding is cheaper than deleting most of the keys one by one.
            self._ids = dict.fromkeys(list(self._ids)[overflow:])
            return
        oldest = list(itertools.islice(self._ids, overflow))
        for event_id in oldest:
            del self._ids[event_id]

    def intersection(self, event_ids: Iterable[str]) -> set[str]:
        """Return the ids among ``event_ids`` that are in the window."""
        return self._ids.keys() & event_ids

    def ids(self) -> list[str]:
        """Return the remembered ids, oldest first."""
        return list(self._ids)
