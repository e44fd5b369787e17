"""Scale-out benchmark: features and training on 1, 10 and 100 million transactions.

Each size runs end to end once with the local engine and once with the
Dask engine on a 2-worker LocalCluster, each in a fresh Python process.
A run covers ingest, fold, features, k-means with k fixed, the ONNX check
and the assignment, but not the registry. Peak memory is the largest sum
of resident memory over that
process and its children (the Dask workers), sampled every 0.2 s.

The data is the synthetic generator's output written in chunks of at most
200,000 players (about 5.3 million transactions over 14 days), each chunk
with its own seed and player ids, so that generating 100 million rows never
keeps more than one chunk in memory.

Usage::

    python benchmarks/run.py scale --sizes 1m,10m
    python benchmarks/run.py scale --sizes 100m --engines local   # about 10 min
    python benchmarks/run.py scale --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil

#: Transactions per player over 14 days in the synthetic data (seed 1).
EVENTS_PER_PLAYER = 26.5
CHUNK_PLAYERS = 200_000
DAYS = 14
SRC = Path(__file__).resolve().parents[1] / "src"

_JOB = """
import json, sys, time
from crmbet.config import get_settings
from crmbet.pipeline import ClusterConfig
from crmbet.scale.job import run_scale_training
source, work, engine = sys.argv[1:4]
config = ClusterConfig(engine=engine, n_workers=2, memory_limit="6GB", k=8)
start = time.perf_counter()
result = run_scale_training(source, config, work_dir=work, settings=get_settings(),
                            register=False)
print(json.dumps({"seconds": time.perf_counter() - start, "events": result.job.n_events,
                  "players": result.job.n_players, "sampled": result.sampled,
                  "timings": result.timings}))
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        default="1m,10m",
        help="comma-separated transaction counts, e.g. 1m,10m,100m",
    )
    parser.add_argument("--engines", default="local,dask", help="local, dask or both")
    parser.add_argument(
        "--quick", action="store_true", help="one small run of 200,000 transactions"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep generated data here (reused when present)",
    )


def _parse_size(text: str) -> int:
    text = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * factor)


def _label(rows: int) -> str:
    return f"{rows / 1e6:g}m"


def write_source(rows: int, folder: Path) -> Path:
    """Write about ``rows`` synthetic transactions as Parquet chunks into ``folder``."""
    import polars as pl

    from crmbet.events.synthetic import generate_transactions

    target = folder / f"tx_{_label(rows)}"
    if target.is_dir() and any(target.iterdir()):
        return target
    target.mkdir(parents=True, exist_ok=True)
    players = max(int(rows / EVENTS_PER_PLAYER), 1)
    for chunk, first in enumerate(range(0, players, CHUNK_PLAYERS)):
        count = min(CHUNK_PLAYERS, players - first)
        frame = generate_transactions(players=count, days=DAYS, seed=chunk + 1)
        frame = frame.with_columns(
            pl.concat_str(pl.lit(f"c{chunk}-"), pl.col("player_id")).alias("player_id"),
        )
        frame.write_parquet(target / f"chunk-{chunk:04d}.parquet")
    return target


def _run_job(source: Path, engine: str, work: Path) -> tuple[dict, float]:
    env = os.environ | {"PYTHONPATH": str(SRC)}
    env.setdefault("CRMBET_PSEUDONYM_KEY", "benchmark-key-0123456789abcdef")
    env.setdefault("CRMBET_HOME", str(work / "home"))
    process = subprocess.Popen(
        [sys.executable, "-c", _JOB, str(source), str(work / "job"), engine],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        parent = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(
                    peak, sum(p.memory_info().rss for p in tree if p.is_running())
                )
            except psutil.Error:
                pass
            done.wait(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    output, _ = process.communicate()
    done.set()
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(
            f"{engine} job on {source} failed with exit code {process.returncode}"
        )
    return json.loads(output.strip().splitlines()[-1]), peak / 2**30


def run(args: argparse.Namespace) -> list[dict]:
    sizes = [200_000] if args.quick else [_parse_size(s) for s in args.sizes.split(",")]
    engines = [e.strip() for e in args.engines.split(",")]
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="crmbet-bench-scale-") as scratch:
        data_dir = args.data_dir or Path(scratch)
        for rows in sizes:
            source = write_source(rows, data_dir)
            label = _label(rows)
            results = {}
            for engine in engines:
                work = Path(scratch) / f"{engine}-{label}"
                results[engine], peak = _run_job(source, engine, work)
                results[engine]["peak_gb"] = peak
                print(
                    f"scale {label} {engine}: {json.dumps(results[engine])}",
                    file=sys.stderr,
                )
            records += _records(label, results)
    return records


def _records(label: str, results: dict[str, dict]) -> list[dict]:
    local, dask = results.get("local"), results.get("dask")
    note = (
        f"{(local or dask)['events']:,} transactions, {(local or dask)['players']:,} "
        "players, k=8, features and training end to end"
    )
    records = []
    if local:
        records += [
            {
                "metric": f"seconds_{label}_tx",
                "value": local["seconds"],
                "unit": "s",
                "peer": "dask engine, 2 workers" if dask else None,
                "peer_value": dask["seconds"] if dask else None,
            },
            {
                "metric": f"peak_rss_gb_{label}",
                "value": local["peak_gb"],
                "unit": "GiB",
                "peer": "dask engine, 2 workers (client + workers)" if dask else None,
                "peer_value": dask["peak_gb"] if dask else None,
            },
            {
                "metric": f"throughput_{label}_tx_per_s",
                "value": local["events"] / local["seconds"],
                "unit": "tx/s",
                "peer": "dask engine, 2 workers" if dask else None,
                "peer_value": dask["events"] / dask["seconds"] if dask else None,
            },
        ]
    if dask:
        records.append(
            {
                "metric": f"seconds_{label}_tx_dask",
                "value": dask["seconds"],
                "unit": "s",
                "peer": "local engine" if local else None,
                "peer_value": local["seconds"] if local else None,
            }
        )
    for record in records:
        record.update({"benchmark": "scale", "note": note})
    return records
