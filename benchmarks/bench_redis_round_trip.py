"""Redis round trip of the store's one-player read, with idle time between reads.

Starts a private ``redis-server`` on a free loopback port and writes a few
player states through the Redis online store. Then, for each gap in
``--gaps-us`` (microseconds of busy work between two reads), it times
``--reads`` calls of ``RedisOnlineStore.read_player``: one ``GET`` and
the decoding of its 912-byte value. Feature-store requests that
miss L1 arrive between L1 hits, so the gap of interest is tens to hundreds
of microseconds. The peer is ``redis-benchmark`` (the C client shipped
with Redis) sending the same ``GET`` back to back on one connection.

On a virtual machine whose idle vCPUs halt at once (no guest halt
polling), ``redis-server`` sleeps between requests, so each read includes
the hypervisor's wake-up. This benchmark shows how much that costs.

Metrics: ``read_p50_us_gap_<N>`` and ``read_p99_us_gap_<N>`` per gap.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from bench_feature_store import _player_states, _redis_benchmark_get
from crmbet.features.redis_store import RedisOnlineStore
from services import start_redis

BENCHMARK = "redis-round-trip"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options."""
    parser.add_argument(
        "--reads", type=int, default=10_000, help="Reads timed per gap."
    )
    parser.add_argument(
        "--gaps-us",
        default="0,5,50,300",
        help="Comma-separated microseconds of busy work between two reads.",
    )


def _busy(nanoseconds: int) -> None:
    """Spin for ``nanoseconds``, as a request served from L1 would."""
    until = time.perf_counter_ns() + nanoseconds
    while time.perf_counter_ns() < until:
        pass


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the benchmark and return its records."""
    gaps = [int(value) for value in args.gaps_us.split(",") if value.strip()]
    process, port = start_redis()
    try:
        states = _player_states(1000)
        backend = RedisOnlineStore(f"redis://127.0.0.1:{port}/0", namespace="rt")
        backend.put_states(states)
        ids = states["player_id"].to_list()
        read = backend.read_player
        records: list[dict[str, Any]] = []
        peer = _redis_benchmark_get(port, backend.state_key(ids[0]), args.reads)
        for gap in gaps:
            latencies = np.empty(args.reads)
            for i in range(args.reads):
                _busy(gap * 1000)
                started = time.perf_counter_ns()
                read(ids[i % len(ids)])
                latencies[i] = time.perf_counter_ns() - started
            p50, p99 = np.percentile(latencies / 1000.0, [50, 99])
            for name, value, peer_value in (
                ("p50", p50, peer["p50_us"] if peer else None),
                ("p99", p99, peer["p99_us"] if peer else None),
            ):
                records.append(
                    {
                        "benchmark": BENCHMARK,
                        "metric": f"read_{name}_us_gap_{gap}",
                        "value": round(float(value), 2),
                        "unit": "us",
                        "peer": "redis-benchmark GET, back to back" if peer else None,
                        "peer_value": peer_value,
                        "params": {"reads": args.reads, "gap_us": gap},
                    }
                )
        backend.close()
        return records
    finally:
        process.terminate()
        process.wait(timeout=30)
