"""Prometheus metrics of the scale-out layer."""

from __future__ import annotations

from prometheus_client import Counter

#: Workers added to ("up") or removed from ("down") a Dask cluster while a
#: crmbet job watched it. Exposed as ``scaling_events_total``.
SCALING_EVENTS = Counter(
    "scaling_events",
    "Dask workers added to or removed from the cluster, one event per worker",
    ["direction"],
)
