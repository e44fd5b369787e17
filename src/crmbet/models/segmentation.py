"""Segmentation: a heavy-tail transform, standard scaling and k-means.

Money amounts and counts span several orders of magnitude, so those features
go through ``sign(x) * ln(1 + |x|)`` before scaling; shares in [0, 1] are
left as they are. The number of segments comes from :mod:`crmbet.models.kselect`
unless the caller fixes it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.cluster import KMeans
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from crmbet.errors import DegenerateDataError
from crmbet.features.definitions import FEATURES

logger = logging.getLogger(__name__)


class HeavyTailTransformer(TransformerMixin, BaseEstimator):
    """Apply ``sign(x) * log1p(|x|)`` to the columns flagged in ``log_columns``.

    Examples
    --------
    >>> import numpy as np
    >>> HeavyTailTransformer(log_columns=(True, False)).fit_transform(
    ...     np.array([[np.e - 1, 0.5]])).round(3).tolist()
    [[1.0, 0.5]]
    """

    def __init__(self, log_columns: Sequence[bool] = ()) -> None:
        self.log_columns = log_columns

    def fit(self, X: np.ndarray, y: object = None) -> HeavyTailTransformer:  # noqa: N803
        X = np.asarray(X, dtype=np.float64)
        mask = np.asarray(self.log_columns, dtype=bool)
        if mask.size and mask.size != X.shape[1]:
            raise ValueError(
                f"log_columns has {mask.size} flags but X has {X.shape[1]} columns; "
                "give one flag per feature"
            )
        self.log_mask_ = mask if mask.size else np.zeros(X.shape[1], dtype=bool)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        X = np.array(X, dtype=np.float64, copy=True)
        columns = X[:, self.log_mask_]
        X[:, self.log_mask_] = np.sign(columns) * np.log1p(np.abs(columns))
        return X


def build_pipeline(
    feature_names: Sequence[str], k: int, seed: int, n_init: int = 4
) -> Pipeline:
    """Build the unfitted segmentation pipeline for the given features."""
    log_columns = tuple(
        FEATURES[name].heavy_tailed if name in FEATURES else False
        for name in feature_names
    )
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("heavy_tail", HeavyTailTransformer(log_columns=log_columns)),
            ("scale", StandardScaler()),
            ("kmeans", KMeans(n_clusters=k, n_init=n_init, random_state=seed)),
        ]
    )


def transform_only(pipeline: Pipeline, X: np.ndarray) -> np.ndarray:  # noqa: N803
    """Run every step of a fitted pipeline except k-means."""
    return pipeline[:-1].transform(X)


@dataclass(frozen=True)
class DataCheck:
    """Findings of :func:`check_matrix` about a feature matrix."""

    n_rows: int
    n_distinct: int
    constant_features: tuple[str, ...]
    missing_share: dict[str, float]


def check_matrix(X: np.ndarray, feature_names: Sequence[str]) -> DataCheck:  # noqa: N803
    """Check that a feature matrix can be clustered and report its quirks.

    Raises
    ------
    DegenerateDataError
        With no rows, fewer than two distinct players, or a column that is
        missing for every player.
    """
    if X.ndim != 2 or X.shape[1] != len(feature_names):
        raise DegenerateDataError(
            f"feature matrix has shape {X.shape} but {len(feature_names)} "
            "feature names "
            "were given; pass one column per feature"
        )
    if X.shape[0] == 0:
        raise DegenerateDataError(
            "no players to segment: the input had no valid events; "
            "check the dead letters"
        )
    missing = np.isnan(X).mean(axis=0)
    all_missing = [
        name for name, share in zip(feature_names, missing, strict=True) if share == 1.0
    ]
    if all_missing and len(all_missing) == len(feature_names):
        raise DegenerateDataError(
            f"every feature is missing for every player ({all_missing}); "
            "check the input's column mapping"
        )
    filled = np.where(
        np.isnan(X),
        np.nanmedian(np.where(np.isnan(X), np.nan, X), axis=0) if X.shape[0] else 0.0,
        X,
    )
    filled = np.nan_to_num(filled)
    # Rows are counted by hashing (adding 0.0 turns -0.0 into 0.0), several
    # times faster than np.unique's sort of whole rows.
    n_distinct = pl.DataFrame(np.round(filled, 12) + 0.0).n_unique()
    if n_distinct < 2:
        raise DegenerateDataError(
            f"all {X.shape[0]} players have identical features, so there is nothing to "
            "segment; add players with different behaviour"
        )
    constant = tuple(
        name
        for name, column in zip(feature_names, filled.T, strict=True)
        if np.ptp(column) == 0
    )
    if constant:
        logger.warning(
            "constant features carry no information for segmentation: %s",
            ", ".join(constant),
        )
    return DataCheck(
        n_rows=int(X.shape[0]),
        n_distinct=n_distinct,
        constant_features=constant,
        missing_share={
            n: float(s) for n, s in zip(feature_names, missing, strict=True) if s > 0
        },
    )


def order_clusters(pipeline: Pipeline, X: np.ndarray) -> np.ndarray:  # noqa: N803
    """Relabel clusters by decreasing size (ties by centroid) and return the labels.

    K-means numbers its clusters arbitrarily; ordering them makes segment
    ids stable across runs with the same data and seed.
    """
    kmeans: KMeans = pipeline.named_steps["kmeans"]
    labels = kmeans.labels_
    sizes = np.bincount(labels, minlength=kmeans.n_clusters)
    centers = kmeans.cluster_centers_
    order = sorted(
        range(kmeans.n_clusters), key=lambda c: (-sizes[c], tuple(centers[c]))
    )
    remap = np.empty_like(order)
    remap[order] = np.arange(len(order))
    kmeans.cluster_centers_ = centers[order]
    kmeans.labels_ = remap[labels]
    return kmeans.labels_
