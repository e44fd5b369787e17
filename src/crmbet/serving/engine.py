"""Vectorised inference for serving: segment assignment, risk scores, answers.

Two inference paths assign segments and agree with scikit-learn's
``pipeline.predict``: the model's own NumPy path and ONNX Runtime over the
registered ONNX export. :func:`choose_engine` times both on the loaded model
and keeps the faster, because the winner depends on batch size and machine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

import numpy as np

from crmbet.models.bundle import SegmentModel
from crmbet.models.profiles import SAFER_GAMBLING_CAMPAIGNS
from crmbet.models.risk import RISK_FEATURES, RiskScores, score_risk, withheld_note

logger = logging.getLogger(__name__)

EngineName = Literal["numpy", "onnx"]


class SegmentEngine(Protocol):
    """Assigns rows of model features to segments."""

    name: str

    def assign(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # noqa: N803
        """Return the label and the confidence of each row."""
        ...


class NumpyEngine:
    """The model's NumPy path (:meth:`SegmentModel.assign`)."""

    name = "numpy"

    def __init__(self, model: SegmentModel) -> None:
        self.model = model

    def assign(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # noqa: N803
        """Return the label and the confidence of each row."""
        labels, confidence, _ = self.model.assign(X)
        return labels, confidence


class OnnxEngine:
    """ONNX Runtime over the exported pipeline, whose k-means scores are distances."""

    name = "onnx"

    def __init__(self, onnx_bytes: bytes, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def assign(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # noqa: N803
        """Return the label and the confidence of each row."""
        labels, distances = self._session.run(
            None, {self._input: np.asarray(X, np.float64)}
        )
        labels = np.asarray(labels, dtype=np.int64).ravel()
        if distances.shape[1] < 2:
            return labels, np.ones(labels.size)
        nearest = np.partition(distances, 1, axis=1)
        d1, d2 = nearest[:, 0], nearest[:, 1]
        confidence = np.where(d2 > 0, 1.0 - d1 / np.where(d2 > 0, d2, 1.0), 0.0)
        return labels, confidence


def _time_engine(engine: SegmentEngine, rows: np.ndarray, repeats: int) -> float:
    single = rows[:1]
    start = time.perf_counter()
    for _ in range(repeats):
        engine.assign(single)
        engine.assign(rows)
    return time.perf_counter() - start


def choose_engine(
    model: SegmentModel,
    onnx_bytes: bytes | None,
    preference: Literal["auto", "numpy", "onnx"] = "auto",
) -> SegmentEngine:
    """Return the requested engine, or for ``"auto"`` the faster of the two.

    The timing runs one row and a batch of 256 rows, 50 times each, because
    the server answers both single requests and micro-batches.
    """
    numpy_engine = NumpyEngine(model)
    if preference == "numpy" or (preference == "auto" and onnx_bytes is None):
        return numpy_engine
    if onnx_bytes is None:
        raise ValueError(
            f"engine 'onnx' requested but version {model.version} has no ONNX export; "
            "use engine 'numpy' or retrain to export one"
        )
    onnx_engine = OnnxEngine(onnx_bytes)
    if preference == "onnx":
        return onnx_engine
    fill = np.asarray(
        model.pipeline.named_steps["impute"].statistics_, dtype=np.float64
    )
    rows = np.tile(fill, (256, 1)) * np.random.default_rng(0).uniform(
        0.5, 1.5, (256, fill.size)
    )
    timings = {e.name: _time_engine(e, rows, 50) for e in (numpy_engine, onnx_engine)}
    chosen = numpy_engine if timings["numpy"] <= timings["onnx"] else onnx_engine
    logger.info(
        "inference timing for version %s: numpy %.1f ms, onnx %.1f ms; serving %s",
        model.version,
        timings["numpy"] * 1e3,
        timings["onnx"] * 1e3,
        chosen.name,
    )
    return chosen


@dataclass
class Scored:
    """Labels, confidences and risk scores of a batch of rows."""

    labels: np.ndarray
    confidence: np.ndarray
    risk: RiskScores


class ServingModel:
    """One loaded model version: its feature layout, engine and answer builder.

    Rows given to :meth:`score` hold :attr:`needed` features in that order,
    NaN where unknown; the model imputes missing segmentation features with
    training medians and risk scores treat them as 0.
    """

    def __init__(self, model: SegmentModel, engine: SegmentEngine) -> None:
        self.model = model
        self.engine = engine
        self.version = model.version
        self.needed = list(dict.fromkeys([*model.feature_names, *RISK_FEATURES]))
        self.position = {name: i for i, name in enumerate(self.needed)}
        #: Columns of the model's features in a row of :attr:`needed` features.
        self.model_columns = [self.position[name] for name in model.feature_names]
        self._risk_columns = {name: self.position[name] for name in RISK_FEATURES}
        self._segment_names = [profile.name for profile in model.profiles]
        self._campaigns = [[asdict(c) for c in p.campaigns] for p in model.profiles]
        self._flagged_campaigns = [
            [asdict(c) for c in p.campaigns if not c.promotion]
            + [asdict(c) for c in SAFER_GAMBLING_CAMPAIGNS]
            for p in model.profiles
        ]

    @property
    def segment_names(self) -> list[str]:
        """Segment name of each cluster id."""
        return list(self._segment_names)

    def campaigns(
        self, cluster_id: int, flagged: bool = False
    ) -> list[dict[str, object]]:
        """Return a segment's campaigns, without promotions when ``flagged``."""
        return (self._flagged_campaigns if flagged else self._campaigns)[cluster_id]

    def score(self, rows: np.ndarray) -> Scored:
        """Assign segments and score risk for a matrix of :attr:`needed` features."""
        labels, confidence = self.engine.assign(rows[:, self.model_columns])
        risk = score_risk({name: rows[:, i] for name, i in self._risk_columns.items()})
        return Scored(labels, confidence, risk)

    def answers(
        self,
        scored: Scored,
        player_ids: Sequence[str],
        imputed: Sequence[list[str]] | None = None,
    ) -> list[dict[str, object]]:
        """Return one JSON-ready answer per row, built column-wise for speed."""
        risk = scored.risk
        marker_names = list(risk.markers)
        markers = [risk.markers[name].tolist() for name in marker_names]
        marker_keys = [f"marker_{name}" for name in marker_names]
        columns = zip(
            player_ids,
            scored.labels.tolist(),
            scored.confidence.tolist(),
            risk.harm_flag.tolist(),
            risk.harm_score.tolist(),
            risk.churn_risk.tolist(),
            risk.bonus_abuse_risk.tolist(),
            strict=True,
        )
        answers = []
        for index, (
            player,
            label,
            confidence,
            flagged,
            harm,
            churn,
            abuse,
        ) in enumerate(columns):
            risk_row = {
                "harm_score": harm,
                "churn_risk": churn,
                "bonus_abuse_risk": abuse,
            }
            for key, values in zip(marker_keys, markers, strict=True):
                risk_row[key] = values[index]
            reasons = risk.reasons(index) if flagged else []
            answers.append(
                {
                    "player_id": player,
                    "cluster_id": label,
                    "segment": self._segment_names[label],
                    "confidence": confidence,
                    "campaign_recommendations": (
                        self._flagged_campaigns[label]
                        if flagged
                        else self._campaigns[label]
                    ),
                    "risk": risk_row,
                    "responsible_gambling_flag": flagged,
                    "responsible_gambling_reasons": reasons,
                    "recommendation_note": withheld_note(reasons) if flagged else "",
                    "imputed_features": imputed[index] if imputed is not None else [],
                    "model_version": self.version,
                }
            )
        return answers
