"""The predictor: one object behind the Python API, HTTP, batch jobs and streams.

It assigns players to segments with the model's NumPy path, scores risk,
and picks campaign recommendations, removing every bonus and promotion for
players whose responsible-gambling markers are strong.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from crmbet.features.definitions import FEATURES, compute_features
from crmbet.features.state import fold
from crmbet.models.bundle import SegmentModel
from crmbet.models.profiles import SAFER_GAMBLING_CAMPAIGNS, Campaign
from crmbet.models.risk import (
    MISSING_MARKERS_REASON,
    RISK_FEATURES,
    RiskScores,
    score_risk,
    withheld_note,
)
from crmbet.serving.value_checks import value_problem

logger = logging.getLogger(__name__)

#: Rows per block of a parallel batch prediction.
PARALLEL_BLOCK_ROWS = 65_536
_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(
            max_workers=os.cpu_count() or 2, thread_name_prefix="crmbet-predict"
        )
    return _executor


#: Features a prediction reads: the model's plus those of the risk scores.
def _needed(model: SegmentModel) -> list[str]:
    return list(dict.fromkeys([*model.feature_names, *RISK_FEATURES]))


@dataclass
class Prediction:
    """Segment, risk and recommendations predicted for one player."""

    player_id: str | None
    cluster_id: int
    segment: str
    confidence: float
    campaign_recommendations: list[dict[str, object]]
    risk: dict[str, float]
    responsible_gambling_flag: bool
    responsible_gambling_reasons: list[str]
    recommendation_note: str
    model_version: str | None
    imputed_features: list[str] = field(default_factory=list)
    latency_ms: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """Return the prediction as plain JSON-ready data."""
        return asdict(self)


@dataclass
class BatchPrediction:
    """Column-wise predictions for many players; convert with :meth:`to_dicts`."""

    player_ids: list[str] | None
    cluster_ids: np.ndarray
    confidence: np.ndarray
    risk: RiskScores
    model: SegmentModel
    latency_ms: float = 0.0

    def __len__(self) -> int:
        return int(self.cluster_ids.size)

    @property
    def segments(self) -> list[str]:
        """Segment name of each player."""
        names = [profile.name for profile in self.model.profiles]
        return [names[label] for label in self.cluster_ids]

    def to_polars(self) -> pl.DataFrame:
        """Return one row per player with segment, confidence, risk and campaigns.

        ``campaigns`` lists the ids of the campaigns to offer, comma-separated,
        without promotions for flagged players, and
        ``responsible_gambling_reasons`` the reasons a player is flagged.
        """
        profiles = self.model.profiles
        names = np.array([profile.name for profile in profiles], dtype=object)
        offered = np.array(
            [",".join(c.id for c in profile.campaigns) for profile in profiles],
            dtype=object,
        )
        safe = [c.id for c in SAFER_GAMBLING_CAMPAIGNS]
        withheld = np.array(
            [
                ",".join([c.id for c in p.campaigns if not c.promotion] + safe)
                for p in profiles
            ],
            dtype=object,
        )
        flagged = np.asarray(self.risk.harm_flag, dtype=bool)
        data: dict[str, object] = {
            "cluster_id": self.cluster_ids,
            "segment": names[self.cluster_ids].tolist(),
            "confidence": self.confidence,
            "harm_score": self.risk.harm_score,
            "responsible_gambling_flag": flagged,
            "churn_risk": self.risk.churn_risk,
            "bonus_abuse_risk": self.risk.bonus_abuse_risk,
            "campaigns": np.where(
                flagged, withheld[self.cluster_ids], offered[self.cluster_ids]
            ).tolist(),
        }
        if self.player_ids is not None:
            data = {"player_id": self.player_ids, **data}
        reasons = {
            name: flagged & (np.asarray(values) >= 1.0)
            for name, values in self.risk.markers.items()
        }
        if self.risk.markers_unknown is not None:
            reasons[MISSING_MARKERS_REASON] = flagged & self.risk.markers_unknown
        # Flagged by the mean of the markers with none at full intensity.
        named = np.zeros_like(flagged)
        for mask in reasons.values():
            named |= mask
        reasons["combined_harm_score"] = flagged & ~named
        marks = pl.DataFrame(reasons)
        joined = marks.select(
            pl.concat_str(
                [pl.when(pl.col(name)).then(pl.lit(name)) for name in reasons],
                separator=",",
                ignore_nulls=True,
            ).alias("responsible_gambling_reasons")
        )
        return pl.concat([pl.DataFrame(data), joined], how="horizontal")

    def item(self, index: int) -> Prediction:
        """Return the full prediction of one player of the batch."""
        player_id = self.player_ids[index] if self.player_ids is not None else None
        return _build_prediction(
            self.model,
            player_id,
            int(self.cluster_ids[index]),
            float(self.confidence[index]),
            self.risk,
            index,
            [],
            0.0,
        )

    def to_dicts(self) -> list[dict[str, object]]:
        """Return every prediction as a dict (slow for millions of players)."""
        return [self.item(index).to_dict() for index in range(len(self))]


def recommend(
    campaigns: Sequence[Campaign], flagged: bool, reasons: Sequence[str]
) -> tuple[list[dict[str, object]], str]:
    """Return the campaigns to offer and a note that explains any removal."""
    if not flagged:
        return [asdict(c) for c in campaigns], ""
    kept = [asdict(c) for c in campaigns if not c.promotion]
    kept += [asdict(c) for c in SAFER_GAMBLING_CAMPAIGNS]
    return kept, withheld_note(list(reasons))


def _build_prediction(
    model: SegmentModel,
    player_id: str | None,
    cluster_id: int,
    confidence: float,
    risk: RiskScores,
    index: int,
    imputed: list[str],
    latency_ms: float,
) -> Prediction:
    profile = model.profiles[cluster_id]
    flagged = bool(risk.harm_flag[index])
    reasons = risk.reasons(index) if flagged else []
    campaigns, note = recommend(profile.campaigns, flagged, reasons)
    return Prediction(
        player_id=player_id,
        cluster_id=cluster_id,
        segment=profile.name,
        confidence=confidence,
        campaign_recommendations=campaigns,
        risk={
            "harm_score": float(risk.harm_score[index]),
            "churn_risk": float(risk.churn_risk[index]),
            "bonus_abuse_risk": float(risk.bonus_abuse_risk[index]),
            **{
                f"marker_{name}": float(values[index])
                for name, values in risk.markers.items()
            },
        },
        responsible_gambling_flag=flagged,
        responsible_gambling_reasons=reasons,
        recommendation_note=note,
        model_version=model.version,
        imputed_features=imputed,
        latency_ms=latency_ms,
    )


def check_feature_values(features: Mapping[str, float | None]) -> None:
    """Raise on unknown feature names and on impossible values."""
    unknown = [name for name in features if name not in FEATURES]
    if unknown:
        raise KeyError(
            f"unknown feature(s) {unknown}; see 'crmbet features list' for valid names"
        )
    for name, value in features.items():
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"feature {name}={value!r} is not a number; send a float")
        problem = value_problem(name, float(value))
        if problem is not None:
            raise ValueError(f"feature {problem}")


class SegmentPredictor:
    """Assigns players to segments and recommends campaigns.

    Examples
    --------
    See the README's quick start; the predictor needs a trained model, from
    :func:`crmbet.models.train_segments` or the registry.
    """

    def __init__(self, model: SegmentModel) -> None:
        self.model = model
        self._needed = _needed(model)
        self._index = {name: i for i, name in enumerate(model.feature_names)}

    @classmethod
    def from_registry(cls, registry: object, ref: str = "champion") -> SegmentPredictor:
        """Load the model registered under ``ref`` (alias or version)."""
        return cls(registry.load(ref))  # type: ignore[attr-defined]

    @property
    def version(self) -> str | None:
        """Registry version of the model, or None when not registered."""
        return self.model.version

    def predict_features(
        self,
        features: Mapping[str, float | None],
        player_id: str | None = None,
        cold_start: bool = False,
    ) -> Prediction:
        """Predict one player from a mapping of feature name to value.

        Unknown names raise ``KeyError`` and values that are not finite, or
        negative where a feature cannot be, raise ``ValueError``. Missing
        model features are filled with the training medians and listed in
        ``imputed_features``. With ``cold_start=True`` (a player without
        history) promotions are withheld, because no harm markers can be
        read yet.
        """
        start = time.perf_counter()
        check_feature_values(features)
        row = np.full(len(self.model.feature_names), np.nan)
        imputed = []
        for name, position in self._index.items():
            value = features.get(name)
            if value is None or (isinstance(value, float) and np.isnan(value)):
                imputed.append(name)
            else:
                row[position] = float(value)
        labels, confidence, _ = self.model.assign(row[None, :])
        risk = score_risk(
            {
                name: np.array([float(features[name])])
                for name in RISK_FEATURES
                if features.get(name) is not None
            },
            size=1,
        )
        latency = (time.perf_counter() - start) * 1000.0
        prediction = _build_prediction(
            self.model,
            player_id,
            int(labels[0]),
            float(confidence[0]),
            risk,
            0,
            imputed,
            latency,
        )
        if cold_start:
            prediction.campaign_recommendations = [
                c for c in prediction.campaign_recommendations if not c["promotion"]
            ]
            prediction.recommendation_note = (
                "unknown player: promotions are withheld until the player has history"
            )
        return prediction

    def predict_batch(
        self,
        features: pl.DataFrame | Mapping[str, np.ndarray],
        player_ids: list[str] | None = None,
    ) -> BatchPrediction:
        """Predict many players from a feature table or a mapping of columns.

        Large batches are cut into blocks that run on a thread pool: NumPy
        releases the GIL for array work, so blocks use every core.
        """
        start = time.perf_counter()
        if isinstance(features, pl.DataFrame):
            if player_ids is None and "player_id" in features.columns:
                player_ids = features["player_id"].to_list()
            columns = {
                name: features.get_column(name).cast(pl.Float64).to_numpy()
                for name in self._needed
                if name in features.columns
            }
        else:
            columns = {
                name: np.asarray(value, dtype=np.float64)
                for name, value in features.items()
            }
        size = len(next(iter(columns.values()))) if columns else 0
        blocks = [
            slice(i, min(i + PARALLEL_BLOCK_ROWS, size))
            for i in range(0, size, PARALLEL_BLOCK_ROWS)
        ] or [slice(0, 0)]
        if len(blocks) == 1:
            parts = [self._predict_block(columns, blocks[0], size)]
        else:
            # One BLAS thread per block: the blocks already use every core.
            with threadpool_limits(limits=1, user_api="blas"):
                parts = list(
                    _pool().map(
                        lambda part: self._predict_block(columns, part, size), blocks
                    )
                )
        labels = np.concatenate([part[0] for part in parts])
        confidence = np.concatenate([part[1] for part in parts])
        risk = RiskScores(
            harm_score=np.concatenate([part[2].harm_score for part in parts]),
            harm_flag=np.concatenate([part[2].harm_flag for part in parts]),
            markers={
                name: np.concatenate([part[2].markers[name] for part in parts])
                for name in parts[0][2].markers
            },
            churn_risk=np.concatenate([part[2].churn_risk for part in parts]),
            bonus_abuse_risk=np.concatenate(
                [part[2].bonus_abuse_risk for part in parts]
            ),
            markers_unknown=np.concatenate([part[2].markers_unknown for part in parts]),
        )
        latency = (time.perf_counter() - start) * 1000.0
        return BatchPrediction(
            player_ids, labels, confidence, risk, self.model, latency
        )

    def _predict_block(
        self, columns: Mapping[str, np.ndarray], rows: slice, size: int
    ) -> tuple[np.ndarray, np.ndarray, RiskScores]:
        count = rows.stop - rows.start
        matrix = np.empty((count, len(self.model.feature_names)))
        for position, name in enumerate(self.model.feature_names):
            column = columns.get(name)
            matrix[:, position] = np.nan if column is None else column[rows]
        labels, confidence, _ = self.model.assign(matrix, overwrite=True)
        risk = score_risk(
            {name: columns[name][rows] for name in RISK_FEATURES if name in columns},
            size=count,
        )
        return labels, confidence, risk

    def predict_events(
        self, events: pl.DataFrame, as_of: float | None = None
    ) -> BatchPrediction:
        """Fold canonical events into states and predict every player in them."""
        states = fold(events)
        features = compute_features(states, as_of=as_of, names=self._needed)
        return self.predict_batch(features)

    def predict_state(
        self, state: Mapping[str, float], as_of: float, player_id: str | None = None
    ) -> Prediction:
        """Predict one player from an online-store state."""
        from crmbet.features.definitions import compute_one

        return self.predict_features(compute_one(state, as_of, self._needed), player_id)
