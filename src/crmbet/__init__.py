"""crmbet: player segments, risk scores and real-time predictions for betting CRM.

The documented entry points are re-exported here and imported on first use,
so ``import crmbet`` stays fast:

>>> import crmbet
>>> crmbet.__version__
'0.1.0'
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Polars allocates with jemalloc, which keeps freed pages for seconds before
# returning them. A batch job frees and reallocates gigabytes within that
# time, so its peak resident memory counted the freed pages too. The main job
# on 10 million events peaked at 4.98 GiB with a 10 s decay and at 3.76 GiB
# with this setting, in the same time (benchmarks/run.py training). jemalloc
# reads it when Polars is first imported, so it takes effect only if crmbet
# is imported before Polars, and a value already in the environment wins.
os.environ.setdefault(
    "_RJEM_MALLOC_CONF", "background_thread:true,dirty_decay_ms:200,muzzy_decay_ms:0"
)

# MLflow logs its database migrations at INFO and draws a progress bar for
# every artifact download. crmbet reports registration and loading itself,
# so both are off unless the environment already sets them.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# MLflow decides at import whether to start its usage telemetry, and any
# crmbet module may be the first to import it, so the opt-out is set here:
# telemetry stays off unless CRMBET_MLFLOW_ENABLE_TELEMETRY turns it on.
if os.environ.get("CRMBET_MLFLOW_ENABLE_TELEMETRY", "").strip().lower() not in {
    "1",
    "true",
    "yes",
    "on",
}:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")

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
