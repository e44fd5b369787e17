"""Feast side of the feature-store benchmark; runs in Feast's own virtualenv.

Usage::

    /work/venv-feast/bin/python benchmarks/feast_peer.py --features F.parquet \
        --requests R.json --redis-port PORT --workdir DIR

Writes the features in ``F.parquet`` (``player_id``, ``event_timestamp`` and
one Float64 column per feature) to Feast's Redis online store, then times
``get_online_features`` for the single-player requests listed in ``R.json``
and prints one JSON object with the latency percentiles in microseconds.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig
from feast.types import Float64
from feast.value_type import ValueType


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()

    frame = pd.read_parquet(args.features)
    names = [c for c in frame.columns if c not in ("player_id", "event_timestamp")]
    config = RepoConfig(
        project="crmbet_bench",
        registry=str(args.workdir / "registry.db"),
        provider="local",
        online_store={
            "type": "redis",
            "connection_string": f"127.0.0.1:{args.redis_port}",
        },
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=str(args.workdir),
    )
    store = FeatureStore(config=config)
    player = Entity(name="player", join_keys=["player_id"], value_type=ValueType.STRING)
    view = FeatureView(
        name="player_features",
        entities=[player],
        ttl=timedelta(days=3650),
        schema=[Field(name=name, dtype=Float64) for name in names],
        source=FileSource(path=str(args.features), timestamp_field="event_timestamp"),
        online=True,
    )
    store.apply([player, view])

    started = time.perf_counter()
    for start in range(0, len(frame), 20_000):
        store.write_to_online_store(
            "player_features", frame.iloc[start : start + 20_000]
        )
    write_s = time.perf_counter() - started

    refs = [f"player_features:{name}" for name in names]
    requests = json.loads(args.requests.read_text())
    check = store.get_online_features(
        features=refs, entity_rows=[{"player_id": requests[0]}]
    ).to_dict()
    latencies = []
    for player_id in requests:
        begin = time.perf_counter_ns()
        store.get_online_features(features=refs, entity_rows=[{"player_id": player_id}])
        latencies.append(time.perf_counter_ns() - begin)
    micros = np.asarray(latencies) / 1000.0
    p50, p99 = np.percentile(micros, [50, 99])
    print(
        json.dumps(
            {
                "p50_us": float(p50),
                "p99_us": float(p99),
                "requests": len(requests),
                "write_s": write_s,
                "first_value": check[names[0]][0],
                "feast_version": __import__("feast").__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
