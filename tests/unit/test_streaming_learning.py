"""Online centroids and drift detection on the stream."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from crmbet.features.definitions import compute_features
from crmbet.features.state import fold
from crmbet.models import train_segments
from crmbet.streaming.drift import StreamDriftMonitor
from crmbet.streaming.learning import OnlineCentroids


@pytest.fixture(scope="module")
def trained(bustabit_events: pl.DataFrame):
    features = compute_features(fold(bustabit_events))
    model, labels = train_segments(features, k=4)
    return model, model.matrix(features), labels


def test_centroids_start_at_champion(trained):
    model, X, labels = trained
    learner = OnlineCentroids(model)
    challenger = learner.to_model()
    assert learner.shift() == 0.0
    assert np.array_equal(challenger.assign(X)[0], model.assign(X)[0])
    assert challenger.version is None


def test_centroids_move_towards_shifted_data(trained):
    model, X, _ = trained
    learner = OnlineCentroids(model, max_count=100)
    shifted = X * 3.0
    for start in range(0, len(X), 500):
        learner.partial_fit(shifted[start : start + 500])
    assert learner.n_updates_ == len(X)
    assert learner.shift() > 0.1
    challenger = learner.to_model()
    moved = challenger.pipeline.named_steps["kmeans"].cluster_centers_
    assert not np.allclose(moved, model.pipeline.named_steps["kmeans"].cluster_centers_)
    assert challenger.metrics["online_centroid_shift"] == pytest.approx(learner.shift())


def test_drift_raises_one_alarm_per_change():
    clock = iter(float(t) for t in range(1000))
    monitor = StreamDriftMonitor(
        ["confidence"], cooldown_s=100, clock=lambda: next(clock)
    )
    rng = np.random.default_rng(0)
    alarms = []
    for _ in range(10):
        alarms += monitor.update({"confidence": rng.normal(0.8, 0.01, 400)})
    assert alarms == []
    for _ in range(10):
        alarms += monitor.update({"confidence": rng.normal(0.3, 0.01, 400)})
    assert len(alarms) == 1
    assert alarms[0].signal == "confidence"
    assert alarms[0].mean_after < alarms[0].mean_before
