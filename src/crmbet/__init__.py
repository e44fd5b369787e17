"""crmbet: player segments, risk scores and real-time predictions for betting CRM.

The documented entry points are re-exported here and imported on first use,
so ``import crmbet`` stays fast:

>>> import crmbet
>>> crmbet.__version__
'0.1.0'
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PipelineConfig": "crmbet.pipeline",
    "ClusterConfig": "crmbet.pipeline",
    "OptimizationConfig": "crmbet.pipeline",
    "EnterprisePipelineOrchestrator": "crmbet.pipeline",
    "create_production_config": "crmbet.pipeline",
    "SegmentPredictor": "crmbet.serving.predictor",
    "ModelRegistry": "crmbet.models.registry",
    "Settings": "crmbet.config",
    "Event": "crmbet.events.schema",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'crmbet' has no attribute {name!r}")
