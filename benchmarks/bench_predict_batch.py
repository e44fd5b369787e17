"""Batch prediction throughput: crmbet's NumPy path against scikit-learn.

Trains on the bundled bustabit bets, then assigns a large matrix of players
(resampled from the real feature rows with noise) with
``SegmentPredictor.predict_batch`` (segments, confidence and risk scores) and
with the fitted scikit-learn pipeline's ``predict`` (segments only).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import polars as pl


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--players",
        type=int,
        default=1_000_000,
        help="players per batch (default 1,000,000)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions")
    parser.add_argument(
        "--quick", action="store_true", help="100,000 players, 2 repeats"
    )


def _best_of(repeats: int, call) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    os.environ.setdefault("CRMBET_PSEUDONYM_KEY", "benchmark-key")
    warnings.simplefilter("ignore")
    from crmbet.events import Pseudonymizer, bundled_bustabit_path, ingest
    from crmbet.features import compute_features, fold
    from crmbet.models import train_segments
    from crmbet.models.risk import RISK_FEATURES
    from crmbet.serving.predictor import SegmentPredictor

    players = 100_000 if args.quick else args.players
    repeats = 2 if args.quick else args.repeats
    events = ingest(
        bundled_bustabit_path(), pseudonymizer=Pseudonymizer(b"bench")
    ).events
    features = compute_features(fold(events))
    model, _ = train_segments(features, seed=0)
    predictor = SegmentPredictor(model)

    rng = np.random.default_rng(0)
    rows = rng.integers(0, features.height, players)
    names = list(dict.fromkeys([*model.feature_names, *RISK_FEATURES]))
    base = features.select(names).to_numpy()[rows]
    noisy = base * rng.lognormal(0.0, 0.05, base.shape)
    columns = {name: np.ascontiguousarray(noisy[:, i]) for i, name in enumerate(names)}
    frame = pl.DataFrame(columns)
    matrix = model.matrix(frame)

    ours = _best_of(repeats, lambda: predictor.predict_batch(columns))
    peer = _best_of(repeats, lambda: model.pipeline.predict(matrix))
    agree = float(
        (
            predictor.predict_batch(columns).cluster_ids
            == model.pipeline.predict(matrix)
        ).mean()
    )
    return [
        {
            "benchmark": "predict-batch",
            "metric": "players_per_second",
            "value": round(players / ours),
            "unit": "players/s",
            "peer": "scikit-learn Pipeline.predict",
            "peer_value": round(players / peer),
            "players": players,
            "segments": model.n_segments,
            "label_agreement": agree,
        },
    ]
