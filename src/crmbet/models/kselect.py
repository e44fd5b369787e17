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
Each fit runs on one thread, with the ks spread over the cores, so the
result does not depend on the number of cores either. The silhouettes of
all ks share one computation of the sub-sample's pairwise distances
(:func:`silhouette_scores`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
)
from threadpoolctl import threadpool_limits

from crmbet.errors import DegenerateDataError
from crmbet.parallel import usable_cores

logger = logging.getLogger(__name__)

CRITERIA = ("silhouette", "calinski_harabasz", "davies_bouldin", "stability")

#: Automatic k keeps at least this many players per segment on average,
#: because a segment of a few players describes them, not a group a
#: campaign can target. ``--k`` overrides it.
MIN_PLAYERS_PER_SEGMENT = 10

#: Players k-means is fitted on while choosing k.
FIT_SAMPLE = 50_000


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


def silhouette_scores(
    X: np.ndarray,  # noqa: N803
    labelings: Sequence[np.ndarray],
    block_entries: int = 1 << 18,
) -> list[float]:
    """Return the mean silhouette of each labelling of the same rows.

    The result equals scikit-learn's ``silhouette_score`` with the Euclidean
    distance, to floating-point rounding. The pairwise distances do not
    depend on the labels, so they are computed once, a block of rows at a
    time, and each block is multiplied by the one-hot matrices of every
    labelling: the sums of distances from each row to each cluster come out
    of one matrix product instead of a loop over rows per labelling. A block
    holds at most ``block_entries`` distances (2 MiB by default).

    Every labelling needs at least 2 and fewer than ``len(X)`` clusters.
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    n = X.shape[0]
    codes: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    for labels in labelings:
        _, code, count = np.unique(
            np.asarray(labels), return_inverse=True, return_counts=True
        )
        if not 1 < count.size < n:
            raise ValueError(
                f"a labelling has {count.size} clusters for {n} rows, but the "
                "silhouette needs at least 2 clusters and fewer clusters than "
                "rows; pass such labels"
            )
        codes.append(code.ravel())
        counts.append(count)
    offsets = np.cumsum([0] + [count.size for count in counts])
    rows = np.arange(n)
    onehot = np.zeros((n, int(offsets[-1])))
    for code, offset in zip(codes, offsets, strict=False):
        onehot[rows, offset + code] = 1.0
    # ||x - y||^2 = ||x||^2 - 2 x.y + ||y||^2 is one matrix product of
    # [x, ||x||^2, 1] and [-2 y, 1, ||y||^2], clipped at 0 against rounding,
    # with an exact 0 from each row to itself.
    squared_norms = np.einsum("ij,ij->i", X, X)[:, None]
    ones = np.ones((n, 1))
    left = np.hstack([X, squared_norms, ones])
    right = np.hstack([-2.0 * X, ones, squared_norms]).T.copy()
    sums = np.empty_like(onehot)
    step = max(1, min(n, block_entries // max(n, 1)))

    def fill(first: int, last: int) -> None:
        for start in range(first, last, step):
            stop = min(start + step, last)
            block = left[start:stop] @ right
            np.maximum(block, 0.0, out=block)
            block[np.arange(stop - start), np.arange(start, stop)] = 0.0
            np.sqrt(block, out=block)
            np.matmul(block, onehot, out=sums[start:stop])

    # Small blocks stay in the CPU cache, where one BLAS thread per block
    # beats several; NumPy releases the GIL, so Python threads share the
    # rows out between the cores.
    workers = max(1, min(usable_cores(), 8, n // (4 * step) or 1))
    bounds = np.linspace(0, n, workers + 1).astype(int)
    with threadpool_limits(1), ThreadPoolExecutor(workers) as pool:
        list(pool.map(fill, bounds[:-1], bounds[1:]))
    scores = []
    for code, count, offset in zip(codes, counts, offsets, strict=False):
        totals = sums[:, offset : offset + count.size]
        own = totals[rows, code]
        with np.errstate(divide="ignore", invalid="ignore"):
            intra = own / (count[code] - 1)
            means = totals / count
            means[rows, code] = np.inf
            inter = means.min(axis=1)
            values = (inter - intra) / np.maximum(intra, inter)
        # A row alone in its cluster scores 0, as in scikit-learn.
        scores.append(float(np.nan_to_num(values).mean()))
    return scores


def _normalise(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    span = np.ptp(values)
    if span == 0 or not np.isfinite(span):
        return np.ones_like(values)
    scaled = (values - values.min()) / span
    return scaled if higher_is_better else 1.0 - scaled


@dataclass
class _KFit:
    """The two seeds' fits of one k, reduced to what the criteria need."""

    sub_labels: np.ndarray | None
    calinski_harabasz: float
    davies_bouldin: float
    stability: float


def _fit_k(
    X: np.ndarray,  # noqa: N803
    k: int,
    seed: int,
    sil_index: np.ndarray,
) -> _KFit:
    """Fit k-means with ``seed`` and ``seed + 1`` and score the first fit."""
    # The OpenMP thread count is set per thread, so each worker sets its own.
    with threadpool_limits(1, user_api="openmp"):
        first = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(X)
        second = KMeans(n_clusters=k, n_init=1, random_state=seed + 1).fit(X)
        labels = first.labels_
        sub_labels = None
        if np.unique(labels).size < 2:
            ch, db = 0.0, np.inf
        else:
            sub = labels[sil_index]
            if 1 < np.unique(sub).size < sil_index.size:
                sub_labels = sub
            ch = float(calinski_harabasz_score(X, labels))
            db = float(davies_bouldin_score(X, labels))
        return _KFit(
            sub_labels=sub_labels,
            calinski_harabasz=ch,
            davies_bouldin=db,
            stability=float(adjusted_rand_score(labels, second.labels_)),
        )


def select_k(
    X: np.ndarray,  # noqa: N803
    k_min: int = 3,
    k_max: int = 12,
    seed: int = 0,
    fit_sample: int = FIT_SAMPLE,
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
    # The silhouettes of every k share one set of pairwise distances, so the
    # labels are kept and scored together after the fits.
    scored: list[int] = []
    sub_labelings: list[np.ndarray] = []
    workers = max(1, min(usable_cores(), len(ks)))
    # Each fit runs on one thread and the ks are spread over the cores,
    # because small fits lose time synchronising threads. A fit's result
    # then does not depend on how many cores the machine has.
    with threadpool_limits(1), ThreadPoolExecutor(workers) as pool:
        fits = pool.map(lambda k: _fit_k(X, k, seed, sil_index), ks)
        for index, fit in enumerate(fits):
            if fit.sub_labels is not None:
                scored.append(index)
                sub_labelings.append(fit.sub_labels)
            scores["silhouette"].append(-1.0)
            scores["calinski_harabasz"].append(fit.calinski_harabasz)
            scores["davies_bouldin"].append(fit.davies_bouldin)
            scores["stability"].append(fit.stability)
            if progress is not None:
                progress(1)
    if sub_labelings:
        for index, value in zip(
            scored, silhouette_scores(X[sil_index], sub_labelings), strict=True
        ):
            scores["silhouette"][index] = value

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
