"""Segmentation: reproducibility, k selection and degenerate input."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score

from crmbet.errors import DegenerateDataError
from crmbet.features import SEGMENTATION_FEATURES, compute_features, fold
from crmbet.models import select_k, train_segments
from crmbet.models.bundle import fit_kmeans
from crmbet.models.kselect import silhouette_scores
from crmbet.models.onnx_export import check_onnx_labels, export_onnx
from crmbet.models.segmentation import HeavyTailTransformer


def _features(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 4, n)
    columns = {
        name: rng.normal(groups * 3.0 + i, 0.3, n).clip(0)
        for i, name in enumerate(SEGMENTATION_FEATURES)
    }
    return pl.DataFrame({"player_id": [f"p{i}" for i in range(n)], **columns})


@pytest.fixture(scope="module")
def bustabit_features(bustabit_events: pl.DataFrame) -> pl.DataFrame:
    return compute_features(fold(bustabit_events))


def test_training_is_reproducible_per_seed(bustabit_features: pl.DataFrame) -> None:
    first, labels_a = train_segments(bustabit_features, seed=7)
    second, labels_b = train_segments(bustabit_features, seed=7)
    assert first.n_segments == second.n_segments
    assert np.array_equal(labels_a, labels_b)
    assert [p.name for p in first.profiles] == [p.name for p in second.profiles]


def test_segment_names_are_unique(bustabit_features: pl.DataFrame) -> None:
    model, _ = train_segments(bustabit_features, k=10)
    names = [p.name for p in model.profiles]
    assert len(set(names)) == len(names) == 10


def test_numpy_path_matches_sklearn(bustabit_features: pl.DataFrame) -> None:
    model, labels = train_segments(bustabit_features, k=6)
    X = model.matrix(bustabit_features)
    assert np.array_equal(model.assign(X)[0], model.pipeline.predict(X))
    assert np.array_equal(labels, model.pipeline.predict(X))


def test_onnx_labels_match_sklearn(bustabit_features: pl.DataFrame) -> None:
    model, _ = train_segments(bustabit_features, k=6)
    payload = export_onnx(model.pipeline, len(model.feature_names))
    X = model.matrix(bustabit_features)
    X[::50, 0] = np.nan  # the ONNX graph must impute like scikit-learn
    assert check_onnx_labels(payload, model.pipeline, X) == 0


def test_clusters_are_ordered_by_size(bustabit_features: pl.DataFrame) -> None:
    model, labels = train_segments(bustabit_features, k=5)
    sizes = np.bincount(labels)
    assert (np.diff(sizes) <= 0).all()
    assert [p.size for p in model.profiles] == sizes.tolist()


def test_select_k_finds_separated_blobs() -> None:
    rng = np.random.default_rng(1)
    centers = rng.uniform(-20, 20, size=(5, 3))
    X = np.vstack([rng.normal(c, 0.5, size=(200, 3)) for c in centers])
    selection = select_k(X, 3, 9, seed=0)
    assert selection.k == 5
    assert selection.ks == list(range(3, 10))
    assert len(selection.combined) == 7


def test_select_k_few_players_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(15, 4))  # 15 distinct players, as in a first try-out
    with caplog.at_level("WARNING", logger="crmbet.models.kselect"):
        selection = select_k(X, 3, 12, seed=0)
    # Without the per-segment floor, k = 8 scored best on these 15 players.
    assert selection.ks == [2]
    assert selection.k == 2
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "only 15 players" in messages
    assert "narrowed to 2..2" in messages


def test_silhouette_scores_match_scikit_learn() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(700, 4))
    labelings = [rng.integers(0, k, size=700) for k in (2, 3, 7)]
    # A cluster of one row scores 0, as in scikit-learn.
    labelings[1][0] = 9
    found = silhouette_scores(X, labelings, block_entries=5_000)
    expected = [silhouette_score(X, labels) for labels in labelings]
    np.testing.assert_allclose(found, expected, rtol=1e-12, atol=1e-14)


def test_silhouette_scores_need_two_clusters() -> None:
    with pytest.raises(ValueError, match="at least 2 clusters"):
        silhouette_scores(np.zeros((5, 2)), [np.zeros(5, dtype=int)])


def test_final_kmeans_refines_sample_fit() -> None:
    rng = np.random.default_rng(3)
    centers = rng.uniform(-20, 20, size=(4, 3))
    Z = np.vstack([rng.normal(c, 1.0, size=(500, 3)) for c in centers])
    kmeans = fit_kmeans(Z, 4, seed=0, sample=300)
    full = KMeans(n_clusters=4, n_init=4, random_state=0).fit(Z)
    assert adjusted_rand_score(kmeans.labels_, full.labels_) == 1.0
    assert kmeans.inertia_ == pytest.approx(full.inertia_, rel=1e-9)


def test_select_k_rejects_bad_range() -> None:
    with pytest.raises(ValueError, match="k range"):
        select_k(np.zeros((10, 2)), 5, 3)


def test_fewer_distinct_players_than_k_is_clear() -> None:
    features = _features(3)
    with pytest.raises(DegenerateDataError, match="k=5 segments requested but only 3"):
        train_segments(features, k=5)


def test_auto_k_narrows_range_for_few_players() -> None:
    model, labels = train_segments(_features(6), k_range=(3, 12))
    assert 2 <= model.n_segments <= 5
    assert labels.size == 6


def test_identical_players_cannot_be_segmented() -> None:
    features = _features(20).with_columns(
        [pl.lit(1.0).alias(name) for name in SEGMENTATION_FEATURES]
    )
    with pytest.raises(DegenerateDataError, match="identical features"):
        train_segments(features)


def test_no_players_is_clear() -> None:
    with pytest.raises(DegenerateDataError, match="no players"):
        train_segments(_features(0))


def test_constant_features_are_reported(bustabit_features: pl.DataFrame) -> None:
    model, _ = train_segments(bustabit_features, k=4)
    assert "sports_share" in str(model.params["constant_features"])
    assert model.metrics["n_constant_features"] >= 1


def test_missing_values_are_imputed() -> None:
    features = _features(400)
    features = features.with_columns(
        pl.when(pl.int_range(pl.len()) % 7 == 0)
        .then(None)
        .otherwise(pl.col("avg_stake"))
        .alias("avg_stake")
    )
    model, labels = train_segments(features, k=4)
    assert labels.size == 400
    assert np.isfinite(model.assign(model.matrix(features))[1]).all()


def test_single_bet_and_zero_stake_players(bustabit_events: pl.DataFrame) -> None:
    counts = bustabit_events.group_by("player_id").len()
    single = counts.filter(pl.col("len") == 1)["player_id"].head(300)
    events = bustabit_events.filter(pl.col("player_id").is_in(single.implode()))
    zero = events.head(40).with_columns(
        pl.lit(0.0).alias("amount"), pl.lit(0.0).alias("payout")
    )
    events = pl.concat([zero, events[40:]])
    features = compute_features(fold(events))
    model, labels = train_segments(features)
    assert labels.size == 300
    assert model.n_segments >= 3


def test_heavy_tail_transform_checks_flag_count() -> None:
    with pytest.raises(ValueError, match="one flag per feature"):
        HeavyTailTransformer(log_columns=(True,)).fit(np.zeros((3, 2)))
