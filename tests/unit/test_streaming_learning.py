"""Online centroids and drift detection on the stream."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from crmbet.features.definitions import compute_features
from crmbet.features.state import fold
from crmbet.models import train_segments
from crmbet.serving.predictor import SegmentPredictor
from crmbet.streaming import LocalSink, StreamConfig, StreamingMLPipeline
from crmbet.streaming.drift import StreamDriftMonitor
from crmbet.streaming.kafka import AdaptiveBatchSize
from crmbet.streaming.learning import BackgroundLearner, OnlineCentroids
from crmbet.streaming.processor import BatchResult


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


def test_adaptive_batch_size_follows_backlog():
    size = AdaptiveBatchSize(maximum=1_000, minimum=100)
    assert size.size == 100
    # Full batches: records are waiting, so the size doubles up to the maximum.
    sizes = [size.update(size.size) for _ in range(6)]
    assert sizes == [200, 400, 800, 1_000, 1_000, 1_000]
    # A batch at least half full keeps the size.
    assert size.update(600) == 1_000
    # Nearly empty batches: the call waited for the timeout, so it halves.
    assert [size.update(10) for _ in range(5)] == [500, 250, 125, 100, 100]


def test_fixed_batch_size_when_minimum_is_maximum():
    size = AdaptiveBatchSize(maximum=500, minimum=500)
    assert size.update(0) == 500
    assert size.update(500) == 500


def test_background_learner_runs_every_batch():
    seen: list[int] = []

    def learn(features, confidence):  # noqa: ANN001, ANN202
        seen.append(len(features))
        return [f"alarm-{len(features)}"] if len(features) == 3 else []

    learner = BackgroundLearner(learn, max_pending=1)
    for n in range(1, 6):
        learner.submit(np.zeros((n, 2)), None)
    learner.wait()
    assert seen == [1, 2, 3, 4, 5]
    assert learner.take_alarms() == ["alarm-3"]
    assert learner.take_alarms() == []
    learner.close()
    with pytest.raises(RuntimeError, match="closed"):
        learner.submit(np.zeros((1, 2)), None)


def test_background_learner_survives_errors(caplog):
    calls: list[int] = []

    def learn(features, confidence):  # noqa: ANN001, ANN202
        calls.append(len(features))
        if len(features) == 1:
            raise ValueError("broken batch")
        return []

    learner = BackgroundLearner(learn)
    learner.submit(np.zeros((1, 2)), None)
    learner.submit(np.zeros((2, 2)), None)
    learner.close()
    assert calls == [1, 2]
    assert "online learning of a micro-batch failed" in caplog.text


def test_pipeline_learns_on_thread_and_sends_alarms(trained, settings):
    model, X, _ = trained
    pipeline = StreamingMLPipeline(
        StreamConfig(model_ref=None, drift_cooldown_s=0),
        settings=settings,
        predictor=SegmentPredictor(model),
        sink=LocalSink(),
        registry=object(),
    )
    assert pipeline.learner is not None and pipeline.drift is not None
    pipeline._start_learning_thread()
    rng = np.random.default_rng(0)
    for level in [0.8] * 10 + [0.2] * 10:
        confidence = rng.normal(level, 0.01, 400)
        pipeline._learn(
            BatchResult(commit=None, features=X[:400], confidence=confidence)
        )
    pipeline._stop_learning_thread()
    assert pipeline.learner.n_updates_ == 20 * len(X[:400])
    assert [alarm.signal for alarm in pipeline.sink.alarms].count("confidence") >= 1
