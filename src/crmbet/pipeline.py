"""The documented Python facade: configuration objects and the orchestrator.

The README's quick start shows the whole flow and runs as a test::

    orchestrator = EnterprisePipelineOrchestrator(PipelineConfig())
    orchestrator.start_background_services()
    await orchestrator.train_model(transactions)
    prediction = await orchestrator.predict(player_id="player-42", features={...})
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from crmbet.config import Settings
from crmbet.errors import ModelNotFoundError, NotFittedError
from crmbet.events.adapters import ingest_frame
from crmbet.events.validation import ColumnMapping
from crmbet.features.online import MemoryOnlineStore
from crmbet.features.store import EnterpriseFeatureStore, FeatureRequest
from crmbet.models.registry import ModelRegistry
from crmbet.serving.predictor import SegmentPredictor
from crmbet.training import TrainingResult, pseudonymizer_from, train_from_events

logger = logging.getLogger(__name__)


class ClusterConfig(BaseModel):
    """Training engine, cluster resources and the choice of k."""

    model_config = ConfigDict(extra="forbid")

    engine: Literal["local", "dask"] = "local"
    scheduler_address: str | None = None
    n_workers: int = Field(default=2, ge=1)
    memory_limit: str = "4GB"
    use_gpu: bool = False
    enable_auto_scaling: bool = False
    max_workers: int = Field(default=4, ge=1)
    k: int | None = Field(
        default=None, ge=1, description="fixed k; chosen automatically when None"
    )
    k_min: int = Field(default=3, ge=2)
    k_max: int = Field(default=12, ge=2)
    seed: int = 0


class OptimizationConfig(BaseModel):
    """Serving throughput settings."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=512, ge=1)
    batch_timeout_ms: float = Field(default=2.0, ge=0)
    use_onnx: bool = False
    l1_cache_size: int = Field(default=100_000, ge=0)
    l1_ttl_seconds: float = Field(default=60.0, ge=0)


class PipelineConfig(BaseModel):
    """Everything the orchestrator needs; unset backends use embedded defaults."""

    model_config = ConfigDict(extra="forbid")

    environment: Literal["development", "production"] = "development"
    home: Path = Path(".crmbet")
    model_name: str = "crmbet-segments"
    mlflow_tracking_uri: str | None = None
    redis_url: str | None = None
    kafka_bootstrap_servers: str | None = None
    pseudonym_key: str | None = Field(default=None, repr=False)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    optimization: OptimizationConfig = Field(default_factory=OptimizationConfig)

    def settings(self) -> Settings:
        """Return runtime settings for this configuration."""
        values: dict[str, Any] = {
            "home": self.home,
            "model_name": self.model_name,
            "profile": "production" if self.environment == "production" else "dev",
        }
        optional = {
            "mlflow_tracking_uri": self.mlflow_tracking_uri,
            "redis_url": self.redis_url,
            "kafka_bootstrap_servers": self.kafka_bootstrap_servers,
            "pseudonym_key": self.pseudonym_key,
        }
        values.update(
            {key: value for key, value in optional.items() if value is not None}
        )
        return Settings(**values)


def create_production_config(**overrides: Any) -> PipelineConfig:
    """Return a production configuration, with values from ``CRMBET_*`` variables.

    Production requires ``CRMBET_PSEUDONYM_KEY``; the registry, Redis and
    Kafka addresses come from the environment when set.
    """
    env = Settings()
    base: dict[str, Any] = {
        "environment": "production",
        "home": env.home,
        "model_name": env.model_name,
        "mlflow_tracking_uri": env.mlflow_tracking_uri,
        "redis_url": env.redis_url.get_secret_value() if env.redis_url else None,
        "kafka_bootstrap_servers": env.kafka_bootstrap_servers,
        "pseudonym_key": env.pseudonym_key.get_secret_value()
        if env.pseudonym_key
        else None,
        "optimization": OptimizationConfig(
            max_batch_size=1024, batch_timeout_ms=1.0, l1_cache_size=1_000_000
        ),
    }
    base.update(overrides)
    return PipelineConfig(**base)


class EnterprisePipelineOrchestrator:
    """Trains, registers and serves segmentation models through one object.

    Every method works with embedded defaults: MLflow on SQLite under
    ``config.home`` and an in-process online store.
    """

    def __init__(self, config: PipelineConfig | None = None) -> None:
        self.config = config or PipelineConfig()
        self.settings = self.config.settings()
        self.registry = ModelRegistry(self.settings)
        self.feature_store = EnterpriseFeatureStore.from_settings(
            self.settings, self.config.optimization
        )
        self.predictor: SegmentPredictor | None = None
        self._pseudonymizer = pseudonymizer_from(self.settings)
        self._latencies: deque[float] = deque(maxlen=10_000)
        self._requests = 0
        self._errors = 0
        self._started_at: float | None = None
        self._last_training: TrainingResult | None = None

    # Lifecycle -----------------------------------------------------------

    def start_background_services(self) -> None:
        """Load the champion model if one is registered and mark the services up."""
        self._started_at = time.time()
        try:
            self.predictor = SegmentPredictor.from_registry(self.registry)
            logger.info(
                "serving %s version %s",
                self.registry.model_name,
                self.predictor.version,
            )
        except ModelNotFoundError:
            logger.info(
                "no champion model registered yet; train one with train_model()"
            )

    @property
    def store(self) -> Any:
        """The online store behind the feature store (embedded or Redis)."""
        return self.feature_store.backend

    async def stop(self) -> None:
        """Snapshot the embedded online store so a restart keeps it, then close."""
        if isinstance(self.store, MemoryOnlineStore) and len(self.store):
            self.store.snapshot(self.settings.home / "online_store.parquet")
        self.feature_store.close()

    # Training -------------------------------------------------------------

    async def train_model(
        self,
        df: Any,
        *,
        mapping: ColumnMapping | None = None,
        k: int | None = None,
    ) -> dict[str, Any]:
        """Train on a table of raw transactions, register it and serve it.

        ``df`` is a Polars or pandas DataFrame with the canonical event columns,
        or any columns described by ``mapping``. Invalid rows are left out and
        counted in ``dead_letters``.
        """
        frame = df if isinstance(df, pl.DataFrame) else pl.from_pandas(df)
        cluster = self.config.cluster
        ingested = ingest_frame(
            frame, pseudonymizer=self._pseudonymizer, mapping=mapping
        )
        result = await asyncio.to_thread(
            train_from_events,
            ingested.events,
            settings=self.settings,
            k=k if k is not None else cluster.k,
            k_range=(cluster.k_min, cluster.k_max),
            seed=cluster.seed,
            registry=self.registry,
            n_dead_letters=ingested.dead_letters.height,
            key_fingerprint=self._pseudonymizer.fingerprint,
        )
        self.store.put_states(result.states)
        if isinstance(self.store, MemoryOnlineStore):
            # As `crmbet train` does: the next process (the CLI, a server, a
            # new orchestrator) finds the trained players without stop().
            await asyncio.to_thread(
                self.store.snapshot, self.settings.home / "online_store.parquet"
            )
        self.feature_store.register_model(
            self.registry.model_name, result.model.feature_names
        )
        self._last_training = result
        if (
            result.version is not None
            and self.registry.alias_version("champion") == result.version
        ):
            self.predictor = SegmentPredictor(result.model)
        elif self.predictor is None:
            self.predictor = SegmentPredictor(result.model)
        return {
            "model_version": result.version,
            "k": result.model.n_segments,
            "segments": [
                {"cluster_id": p.cluster_id, "name": p.name, "size": p.size}
                for p in result.model.profiles
            ],
            "metrics": dict(result.model.metrics),
            "dead_letters": ingested.dead_letters.height,
        }

    # Prediction -------------------------------------------------------------

    def _require_predictor(self) -> SegmentPredictor:
        if self.predictor is None:
            raise NotFittedError(
                "no model is loaded: call train_model() or register a champion with "
                "'crmbet train' and then start_background_services()"
            )
        return self.predictor

    def _predict_sync(
        self, player_id: str, features: Mapping[str, float] | None
    ) -> dict[str, Any]:
        predictor = self._require_predictor()
        start = time.perf_counter()
        pseudonym = self._pseudonymizer.pseudonymize(str(player_id))
        given = dict(features or {})
        response = self.feature_store.get_features_sync(FeatureRequest(pseudonym))
        stored = response.row(0)
        status = response.status[0]
        source = "request"
        if stored is not None and status == "fresh":
            given = {k: v for k, v in stored.items() if v == v} | given
            source = "request+online_store" if features else "online_store"
        elif not given:
            # Unknown, expired or unreachable: the documented cold-start prediction.
            source = "cold_start" if status == "unknown" else f"cold_start:{status}"
        prediction = predictor.predict_features(
            given, player_id=pseudonym, cold_start=source.startswith("cold_start")
        )
        latency_ms = (time.perf_counter() - start) * 1000.0
        self._latencies.append(latency_ms)
        self._requests += 1
        body = prediction.to_dict()
        body["feature_source"] = source
        return {
            "player_id": player_id,
            "prediction": body,
            "latency_ms": latency_ms,
            "model_version": prediction.model_version,
        }

    async def predict(
        self,
        player_id: str | None = None,
        features: Mapping[str, float] | None = None,
        *,
        user_id: str | None = None,
    ) -> dict[str, Any]:
        """Predict one player's segment, risk and recommendations.

        ``player_id`` is the operator's raw id, as in the HTTP API; the
        result echoes it as ``player_id`` and carries the pseudonym in
        ``prediction["player_id"]``. Features missing from ``features`` come
        from the online store; a player the store does not know and who
        sends no features gets the cold-start prediction: the segment of the
        training medians, marked ``feature_source='cold_start'``.
        ``user_id`` is the former name of ``player_id`` and still accepted.
        """
        player_id = _player_id(player_id, user_id)
        try:
            return self._predict_sync(player_id, features)
        except Exception:
            self._errors += 1
            raise

    async def batch_predict(
        self, requests: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """Predict many players, each request a mapping with ``player_id``.

        A request may carry ``features``; the rest come from the online store
        as in :meth:`predict`. ``user_id`` is accepted in place of
        ``player_id``.
        """
        predictor = self._require_predictor()
        start = time.perf_counter()
        ids = [
            _player_id(r.get("player_id"), r.get("user_id"), index)
            for index, r in enumerate(requests)
        ]
        if requests and all(r.get("features") for r in requests):
            names = sorted({name for r in requests for name in r["features"]})
            columns = {
                name: np.array(
                    [float(r["features"].get(name, np.nan)) for r in requests]
                )
                for name in names
            }
            batch = predictor.predict_batch(columns)
            results = []
            for index, player_id in enumerate(ids):
                item = batch.item(index).to_dict()
                item["player_id"] = self._pseudonymizer.pseudonymize(str(player_id))
                results.append(
                    {
                        "player_id": player_id,
                        "prediction": item,
                        "model_version": predictor.version,
                    }
                )
        else:
            results = [
                self._predict_sync(player_id, r.get("features"))
                for player_id, r in zip(ids, requests, strict=True)
            ]
        elapsed = (time.perf_counter() - start) * 1000.0
        for result in results:
            result["latency_ms"] = elapsed / max(len(requests), 1)
        self._requests += len(requests)
        return results

    # Health and metrics -------------------------------------------------------

    def get_comprehensive_health(self) -> dict[str, Any]:
        """Return each component's check and the combined scores in [0, 1]."""
        from crmbet.monitoring.health import (
            ComponentCheck,
            check_model,
            combine_health,
        )

        store = self.feature_store.health()
        checks = [
            check_model(
                self.predictor is not None,
                self.predictor.version if self.predictor else None,
            ),
            ComponentCheck(
                "online_store",
                "healthy" if store["status"] == "healthy" else "degraded",
                detail={
                    "backend": type(self.store).__name__,
                    "players": len(self.store),
                },
            ),
            ComponentCheck(
                "training",
                "healthy" if self._last_training or self.predictor else "degraded",
                scope="pipeline",
            ),
        ]
        report = combine_health(checks).to_dict()
        report["uptime_s"] = time.time() - self._started_at if self._started_at else 0.0
        return report

    def get_performance_metrics(self) -> dict[str, Any]:
        """Return request counts and latency percentiles of recent predictions."""
        latencies = np.array(self._latencies) if self._latencies else np.zeros(1)
        metrics: dict[str, Any] = {
            "requests_total": self._requests,
            "errors_total": self._errors,
            "latency_ms_p50": float(np.percentile(latencies, 50)),
            "latency_ms_p95": float(np.percentile(latencies, 95)),
            "latency_ms_p99": float(np.percentile(latencies, 99)),
            "online_store_players": len(self.store),
            "feature_store": self.feature_store.get_performance_stats(),
        }
        if self._last_training is not None:
            metrics["last_training"] = dict(self._last_training.timings)
        return metrics


def _player_id(player_id: Any, user_id: Any, index: int | None = None) -> str:
    """Return the raw player id of a request that names it either way."""
    where = "" if index is None else f" in request {index}"
    if player_id is None and user_id is None:
        raise ValueError(
            f"player_id is missing{where}; pass the operator's raw player id"
        )
    if player_id is not None and user_id is not None and player_id != user_id:
        raise ValueError(
            f"player_id={player_id!r} and user_id={user_id!r} differ{where}; "
            "pass player_id only"
        )
    return str(player_id if player_id is not None else user_id)
