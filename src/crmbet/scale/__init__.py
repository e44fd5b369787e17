"""Scale-out: the same job on a Dask cluster or on data larger than memory.

:func:`run_scale_training` runs features and training with the engine a
:class:`crmbet.pipeline.ClusterConfig` selects; :func:`compute_player_features`
writes a partitioned Parquet dataset of player features.

Names are imported on first use, so that Dask workers unpickling a task
from :mod:`crmbet.scale.tasks` do not import scikit-learn and ONNX.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "DaskEngine": "crmbet.scale.engines",
    "Engine": "crmbet.scale.engines",
    "LocalEngine": "crmbet.scale.engines",
    "KMeansBackend": "crmbet.scale.gpu",
    "select_kmeans_backend": "crmbet.scale.gpu",
    "FeatureJob": "crmbet.scale.job",
    "ScaleTrainingResult": "crmbet.scale.job",
    "compute_player_features": "crmbet.scale.job",
    "gather_features": "crmbet.scale.job",
    "run_scale_training": "crmbet.scale.job",
    "train_on_engine": "crmbet.scale.job",
    "open_cluster": "crmbet.scale.cluster",
    "JobLayout": "crmbet.scale.output",
    "scan_player_features": "crmbet.scale.output",
    "scan_segments": "crmbet.scale.output",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'crmbet.scale' has no attribute {name!r}")
