"""Prometheus metrics of the stream consumer.

The objects live in the default registry, so ``prometheus_client``'s
``start_http_server`` or any ``/metrics`` endpoint of the process serves them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

THROUGHPUT = Gauge(
    "stream_throughput_per_second",
    "Records processed per second, averaged over the last micro-batches.",
)
INFERENCE_LATENCY = Histogram(
    "stream_inference_latency_seconds",
    "Time to assign segments to the players of one micro-batch.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
FRESHNESS = Histogram(
    "stream_event_freshness_seconds",
    "Time from a record's producer timestamp to its state being stored.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
BATCH_SIZE = Gauge(
    "stream_batch_size",
    "Records the consumer asks for in its next micro-batch (adaptive size).",
)
CONSUMER_LAG = Gauge(
    "stream_consumer_lag",
    "Records between the consumer position and the high watermark, per partition.",
    ["topic", "partition"],
)
EVENTS = Counter("stream_events_total", "Valid events folded into player state.")
DUPLICATES = Counter(
    "stream_duplicate_events_total",
    "Events dropped because their id was seen recently.",
)
DEAD_LETTERS = Counter(
    "stream_dead_letters_total", "Records sent to the dead-letter output.", ["reason"]
)
SEGMENT_CHANGES = Counter(
    "stream_segment_changes_total", "Players whose segment changed (or was first set)."
)
FENCED_BATCHES = Counter(
    "stream_fenced_batches_total",
    "Micro-batches discarded because another consumer stored newer offsets.",
)
DRIFT_ALARMS = Counter(
    "stream_drift_alarms_total", "Drift alarms raised on the stream.", ["signal"]
)
DRIFT_ACTIVE = Gauge(
    "stream_drift_detected",
    "1 while a drift alarm is in its cooldown, else 0.",
    ["signal"],
)
CHALLENGERS = Counter(
    "stream_challenger_registrations_total", "Online challengers registered."
)
HEALTHY = Gauge(
    "stream_consumer_healthy", "1 when the consumer polls on time and reaches a broker."
)
