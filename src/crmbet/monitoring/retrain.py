"""Retraining: train a challenger, compare it with the champion, maybe promote.

:func:`retrain` trains a challenger on new events, scores it and the
champion on the same players (:func:`compare_models`), logs the comparison
as metrics on the challenger's MLflow run and as tags on its model version,
points the alias ``challenger`` at it and promotes it to ``champion`` only
when :func:`decide_promotion` returns True or the caller forces it.

Comparison on the new data
--------------------------
- Segment quality: silhouette, Davies-Bouldin and Calinski-Harabasz of both
  models' labels, all measured in the challenger's scaled feature space so
  the two label sets are judged by one yardstick.
- Stability: adjusted Rand index between champion and challenger labels.
- Players changing segment: segments are matched one-to-one by the
  Hungarian algorithm on the contingency table (most shared players); every
  player outside a matched pair counts as changed.
- Drift of the segment mix: PSI between the champion's segment shares at
  training time and its shares on the new data.

Promotion rule (:class:`PromotionRule`)
---------------------------------------
The challenger is promoted when any of these holds:

1. there is no champion, or the champion cannot score the new features;
2. its silhouette beats the champion's by at least ``min_silhouette_gain``;
3. the champion's segment mix drifted (PSI at least ``segment_mix_psi``)
   and the challenger's silhouette is at most ``max_silhouette_loss`` below
   the champion's.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_score,
)

from crmbet.config import Settings, get_settings
from crmbet.models.bundle import SegmentModel
from crmbet.models.registry import CHALLENGER, CHAMPION, ModelRegistry
from crmbet.monitoring import lifecycle_metrics
from crmbet.monitoring.drift import population_stability_index
from crmbet.training import TrainingResult, train_from_events

logger = logging.getLogger(__name__)

PromoteMode = Literal["rule", "always", "never"]

#: Alias kept on the champion replaced by a promotion, so it can be restored.
PREVIOUS_CHAMPION = "previous_champion"

#: Players sampled for the silhouette, which is quadratic in the sample size.
SILHOUETTE_SAMPLE = 5_000

#: Artifact holding the features a version was trained on, the drift reference.
REFERENCE_ARTIFACT = "reference/features.parquet"


@dataclass(frozen=True)
class PromotionRule:
    """Thresholds of the promotion rule (see the module docstring)."""

    min_silhouette_gain: float = 0.02
    segment_mix_psi: float = 0.25
    max_silhouette_loss: float = 0.02


@dataclass(frozen=True)
class ModelComparison:
    """Champion and challenger scored on the same players."""

    n_players: int
    challenger_k: int
    challenger_silhouette: float
    challenger_davies_bouldin: float
    challenger_calinski_harabasz: float
    champion_version: str | None = None
    champion_k: int | None = None
    champion_silhouette: float | None = None
    champion_davies_bouldin: float | None = None
    champion_calinski_harabasz: float | None = None
    adjusted_rand_index: float | None = None
    segment_change_share: float | None = None
    champion_segment_mix_psi: float | None = None
    champion_compatible: bool = True

    def metrics(self) -> dict[str, float]:
        """Return the numeric fields, prefixed for logging on the challenger run."""
        return {
            f"compare_{key}": float(value)
            for key, value in asdict(self).items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }


@dataclass
class RetrainResult:
    """Outcome of :func:`retrain`: the training, the comparison and the decision."""

    training: TrainingResult
    comparison: ModelComparison
    promoted: bool
    reason: str

    @property
    def version(self) -> str | None:
        """The challenger's registered version."""
        return self.training.version


def _quality(z: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    if np.unique(labels).size < 2:
        # One segment has no separation to measure: worst silhouette.
        return {
            "silhouette": -1.0,
            "davies_bouldin": float("inf"),
            "calinski_harabasz": 0.0,
        }
    rng = np.random.default_rng(seed)
    index = rng.choice(z.shape[0], min(SILHOUETTE_SAMPLE, z.shape[0]), replace=False)
    sample = labels[index]
    silhouette = (
        float(silhouette_score(z[index], sample))
        if 1 < np.unique(sample).size < index.size
        else -1.0
    )
    return {
        "silhouette": silhouette,
        "davies_bouldin": float(davies_bouldin_score(z, labels)),
        "calinski_harabasz": float(calinski_harabasz_score(z, labels)),
    }


def segment_change_share(before: np.ndarray, after: np.ndarray) -> float:
    """Return the share of players outside the best one-to-one segment matching.

    Examples
    --------
    >>> segment_change_share(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]))
    0.0
    >>> segment_change_share(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]))
    0.25
    """
    before = np.asarray(before, dtype=np.int64)
    after = np.asarray(after, dtype=np.int64)
    if before.size == 0:
        return 0.0
    table = np.zeros((before.max() + 1, after.max() + 1), dtype=np.int64)
    np.add.at(table, (before, after), 1)
    rows, columns = linear_sum_assignment(table, maximize=True)
    return float(1.0 - table[rows, columns].sum() / before.size)


def segment_mix_psi(model: SegmentModel, labels: np.ndarray) -> float:
    """Return the PSI between a model's training segment shares and ``labels``."""
    trained = np.array([p.size for p in model.profiles], dtype=np.float64)
    now = np.bincount(labels, minlength=len(model.profiles)).astype(np.float64)
    return population_stability_index(
        trained / max(trained.sum(), 1.0), now / max(now.sum(), 1.0)
    )


def compare_models(
    champion: SegmentModel | None,
    challenger: SegmentModel,
    features: pl.DataFrame,
    *,
    seed: int = 0,
) -> ModelComparison:
    """Score champion and challenger on the same feature table."""
    z = challenger.scale(challenger.matrix(features))
    challenger_labels, _, _ = challenger.assign(challenger.matrix(features))
    mine = _quality(z, challenger_labels, seed)
    base = {
        "n_players": features.height,
        "challenger_k": challenger.n_segments,
        "challenger_silhouette": mine["silhouette"],
        "challenger_davies_bouldin": mine["davies_bouldin"],
        "challenger_calinski_harabasz": mine["calinski_harabasz"],
    }
    if champion is None:
        return ModelComparison(**base)
    try:
        champion_labels, _, _ = champion.assign(champion.matrix(features))
    except KeyError as error:
        logger.warning(
            "champion version %s cannot score the new features: %s",
            champion.version,
            error,
        )
        return ModelComparison(
            **base,
            champion_version=champion.version,
            champion_k=champion.n_segments,
            champion_compatible=False,
        )
    theirs = _quality(z, champion_labels, seed)
    return ModelComparison(
        **base,
        champion_version=champion.version,
        champion_k=champion.n_segments,
        champion_silhouette=theirs["silhouette"],
        champion_davies_bouldin=theirs["davies_bouldin"],
        champion_calinski_harabasz=theirs["calinski_harabasz"],
        adjusted_rand_index=float(
            adjusted_rand_score(champion_labels, challenger_labels)
        ),
        segment_change_share=segment_change_share(champion_labels, challenger_labels),
        champion_segment_mix_psi=segment_mix_psi(champion, champion_labels),
    )


def decide_promotion(
    comparison: ModelComparison, rule: PromotionRule | None = None
) -> tuple[bool, str]:
    """Apply the promotion rule and return the decision with its reason."""
    rule = rule or PromotionRule()
    if comparison.champion_version is None:
        return True, "there is no champion"
    if not comparison.champion_compatible or comparison.champion_silhouette is None:
        return True, "the champion cannot score the current features"
    gain = comparison.challenger_silhouette - comparison.champion_silhouette
    if gain >= rule.min_silhouette_gain:
        return True, (
            f"silhouette improved by {gain:.3f} "
            f"(at least {rule.min_silhouette_gain} required)"
        )
    psi = comparison.champion_segment_mix_psi or 0.0
    if psi >= rule.segment_mix_psi and gain >= -rule.max_silhouette_loss:
        return True, (
            f"the champion's segment mix drifted (PSI {psi:.3f} >= "
            f"{rule.segment_mix_psi}) and the challenger's silhouette is "
            f"within {rule.max_silhouette_loss} of it"
        )
    return False, (
        f"silhouette change {gain:+.3f} is below the required "
        f"{rule.min_silhouette_gain} and the champion's segment mix PSI "
        f"{psi:.3f} is below {rule.segment_mix_psi}"
    )


def log_reference_features(
    registry: ModelRegistry, version: str, features: pl.DataFrame
) -> None:
    """Store the features a version was trained on as its drift reference."""
    run_id = registry.client.get_model_version(registry.model_name, version).tags.get(
        "run_id"
    )
    if not run_id:
        logger.warning(
            "version %s has no run_id tag; its drift reference is not stored", version
        )
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "features.parquet"
        features.write_parquet(path)
        registry.client.log_artifact(run_id, str(path), artifact_path="reference")


def load_reference_features(
    registry: ModelRegistry, ref: str = CHAMPION
) -> pl.DataFrame:
    """Return the training features stored with a version by :func:`retrain`."""
    version = registry.resolve(ref)
    run_id = registry.client.get_model_version(registry.model_name, version).tags.get(
        "run_id"
    )
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from crmbet.errors import ModelNotFoundError

    try:
        with tempfile.TemporaryDirectory() as folder:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=REFERENCE_ARTIFACT,
                dst_path=folder,
                tracking_uri=registry.settings.registry_uri,
            )
            return pl.read_parquet(local)
    except (MlflowException, OSError) as error:
        raise ModelNotFoundError(
            f"version {version} of {registry.model_name!r} has no stored training "
            f"features ({error}); pass --reference with a features or events file"
        ) from error


def _record(
    registry: ModelRegistry,
    version: str,
    comparison: ModelComparison,
    promoted: bool,
    reason: str,
) -> None:
    client = registry.client
    name = registry.model_name
    run_id = client.get_model_version(name, version).tags.get("run_id")
    if run_id:
        for key, value in comparison.metrics().items():
            if np.isfinite(value):
                client.log_metric(run_id, key, value)
    tags = {
        "compared_with": comparison.champion_version or "none",
        "promotion_decision": "promoted" if promoted else "kept_as_challenger",
        "promotion_reason": reason[:5000],
        "compared_at": datetime.now(UTC).isoformat(),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def retrain(
    events: pl.DataFrame,
    *,
    settings: Settings | None = None,
    registry: ModelRegistry | None = None,
    k: int | None = None,
    k_range: tuple[int, int] = (3, 12),
    seed: int = 0,
    promote: PromoteMode = "rule",
    rule: PromotionRule | None = None,
) -> RetrainResult:
    """Train a challenger on ``events``, compare it with the champion and register it.

    Parameters
    ----------
    events:
        Canonical, pseudonymised events of the new training window.
    promote:
        ``"rule"`` promotes when :func:`decide_promotion` agrees, ``"always"``
        promotes regardless of the comparison, ``"never"`` only registers.
    rule:
        Thresholds of the promotion rule.
    """
    if promote not in ("rule", "always", "never"):
        raise ValueError(f"promote={promote!r} is not one of 'rule', 'always', 'never'")
    settings = settings or get_settings()
    registry = registry or ModelRegistry(settings)
    champion_version = registry.alias_version(CHAMPION)
    champion = registry.load(champion_version) if champion_version else None

    training = train_from_events(
        events,
        settings=settings,
        k=k,
        k_range=k_range,
        seed=seed,
        register=True,
        registry=registry,
    )
    version = str(training.version)
    comparison = compare_models(champion, training.model, training.features, seed=seed)
    by_rule, reason = decide_promotion(comparison, rule)
    promoted = {"rule": by_rule, "always": True, "never": False}[promote]
    if promote != "rule":
        reason = f"promotion forced to {promote!r}; the rule says: {reason}"
    if champion_version is None:
        # The registry makes the first version of a model the champion.
        promoted, reason = True, "there was no champion, so the first version became it"

    registry.set_alias(CHALLENGER, version)
    log_reference_features(registry, version, training.features)
    if promoted:
        if champion_version and champion_version != version:
            registry.set_alias(PREVIOUS_CHAMPION, champion_version)
        registry.set_alias(CHAMPION, version)
        registry.delete_alias(CHALLENGER)
    _record(registry, version, comparison, promoted, reason)
    lifecycle_metrics.RETRAINS.labels(
        "promoted" if promoted else "kept_as_challenger"
    ).inc()
    logger.info(
        "retrained version %s against champion %s: %s (%s)",
        version,
        champion_version or "none",
        "promoted" if promoted else "not promoted",
        reason,
    )
    return RetrainResult(
        training=training, comparison=comparison, promoted=promoted, reason=reason
    )
