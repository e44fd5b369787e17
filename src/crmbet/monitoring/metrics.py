"""Prometheus metrics of crmbet, all in one registry served on ``/metrics``.

The metrics live in their own :class:`~prometheus_client.CollectorRegistry`
rather than the library's global one, so that importing crmbet next to other
instrumented code does not clash on names. Add new metrics here as module
attributes registered on :data:`REGISTRY`.

NOTE: with ``crmbet serve --workers N`` each worker process keeps its own
values, so one scrape shows the worker that served it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

#: Latency buckets in seconds, dense below 10 ms where predictions land.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)

model_requests_total = Counter(
    "model_requests",
    "Predictions served, by endpoint, traffic variant, model version and outcome.",
    ["endpoint", "variant", "model_version", "status"],
    registry=REGISTRY,
)
model_latency_seconds = Histogram(
    "model_latency_seconds",
    "Server-side time to answer one prediction request, in seconds.",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
system_health_score = Gauge(
    "system_health_score",
    "Share of serving components that are healthy, from 0 to 1.",
    registry=REGISTRY,
)
pipeline_health_score = Gauge(
    "pipeline_health_score",
    "1 when a model is loaded and the feature source answers, 0.5 when one of them "
    "fails, 0 when both fail.",
    registry=REGISTRY,
)
active_instances = Gauge(
    "active_instances",
    "Model versions loaded and receiving traffic in this process.",
    registry=REGISTRY,
)
