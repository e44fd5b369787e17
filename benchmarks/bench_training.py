"""Transactions to a registered model: crmbet against pandas + scikit-learn.

Both sides read the same synthetic Parquet file in a fresh process. crmbet
runs its whole main job (validation, fold, pseudonymisation of the player
states, 31 features, k selection over 3..12, training, ONNX export and
check, MLflow registration into an existing registry database). The peer is the usual
notebook approach: a pandas group-by
for the same twelve segmentation features, log1p and standard scaling, and
scikit-learn ``KMeans`` for every k from 3 to 12, keeping the k with the best
silhouette on a 10,000-player sample. Each side's peak memory is the
``ru_maxrss`` of its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--players",
        type=int,
        default=200_000,
        help="synthetic players (200,000 gives about 10 million rows)",
    )
    parser.add_argument("--days", type=int, default=30, help="days of activity")
    parser.add_argument("--quick", action="store_true", help="20,000 players")
    parser.add_argument("--skip-peer", action="store_true", help="run crmbet only")


OURS = """
import json, os, resource, sys, time, warnings
warnings.simplefilter("ignore")
from crmbet.config import Settings
from crmbet.models.registry import ModelRegistry
from crmbet.training import run_training
settings = Settings(home=sys.argv[2])
# A deployment's registry database already exists: create it before timing.
ModelRegistry(settings).client
start = time.perf_counter()
result = run_training(sys.argv[1], settings=settings, seed=0)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_gb": resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss / 2**20,
    "silhouette": result.model.metrics["silhouette"],
    "k": result.model.n_segments, "ari": result.adjusted_rand_index,
    "events": result.n_events, "players": result.features.height,
    "timings": result.timings}))
"""

PEER = """
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
start = time.perf_counter()
import numpy as np, pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler
df = pd.read_parquet(sys.argv[1])
df["hour"] = df["ts"].dt.hour
df["weekday"] = df["ts"].dt.weekday
bets = df[df["event_type"] == "bet"].copy()
bets["night"] = bets["hour"] < 6
bets["weekend"] = bets["weekday"] >= 5
for product in ("sports", "casino", "crash"):
    bets[product] = bets["product"] == product
bets["log_cashout"] = np.log(bets["multiplier"])
g = bets.groupby("player_id")
features = pd.DataFrame({
    "avg_stake": g["amount"].mean(),
    "n_bets": g.size(),
    "late_night_share": g["night"].mean(),
    "weekend_share": g["weekend"].mean(),
    "sports_share": g["sports"].mean(),
    "casino_share": g["casino"].mean(),
    "crash_share": g["crash"].mean(),
    "crash_log_cashout": g["log_cashout"].mean(),
    "stake_sum": g["amount"].sum(),
})
every = df.groupby("player_id")["ts"].agg(["min", "max"])
money = df.pivot_table(index="player_id", columns="event_type", values="amount",
                       aggfunc="sum", fill_value=0.0)
deposits = df[df["event_type"] == "deposit"].groupby("player_id")["amount"].mean()
features = features.join(every, how="outer").join(money, how="left")
features["avg_deposit"] = deposits
end = df["ts"].max()
days = ((features["max"] - features["min"]).dt.total_seconds() / 86400).clip(lower=1)
features["bets_per_day"] = features["n_bets"] / days
features["recency_days"] = (end - features["max"]).dt.total_seconds() / 86400
bonus = features.get("bonus", 0.0)
cashback = features.get("cashback", 0.0)
features["bonus_share"] = bonus / (bonus + features["stake_sum"])
features["cashback_share"] = cashback / (cashback + features["stake_sum"])
columns = ["avg_stake", "bets_per_day", "recency_days", "late_night_share",
           "weekend_share", "sports_share", "casino_share", "crash_share",
           "bonus_share",
           "cashback_share", "crash_log_cashout", "avg_deposit"]
X = features[columns].fillna(0.0).to_numpy()
for i in (0, 1, 2, 11):
    X[:, i] = np.log1p(X[:, i])
X = StandardScaler().fit_transform(X)
best = (-2.0, None)
for k in range(3, 13):
    labels = KMeans(n_clusters=k, random_state=0).fit_predict(X)
    score = silhouette_score(X, labels, sample_size=10000, random_state=0)
    if score > best[0]:
        best = (score, k)
model = KMeans(n_clusters=best[1], random_state=0).fit(X)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_gb": resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss / 2**20, "silhouette": best[0], "k": best[1]}))
"""


def _run(code: str, *args: str) -> dict[str, object]:
    env = os.environ | {
        "PYTHONPATH": str(ROOT / "src"),
        "CRMBET_PSEUDONYM_KEY": "benchmark-key",
    }
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    sys.path.insert(0, str(ROOT / "src"))
    from crmbet.events.synthetic import write_synthetic

    players = 20_000 if args.quick else args.players
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "transactions.parquet"
        start = time.perf_counter()
        rows = write_synthetic(data, players=players, days=args.days, seed=1)
        generate_s = time.perf_counter() - start
        ours = _run(OURS, str(data), str(Path(folder) / "home"))
        peer = None if args.skip_peer else _run(PEER, str(data))
    scale = 10_000_000 / rows
    common = {"rows": rows, "players": players, "generate_s": round(generate_s, 2)}
    peer_seconds = None if peer is None else round(float(peer["seconds"]) * scale, 2)
    return [
        {
            "benchmark": "training",
            "metric": "seconds_10m_tx",
            "value": round(float(ours["seconds"]) * scale, 2),
            "unit": "s",
            "peer": "pandas + scikit-learn",
            "peer_value": peer_seconds,
            "measured_seconds": round(float(ours["seconds"]), 2),
            "peer_measured_seconds": None
            if peer is None
            else round(float(peer["seconds"]), 2),
            "timings": ours["timings"],
            **common,
        },
        {
            "benchmark": "training",
            "metric": "peak_rss_gb",
            "value": round(float(ours["rss_gb"]), 2),
            "unit": "GB",
            "peer": "pandas + scikit-learn",
            "peer_value": None if peer is None else round(float(peer["rss_gb"]), 2),
            **common,
        },
        {
            "benchmark": "training",
            "metric": "silhouette",
            "value": round(float(ours["silhouette"]), 4),
            "unit": "",
            "peer": "pandas + scikit-learn",
            "peer_value": None if peer is None else round(float(peer["silhouette"]), 4),
            "k": ours["k"],
            "peer_k": None if peer is None else peer["k"],
            "adjusted_rand_index": ours["ari"],
            **common,
        },
    ]
