"""Feature-store latency: L1 hits, Redis reads, 10k batches, vs Feast.

Starts a private ``redis-server`` on a free loopback port, writes ``--players``
player states (the bundled bustabit states repeated under new ids) through
the Redis online store, and replays a Zipf-distributed stream of
single-player ``get_features`` requests against an L1 cache holding
``--l1-fraction`` of the players. Feast (installed in its own virtualenv,
see ``--feast-python``) serves the same 31 features from the same Redis
server, and its ``get_online_features`` is timed on requests drawn from the
same stream.

Metrics: ``l1_hit_p99_us``, ``l2_p99_us`` (peer: Feast), ``batch_10k_ms``,
``l1_hit_rate``. A warm-up of ``--warmup-requests`` from the same stream
fills the L1 first, and only the requests after it are scored. The
parameters also report ``l1_hit_rate_ceiling``, the share of scored
requests for players requested earlier in the stream: the first request of
a player misses every cache, so no eviction policy can exceed it.

Two figures show how much of a miss is Redis and the network path rather
than the store: ``l2_round_trip_*_us``, the time from writing a miss's
``GET`` to parsing its reply, taken in a second pass over the scored
stream, and ``redis_benchmark_get_*_us``, what ``redis-benchmark`` (the C
client shipped with Redis) measures for the same ``GET`` on one connection.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from crmbet.events.adapters import bundled_bustabit_path, ingest
from crmbet.events.pseudonym import Pseudonymizer
from crmbet.features import fold
from crmbet.features.online import FIELD_NAMES, matrix_frame, states_matrix
from crmbet.features.redis_store import RedisOnlineStore
from crmbet.features.store import (
    FEATURE_NAMES,
    EnterpriseFeatureStore,
    FeatureRequest,
    compute_matrix,
)
from services import start_redis

BENCHMARK = "feature-store"
FEAST_PEER = Path(__file__).with_name("feast_peer.py")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options."""
    parser.add_argument(
        "--players", type=int, default=200_000, help="Players written to Redis."
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=200_000,
        help="Single-player requests in the Zipf stream.",
    )
    parser.add_argument(
        "--warmup-requests",
        type=int,
        default=None,
        help="Requests that fill the L1 before scoring starts, from the same "
        "stream (default: four times --requests), so that the hit rate is the "
        "steady state's rather than that of a cache still filling.",
    )
    parser.add_argument(
        "--zipf",
        type=float,
        default=1.2,
        help="Exponent s of the Zipf popularity, P(rank k) ~ k^-s.",
    )
    parser.add_argument(
        "--l1-fraction",
        type=float,
        default=0.1,
        help="L1 size as a fraction of the players.",
    )
    parser.add_argument(
        "--batches", type=int, default=5, help="Batches of 10,000 players timed."
    )
    parser.add_argument(
        "--feast-python",
        default="/work/venv-feast/bin/python",
        help="Python of a virtualenv with feast and redis; '' skips Feast.",
    )
    parser.add_argument(
        "--feast-requests",
        type=int,
        default=5000,
        help="Single-player requests timed on Feast.",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Small run: 20,000 players and 20,000 requests.",
    )


def _player_states(players: int) -> pl.DataFrame:
    """Repeat the bundled bustabit states under ``players`` new ids."""
    events = ingest(
        bundled_bustabit_path(), pseudonymizer=Pseudonymizer(b"bench" * 8)
    ).events
    base = states_matrix(fold(events))
    rows = base[np.arange(players) % base.shape[0]]
    return matrix_frame([f"player-{i:07d}" for i in range(players)], rows)


def _zipf_stream(players: int, size: int, exponent: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = np.arange(1, players + 1, dtype=np.float64) ** -exponent
    ranks = rng.choice(players, size=size, p=weights / weights.sum())
    return rng.permutation(players)[ranks]


def _hit_rate_ceiling(ids: list[str], scored_from: int) -> float:
    """Return the share of scored requests for players requested before.

    The first request of a player misses any cache that is filled only by
    requests, so no eviction policy can hit more often than this.
    """
    seen = set(ids[:scored_from])
    repeats = 0
    for player in ids[scored_from:]:
        repeats += player in seen
        seen.add(player)
    return repeats / max(len(ids) - scored_from, 1)


async def _replay(
    store: EnterpriseFeatureStore, ids: list[str]
) -> tuple[np.ndarray, list[str]]:
    latencies = np.empty(len(ids))
    tiers: list[str] = []
    for i, player in enumerate(ids):
        started = time.perf_counter_ns()
        response = await store.get_features(FeatureRequest(player))
        latencies[i] = time.perf_counter_ns() - started
        tiers.append(response.tier[0])
    return latencies / 1000.0, tiers


def _round_trips(
    store: EnterpriseFeatureStore, backend: RedisOnlineStore, ids: list[str]
) -> np.ndarray:
    """Replay ``ids`` and return each miss's Redis round trip in microseconds.

    The store's one-player read is timed from writing the ``GET`` to parsing
    the reply. This pass is separate from the scored one, so the timer's
    own cost does not reach ``l2_p99_us``.
    """
    trips: list[int] = []
    untimed = backend._round_trip  # noqa: SLF001

    def timed(packed: bytes, replies: int) -> list[Any]:
        started = time.perf_counter_ns()
        result = untimed(packed, replies)
        trips.append(time.perf_counter_ns() - started)
        return result

    backend._round_trip = timed  # type: ignore[method-assign]  # noqa: SLF001
    try:
        asyncio.run(_replay(store, ids))
    finally:
        del backend._round_trip  # noqa: SLF001
    return np.asarray(trips, dtype=np.float64) / 1000.0


def _redis_benchmark_get(port: int, key: str, requests: int) -> dict[str, Any] | None:
    """Time ``GET key`` with ``redis-benchmark`` on one connection, if installed."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    done = subprocess.run(
        [binary, "-h", "127.0.0.1", "-p", str(port), "-c", "1", "-n", str(requests)]
        + ["--csv", "GET", key],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    rows = list(csv.DictReader(done.stdout.splitlines()))
    if done.returncode != 0 or not rows:
        return None
    return {
        "p50_us": round(float(rows[-1]["p50_latency_ms"]) * 1000, 1),
        "p99_us": round(float(rows[-1]["p99_latency_ms"]) * 1000, 1),
        "requests": requests,
    }


def _run_feast(
    args: argparse.Namespace,
    states: pl.DataFrame,
    stream: list[str],
    port: int,
    folder: Path,
) -> dict[str, Any] | None:
    if not args.feast_python or not Path(args.feast_python).exists():
        return None
    requests = stream[: args.feast_requests]
    requested = states.filter(pl.col("player_id").is_in(sorted(set(requests))))
    columns = compute_matrix(
        states_matrix(requested), float(requested["last_ts"].max())
    )
    table = pl.DataFrame(
        {
            "player_id": requested["player_id"],
            "event_timestamp": [datetime.now(UTC)] * requested.height,
            **{name: columns[:, i] for i, name in enumerate(FEATURE_NAMES)},
        }
    )
    table.write_parquet(folder / "features.parquet")
    (folder / "requests.json").write_text(json.dumps(requests))
    done = subprocess.run(
        [
            args.feast_python,
            str(FEAST_PEER),
            "--features",
            str(folder / "features.parquet"),
            "--requests",
            str(folder / "requests.json"),
            "--redis-port",
            str(port),
            "--workdir",
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the Feast peer failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the benchmark and return its records."""
    if args.quick:
        args.players, args.requests = 20_000, 20_000
        args.batches, args.feast_requests = 3, 1000
    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        process, port = start_redis()
        try:
            return _measure(args, port, folder)
        finally:
            process.terminate()
            process.wait(timeout=30)


def _measure(args: argparse.Namespace, port: int, folder: Path) -> list[dict[str, Any]]:
    states = _player_states(args.players)
    # A generous read timeout: on a busy machine a 10,000-key MGET can take
    # longer than the default 0.5 s, which would count as an outage.
    backend = RedisOnlineStore(
        f"redis://127.0.0.1:{port}/0", namespace="bench", socket_timeout=5.0
    )
    started = time.perf_counter()
    for start in range(0, states.height, 50_000):
        backend.put_states(states.slice(start, 50_000))
    write_s = time.perf_counter() - started

    l1_size = max(int(args.players * args.l1_fraction), 1)
    store = EnterpriseFeatureStore(backend, l1_cache_size=l1_size, l1_ttl_seconds=3600)
    warmup = 4 * args.requests if args.warmup_requests is None else args.warmup_requests
    stream = _zipf_stream(args.players, warmup + args.requests, args.zipf, args.seed)
    ids = [f"player-{i:07d}" for i in stream]
    # The warm-up runs the same requests through the same store and cache
    # policy; only the requests after it are scored.
    asyncio.run(_replay(store, ids[:warmup]))
    latencies, tiers = asyncio.run(_replay(store, ids[warmup:]))
    ceiling = _hit_rate_ceiling(ids, warmup)
    tier_array = np.asarray(tiers)
    hit_latency = latencies[tier_array == "l1"]
    miss_latency = latencies[tier_array == "l2"]
    trips = _round_trips(store, backend, ids[warmup:])
    c_client = _redis_benchmark_get(
        port, backend.state_key(ids[-1]), max(len(miss_latency), 10_000)
    )

    rng = np.random.default_rng(args.seed + 1)
    batch_ms = []
    for _ in range(args.batches):
        chosen = rng.choice(args.players, size=min(10_000, args.players), replace=False)
        request = FeatureRequest([f"player-{i:07d}" for i in chosen])
        begin = time.perf_counter()
        store.get_features_sync(request)
        batch_ms.append((time.perf_counter() - begin) * 1000)
    backend.close()

    feast = _run_feast(args, states, ids[warmup:], port, folder)
    params = {
        "players": args.players,
        "requests": args.requests,
        "warmup_requests": warmup,
        "zipf": args.zipf,
        "l1_size": l1_size,
        "features": len(FEATURE_NAMES),
        "state_fields": len(FIELD_NAMES),
        "write_s": round(write_s, 2),
        "l1_hit_p50_us": round(float(np.percentile(hit_latency, 50)), 2),
        "l1_hit_rate_ceiling": round(ceiling, 4),
        "players_requested": len(set(ids)),
        "l2_p50_us": round(float(np.percentile(miss_latency, 50)), 2),
        "l2_round_trip_p50_us": round(float(np.percentile(trips, 50)), 2),
        "l2_round_trip_p99_us": round(float(np.percentile(trips, 99)), 2),
        "redis_benchmark_get": c_client,
        "batch_10k_ms_all": [round(value, 1) for value in batch_ms],
        "store_errors": store.get_performance_stats()["errors"],
        "feast": feast,
    }
    peer = f"feast {feast['feast_version']} get_online_features" if feast else None

    def record(
        metric: str, value: float, unit: str, peer_value: float | None = None
    ) -> dict[str, Any]:
        return {
            "benchmark": BENCHMARK,
            "metric": metric,
            "value": round(float(value), 3),
            "unit": unit,
            "peer": peer if peer_value is not None else None,
            "peer_value": None if peer_value is None else round(float(peer_value), 3),
            "params": params,
        }

    return [
        # Feast has no in-process cache, so each of its requests is the
        # peer of a request that our L1 serves as well as of an L1 miss.
        record(
            "l1_hit_p99_us",
            np.percentile(hit_latency, 99),
            "us",
            feast["p99_us"] if feast else None,
        ),
        record(
            "l2_p99_us",
            np.percentile(miss_latency, 99),
            "us",
            feast["p99_us"] if feast else None,
        ),
        # Uniformly drawn players, so about l1_fraction of them hit L1.
        record("batch_10k_ms", float(np.median(batch_ms)), "ms"),
        record("l1_hit_rate", float(np.mean(tier_array == "l1")), "ratio"),
    ]
