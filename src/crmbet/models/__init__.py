"""Segmentation, k selection, profiles, risk scores, ONNX export and the registry."""

from crmbet.models.bundle import SegmentModel, train_segments
from crmbet.models.kselect import KSelection, select_k
from crmbet.models.profiles import Campaign, SegmentProfile, name_segments
from crmbet.models.risk import RiskScores, score_risk

__all__ = [
    "Campaign",
    "KSelection",
    "RiskScores",
    "SegmentModel",
    "SegmentProfile",
    "name_segments",
    "score_risk",
    "select_k",
    "train_segments",
]
