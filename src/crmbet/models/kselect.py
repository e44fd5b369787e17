"""Automatic choice of the number of segments.

The rule, applied to the scaled feature matrix:

1. Draw a fixed random sample of at most ``fit_sample`` players (50,000 by
   default), so the cost does not grow with the number of players.
2. For every k in the range, fit k-means on the sample with two seeds.
3. Score each k on four criteria: the silhouette (on a sub-sample of at most
   ``silhouette_sample`` players), the Calinski-Harabasz index, the
   Davies-Bouldin index (lower is better) and the stability, the adjusted
   Rand index between the two seeds' labels.
4. Min-max normalise each criterion across the range (Davies-Bouldin
   inverted) and average the four. Ks whose stability is below
   ``min_stability`` are skipped unless none passes.
5. Take the k with the highest average; a tie goes to the smaller k.

Everything is seeded, so the same data and seed always give the same k.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_score,
)

from crmbet.errors import DegenerateDataError

logger = logging.getLogger(__name__)

CRITERIA = ("silhouette", "calinski_harabasz", "davies_bouldin", "stability")

#: Automatic k keeps at least this many players per segment on average;
#: a segment of a handful of players describes those players, not a group
#: a campaign can target. ``--k`` overrides it.
MIN_PLAYERS_PER_SEGMENT = 10


@dataclass
class KSelection:
    """The chosen k and the score of every k tried."""

    k: int
    ks: list[int]
    scores: dict[str, list[float]] = field(default_factory=dict)
    combined: list[float] = field(default_factory=list)
    sample_size: int = 0

    def as_rows(self) -> list[dict[str, float]]:
        """Return one row per k with every criterion and the combined score."""
        rows = []
        for index, k in enumerate(self.ks):
            row: dict[str, float] = {"k": k}
            row.update({name: values[index] for name, values in self.scores.items()})
            row["combined"] = self.combined[index]
            rows.append(row)
        return rows


def _normalise(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    span = np.ptp(values)
    if span == 0 or not np.isfinite(span):
        return np.ones_like(values)
    scaled = (values - values.min()) / span
    return scaled if higher_is_better else 1.0 - scaled


def select_k(
    X: np.ndarray,  # noqa: N803
    k_min: int = 3,
    k_max: int = 12,
    seed: int = 0,
    fit_sample: int = 50_000,
    silhouette_sample: int = 5_000,
    min_stability: float = 0.8,
    progress: Callable[[int], None] | None = None,
) -> KSelection:
    """Choose the number of segments for a scaled feature matrix.

    Parameters
    ----------
    X:
        Scaled features, one row per player.
    k_min, k_max:
        Inclusive range of k to try; clipped to the number of distinct rows
        and to :data:`MIN_PLAYERS_PER_SEGMENT` players per segment.
    seed:
        Seed of the sample and of every k-means fit.
    progress:
        Called with 1 after each k, for progress bars.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> blobs = np.vstack([rng.normal(c, 0.1, size=(50, 2)) for c in (0, 3, 6, 9)])
    >>> select_k(blobs, 2, 6).k
    4
    """
    if k_min < 2 or k_max < k_min:
        raise ValueError(
            f"k range {k_min}..{k_max} is invalid; use 2 <= k_min <= k_max"
        )
    rng = np.random.default_rng(seed)
    n_players = X.shape[0]
    if X.shape[0] > fit_sample:
        X = X[rng.choice(X.shape[0], fit_sample, replace=False)]
    n_distinct = np.unique(X, axis=0).shape[0]
    if n_distinct - 1 < 2:
        raise DegenerateDataError(
            f"only {n_distinct} distinct players: at least 3 are needed to choose k "
            "automatically; pass --k 2 or add players"
        )
    upper = min(k_max, n_distinct - 1, max(2, n_players // MIN_PLAYERS_PER_SEGMENT))
    lower = min(k_min, upper)
    if n_players < MIN_PLAYERS_PER_SEGMENT * k_min:
        logger.warning(
            "only %d players: segments found on fewer than %d players are not "
            "reliable; train on more players or pass --k",
            n_players,
            MIN_PLAYERS_PER_SEGMENT * k_min,
        )
    if upper < k_max or lower < k_min:
        logger.warning(
            "k range %d..%d narrowed to %d..%d: the data has %d players, %d of "
            "them distinct, and automatic k keeps at least %d players per segment",
            k_min,
            k_max,
            lower,
            upper,
            n_players,
            n_distinct,
            MIN_PLAYERS_PER_SEGMENT,
        )
    ks = list(range(lower, upper + 1))
    sil_index = (
        rng.choice(X.shape[0], silhouette_sample, replace=False)
        if X.shape[0] > silhouette_sample
        else np.arange(X.shape[0])
    )

    scores: dict[str, list[float]] = {name: [] for name in CRITERIA}
    for k in ks:
        first = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(X)
        second = KMeans(n_clusters=k, n_init=1, random_state=seed + 1).fit(X)
        labels = first.labels_
        distinct_labels = np.unique(labels).size
        if distinct_labels < 2:
            sil, ch, db = -1.0, 0.0, np.inf
        else:
            sub_labels = labels[sil_index]
            sil = (
                float(silhouette_score(X[sil_index], sub_labels, random_state=seed))
                if 1 < np.unique(sub_labels).size < sil_index.size
                else -1.0
            )
            ch = float(calinski_harabasz_score(X, labels))
            db = float(davies_bouldin_score(X, labels))
        scores["silhouette"].append(sil)
        scores["calinski_harabasz"].append(ch)
        scores["davies_bouldin"].append(db)
        scores["stability"].append(float(adjusted_rand_score(labels, second.labels_)))
        if progress is not None:
            progress(1)

    db_values = np.array(scores["davies_bouldin"])
    db_values[~np.isfinite(db_values)] = (
        np.nanmax(db_values[np.isfinite(db_values)], initial=1.0) * 2
    )
    normalised = np.vstack(
        [
            _normalise(np.array(scores["silhouette"]), True),
            _normalise(np.array(scores["calinski_harabasz"]), True),
            _normalise(db_values, False),
            _normalise(np.array(scores["stability"]), True),
        ]
    )
    combined = normalised.mean(axis=0)
    eligible = np.array(scores["stability"]) >= min_stability
    if not eligible.any():
        eligible[:] = True
    masked = np.where(eligible, combined, -np.inf)
    best = int(np.argmax(masked))  # argmax returns the first, i.e. smallest, k on ties
    selection = KSelection(
        k=ks[best],
        ks=ks,
        scores=scores,
        combined=combined.tolist(),
        sample_size=X.shape[0],
    )
    logger.info(
        "chose k=%d from %s (combined score %.3f)", selection.k, ks, combined[best]
    )
    return selection
