"""Feature sources of the serving layer, for requests that name a player only by id.

Serving depends on the small :class:`FeatureSource` protocol, so any store
(the embedded online store, Redis, a tiered cache) plugs in with one adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from crmbet.features.definitions import compute_one
from crmbet.features.online import MemoryOnlineStore

logger = logging.getLogger(__name__)


@runtime_checkable
class FeatureSource(Protocol):
    """Features of pseudonymised players, read at serving time."""

    async def get_features(
        self, player_ids: Sequence[str]
    ) -> dict[str, dict[str, float] | None]:
        """Return each player's feature values, or None for an unknown player."""
        ...

    def health(self) -> dict[str, object]:
        """Return the source's status, with at least ``status`` ("healthy" or not)."""
        ...


class OnlineStoreFeatureSource:
    """Computes features from the states of a :class:`MemoryOnlineStore`.

    Features are read at the store's watermark (the newest event it has
    seen), which is how training read them.

    Examples
    --------
    >>> import asyncio
    >>> source = OnlineStoreFeatureSource(MemoryOnlineStore())
    >>> asyncio.run(source.get_features(["nobody"]))
    {'nobody': None}
    """

    def __init__(
        self, store: MemoryOnlineStore, names: Sequence[str] | None = None
    ) -> None:
        self.store = store
        self.names = list(names) if names is not None else None

    async def get_features(
        self, player_ids: Sequence[str]
    ) -> dict[str, dict[str, float] | None]:
        """Return the features of each player, None for players the store lacks."""
        watermark = self.store.watermark
        found: dict[str, dict[str, float] | None] = {}
        for player_id in player_ids:
            state = self.store.get_state(player_id)
            found[player_id] = (
                None if state is None else compute_one(state, watermark, self.names)
            )
        return found

    def health(self) -> dict[str, object]:
        """Return the backend, player count and watermark."""
        return {
            "status": "healthy",
            "backend": "memory",
            "players": len(self.store),
            "watermark": self.store.watermark,
        }


class FeatureStoreSource:
    """Reads features through :class:`~crmbet.features.store.EnterpriseFeatureStore`.

    The store serves from its L1 cache in front of the configured online
    store (embedded or Redis). Players the store does not know, whose
    newest event is older than the view's TTL, or that it cannot reach
    (degraded mode) come back as None, so the server gives them the
    cold-start prediction instead of failing.
    """

    def __init__(self, store: object) -> None:
        self.store = store

    async def get_features(
        self, player_ids: Sequence[str]
    ) -> dict[str, dict[str, float] | None]:
        """Return the fresh features of each player, None otherwise."""
        from crmbet.features.store import FeatureRequest

        ids = list(player_ids)
        response = self.store.get_features_sync(FeatureRequest(ids))  # type: ignore[attr-defined]
        found: dict[str, dict[str, float] | None] = {}
        for index, player_id in enumerate(ids):
            fresh = response.status[index] == "fresh"
            found[player_id] = response.row(index) if fresh else None
            if response.status[index] == "unavailable":
                logger.warning("online store unavailable; cold start for one player")
        return found

    def health(self) -> dict[str, object]:
        """Return the feature store's health with the backend and player count."""
        health = dict(self.store.health())  # type: ignore[attr-defined]
        backend = self.store.backend  # type: ignore[attr-defined]
        health["backend"] = type(backend).__name__
        health["players"] = len(backend)
        return health
