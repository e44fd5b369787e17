"""Player state accumulators, registered features and the offline engine."""

from crmbet.features.definitions import (
    FEATURE_SCHEMA_VERSION,
    FEATURES,
    RG_FEATURES,
    SEGMENTATION_FEATURES,
    Feature,
    compute_columns,
    compute_features,
    compute_one,
    lineage,
)
from crmbet.features.state import STATE_FIELDS, STATE_SCHEMA_VERSION, fold, merge

__all__ = [
    "FEATURES",
    "FEATURE_SCHEMA_VERSION",
    "RG_FEATURES",
    "SEGMENTATION_FEATURES",
    "STATE_FIELDS",
    "STATE_SCHEMA_VERSION",
    "Feature",
    "compute_columns",
    "compute_features",
    "compute_one",
    "fold",
    "lineage",
    "merge",
]
