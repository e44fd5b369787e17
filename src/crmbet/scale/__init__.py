"""Scale-out: the same job on a Dask cluster or on data larger than memory.

:func:`run_scale_training` runs features and training with the engine a
:class:`crmbet.pipeline.ClusterConfig` selects; :func:`compute_player_features`
writes a partitioned Parquet dataset of player features.
"""

from crmbet.scale.engines import DaskEngine, Engine, LocalEngine
from crmbet.scale.gpu import KMeansBackend, select_kmeans_backend
from crmbet.scale.job import (
    FeatureJob,
    ScaleTrainingResult,
    compute_player_features,
    gather_features,
    run_scale_training,
    train_on_engine,
)
from crmbet.scale.output import JobLayout, scan_player_features, scan_segments

__all__ = [
    "DaskEngine",
    "Engine",
    "FeatureJob",
    "JobLayout",
    "KMeansBackend",
    "LocalEngine",
    "ScaleTrainingResult",
    "compute_player_features",
    "gather_features",
    "run_scale_training",
    "scan_player_features",
    "scan_segments",
    "select_kmeans_backend",
    "train_on_engine",
]
