"""The trained segmentation model and the training routine that builds it.

:class:`SegmentModel` contains everything a prediction needs (the fitted
pipeline, segment profiles and the schema versions it was trained on) and
assigns players to segments with plain NumPy, which is what serving uses.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import polars as pl
from sklearn.cluster import KMeans
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from crmbet.errors import DegenerateDataError
from crmbet.events.schema import EVENT_SCHEMA_VERSION
from crmbet.features.definitions import (
    FEATURE_SCHEMA_VERSION,
    FEATURES,
    SEGMENTATION_FEATURES,
)
from crmbet.features.state import STATE_SCHEMA_VERSION
from crmbet.models.kselect import FIT_SAMPLE, KSelection, select_k, silhouette_scores
from crmbet.models.profiles import SegmentProfile, campaigns_for, name_segments
from crmbet.models.segmentation import (
    build_pipeline,
    check_matrix,
    order_clusters,
)

logger = logging.getLogger(__name__)

#: Players beyond this many are assigned with ``predict`` after fitting the
#: final k-means on a sample of this size.
MAX_FIT_ROWS = 500_000
METRIC_SAMPLE = 10_000
#: Rows assigned per block, so the intermediate matrices stay in cache.
ASSIGN_BLOCK_ROWS = 16_384


@dataclass
class SegmentModel:
    """A fitted segmentation model with its profiles and metadata."""

    feature_names: list[str]
    pipeline: Pipeline
    profiles: list[SegmentProfile]
    population_medians: dict[str, float]
    k_selection: KSelection | None
    metrics: dict[str, float]
    params: dict[str, object]
    as_of: float
    trained_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    event_schema_version: int = EVENT_SCHEMA_VERSION
    state_schema_version: int = STATE_SCHEMA_VERSION
    feature_schema_version: int = FEATURE_SCHEMA_VERSION
    version: str | None = None
    name: str = "crmbet-segments"

    def __post_init__(self) -> None:
        self._prepare_numpy()

    def _prepare_numpy(self) -> None:
        impute = self.pipeline.named_steps["impute"]
        heavy = self.pipeline.named_steps["heavy_tail"]
        scale = self.pipeline.named_steps["scale"]
        kmeans: KMeans = self.pipeline.named_steps["kmeans"]
        self._fill = np.asarray(impute.statistics_, dtype=np.float64)
        self._log_mask = np.asarray(heavy.log_mask_, dtype=bool)
        self._mean = np.asarray(scale.mean_, dtype=np.float64)
        self._scale = np.asarray(scale.scale_, dtype=np.float64)
        self._centers = np.asarray(kmeans.cluster_centers_, dtype=np.float64)
        self._center_sq = (self._centers**2).sum(axis=1)

    def __getstate__(self) -> dict[str, object]:
        return {
            key: value
            for key, value in self.__dict__.items()
            if not key.startswith("_")
        }

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._prepare_numpy()

    @property
    def n_segments(self) -> int:
        """Number of segments."""
        return int(self._centers.shape[0])

    def scale(self, X: np.ndarray, copy: bool = True) -> np.ndarray:  # noqa: N803
        """Impute, transform and scale a raw feature matrix (NumPy path).

        With ``copy=False`` a C-ordered float64 ``X`` is scaled in place.
        """
        X = np.array(X, dtype=np.float64, copy=copy, order="C")
        if X.ndim == 1:
            X = X[None, :]
        missing = np.isnan(X)
        if missing.any():
            X[missing] = np.broadcast_to(self._fill, X.shape)[missing]
        for column in np.flatnonzero(self._log_mask):
            values = X[:, column]
            if values.size and values.min() >= 0:
                np.log1p(values, out=values)
            else:
                X[:, column] = np.sign(values) * np.log1p(np.abs(values))
        X -= self._mean
        X /= self._scale
        return X

    def assign(
        self,
        X: np.ndarray,
        overwrite: bool = False,  # noqa: N803
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return labels, confidence and distance to the nearest centroid.

        Confidence is ``1 - d1 / d2`` with ``d1`` and ``d2`` the distances to
        the nearest and second-nearest centroid: 0 on the border between two
        segments, close to 1 near a centroid. Rows are processed in blocks
        that stay in the CPU cache. With ``overwrite=True`` a C-ordered
        float64 ``X`` is used as scratch space and left scaled.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[None, :]
        n = X.shape[0]
        labels = np.empty(n, dtype=np.int64)
        confidence = np.empty(n)
        nearest = np.empty(n)
        for start in range(0, n, ASSIGN_BLOCK_ROWS):
            stop = min(start + ASSIGN_BLOCK_ROWS, n)
            self._assign_block(
                X[start:stop],
                labels[start:stop],
                confidence[start:stop],
                nearest[start:stop],
                owned=overwrite,
            )
        return labels, confidence, nearest

    def _assign_block(
        self,
        X: np.ndarray,
        labels: np.ndarray,
        confidence: np.ndarray,  # noqa: N803
        nearest: np.ndarray,
        owned: bool = False,
    ) -> None:
        Z = self.scale(X, copy=not owned)
        squared = Z @ self._centers.T
        squared *= -2.0
        squared += self._center_sq
        squared += np.einsum("ij,ij->i", Z, Z)[:, None]
        np.maximum(squared, 0.0, out=squared)
        rows = np.arange(Z.shape[0])
        labels[:] = squared.argmin(axis=1)
        first = squared[rows, labels]
        if self.n_segments == 1:
            confidence[:] = 1.0
            nearest[:] = np.sqrt(first)
            return
        squared[rows, labels] = np.inf
        second = squared.min(axis=1)
        d1 = np.sqrt(first)
        d2 = np.sqrt(second)
        nearest[:] = d1
        np.divide(d1, d2, out=confidence, where=d2 > 0)
        confidence[d2 <= 0] = 1.0
        np.subtract(1.0, confidence, out=confidence)

    def matrix(self, features: pl.DataFrame) -> np.ndarray:
        """Return the model's feature columns of a feature table as a matrix."""
        missing = [name for name in self.feature_names if name not in features.columns]
        if missing:
            raise KeyError(
                f"feature table lacks {missing}; compute them with "
                "crmbet.features.compute_features"
            )
        return features.select(self.feature_names).cast(pl.Float64).to_numpy()

    def profile(self, cluster_id: int) -> SegmentProfile:
        """Return the profile of one segment."""
        return self.profiles[cluster_id]


def _quality(Z: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:  # noqa: N803
    rng = np.random.default_rng(seed)
    index = rng.choice(Z.shape[0], min(METRIC_SAMPLE, Z.shape[0]), replace=False)
    sample_labels = labels[index]
    # The three indices need at least 2 clusters and fewer clusters than points.
    if not 1 < np.unique(sample_labels).size < index.size:
        return {"silhouette": -1.0, "calinski_harabasz": 0.0, "davies_bouldin": 0.0}
    sample = Z[index]
    return {
        "silhouette": silhouette_scores(sample, [sample_labels])[0],
        "calinski_harabasz": float(calinski_harabasz_score(sample, sample_labels)),
        "davies_bouldin": float(davies_bouldin_score(sample, sample_labels)),
    }


def fit_kmeans(
    Z: np.ndarray,  # noqa: N803
    k: int,
    seed: int,
    sample: int = FIT_SAMPLE,
    n_init: int = 4,
) -> KMeans:
    """Fit the final k-means on the scaled matrix ``Z``.

    The best of ``n_init`` starts is found on a seeded sample of at most
    ``sample`` rows, the same sample that :func:`select_k` draws. Its
    centroids already fit that many players, so k-means on every row,
    started from them, converges in a few passes. Up to ``sample`` rows the
    fit on the sample is the final one.
    """
    # One thread, because these fits are too small to gain from more and
    # threads that wait on each other's iterations lose much time on a busy
    # machine.
    with threadpool_limits(1):
        if Z.shape[0] <= sample:
            return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(Z)
        rng = np.random.default_rng(seed)
        rows = rng.choice(Z.shape[0], sample, replace=False)
        start = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(Z[rows])
        return KMeans(
            n_clusters=k, init=start.cluster_centers_, n_init=1, random_state=seed
        ).fit(Z)


def _profiles(
    features: pl.DataFrame, labels: np.ndarray, k: int
) -> tuple[list[SegmentProfile], dict[str, float]]:
    names = [name for name in FEATURES if name in features.columns]
    labelled = features.select(names).with_columns(pl.Series("__segment", labels))
    medians = labelled.group_by("__segment").median().sort("__segment")
    overall = features.select(pl.col(names).median()).row(0, named=True)
    population = {name: float(overall[name] or 0.0) for name in names}
    sizes = np.bincount(labels, minlength=k)
    rows = {int(row["__segment"]): row for row in medians.iter_rows(named=True)}
    segment_medians = [
        {name: float(rows[c][name]) if c in rows else 0.0 for name in names}
        for c in range(k)
    ]
    segment_names = name_segments(segment_medians, population)
    total = max(int(sizes.sum()), 1)
    profiles = [
        SegmentProfile(
            cluster_id=c,
            name=segment_names[c],
            size=int(sizes[c]),
            share=float(sizes[c] / total),
            medians=segment_medians[c],
            campaigns=campaigns_for(segment_names[c]),
        )
        for c in range(k)
    ]
    return profiles, population


def train_segments(
    features: pl.DataFrame,
    *,
    feature_names: Sequence[str] = SEGMENTATION_FEATURES,
    k: int | None = None,
    k_range: tuple[int, int] = (3, 12),
    seed: int = 0,
    as_of: float | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> tuple[SegmentModel, np.ndarray]:
    """Train a segmentation model on a player feature table.

    Parameters
    ----------
    features:
        One row per player with ``player_id`` and at least ``feature_names``;
        other feature columns are used for the profiles.
    k:
        Fixed number of segments; chosen by :func:`select_k` when None.
    k_range:
        Inclusive range searched when ``k`` is None.
    seed:
        Seed of every random step, so results are reproducible.
    progress:
        Called with a step name and a count, for progress bars.

    Returns
    -------
    (SegmentModel, numpy.ndarray)
        The model and each player's segment id, in the table's row order.
    """
    feature_names = list(feature_names)
    X = features.select(feature_names).cast(pl.Float64).to_numpy()
    check = check_matrix(X, feature_names)
    if k is not None:
        # One segment is allowed here (a baseline, or a deliberately bad
        # challenger in canary tests); the command line requires at least 2.
        if k < 1:
            raise ValueError(f"k={k} is invalid; pass at least 1 segment or None")
        if k > check.n_distinct:
            raise DegenerateDataError(
                f"k={k} segments requested but only {check.n_distinct} distinct "
                "players; "
                f"pass --k {check.n_distinct} or fewer"
            )

    def tick(step: str) -> Callable[[int], None]:
        return lambda n: progress(step, n) if progress else None

    # Fit the transform first so that k selection runs on the scaled matrix.
    # The final pipeline reuses the fitted transform.
    prep = build_pipeline(feature_names, k or 2, seed)[:-1]
    # SimpleImputer computes medians through masked arrays, over 10 times
    # slower than np.nanmedian here. Fitted on the one row of column medians,
    # it gets the same statistics (an all-missing column still gets 0).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        medians = np.nanmedian(X, axis=0)
    prep.named_steps["impute"].fit(medians.reshape(1, -1))
    Z = prep[1:].fit_transform(prep.named_steps["impute"].transform(X))
    selection: KSelection | None = None
    if k is None:
        selection = select_k(
            Z, k_range[0], k_range[1], seed=seed, progress=tick("select-k")
        )
        k = selection.k
    rng = np.random.default_rng(seed)
    fit_rows = (
        np.sort(rng.choice(X.shape[0], MAX_FIT_ROWS, replace=False))
        if X.shape[0] > MAX_FIT_ROWS
        else None
    )
    Z_fit = Z if fit_rows is None else Z[fit_rows]
    kmeans = fit_kmeans(Z_fit, k, seed)
    pipeline = Pipeline([*prep.steps, ("kmeans", kmeans)])
    order_clusters(pipeline, Z_fit)
    if progress:
        progress("fit", 1)

    profiles_stub = SegmentModel(
        feature_names=feature_names,
        pipeline=pipeline,
        profiles=[],
        population_medians={},
        k_selection=selection,
        metrics={},
        params={},
        as_of=0.0,
    )
    labels, _, _ = profiles_stub.assign(X)
    profiles, population = _profiles(features, labels, k)
    metrics = _quality(Z, labels, seed)
    metrics.update(
        {
            "k": float(k),
            "n_players": float(X.shape[0]),
            "inertia": float(pipeline.named_steps["kmeans"].inertia_),
            "n_constant_features": float(len(check.constant_features)),
        }
    )
    params: dict[str, object] = {
        "k": k,
        "k_mode": "auto" if selection else "fixed",
        "k_range": f"{k_range[0]}-{k_range[1]}",
        "seed": seed,
        "features": ",".join(feature_names),
        "constant_features": ",".join(check.constant_features) or "none",
    }
    if as_of is None:
        as_of = float(features["__as_of"][0]) if "__as_of" in features.columns else 0.0
    model = SegmentModel(
        feature_names=feature_names,
        pipeline=pipeline,
        profiles=profiles,
        population_medians=population,
        k_selection=selection,
        metrics=metrics,
        params=params,
        as_of=as_of,
    )
    logger.info(
        "trained %d segments on %d players: %s",
        k,
        X.shape[0],
        ", ".join(p.name for p in profiles),
    )
    return model, labels
