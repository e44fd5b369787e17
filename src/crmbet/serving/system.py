"""The serving system: loaded models, traffic routing, micro-batching, features.

:class:`ModelServingSystem` is what the HTTP app and the ``crmbet models``
commands drive. The champion and challenger are registry aliases, and the
routing mode, traffic fraction and hash salt are tags of the registered
model, so every worker and every restart routes a player the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crmbet.config import Settings, get_settings
from crmbet.errors import CrmbetError, ModelNotFoundError
from crmbet.events.pseudonym import Pseudonymizer
from crmbet.models.registry import ModelRegistry
from crmbet.monitoring import metrics
from crmbet.serving.batcher import MicroBatcher
from crmbet.serving.bodies import PredictionBody
from crmbet.serving.engine import Scored, ServingModel, choose_engine
from crmbet.serving.features import FeatureSource, FeatureStoreSource
from crmbet.serving.routing import CHALLENGER, CHAMPION, Mode, TrafficRouter
from crmbet.serving.schemas import PredictionRequest
from crmbet.serving.settings import ServingSettings
from crmbet.training import key_mismatch, pseudonymizer_from

logger = logging.getLogger(__name__)

#: Registered-model tags that store the routing, so it survives restarts.
MODE_TAG = "crmbet.routing.mode"
TRAFFIC_TAG = "crmbet.routing.traffic"


class PseudonymCache:
    """The :class:`Pseudonymizer` mapping, remembering recent raw player ids.

    Players come back often, and a dict lookup costs far less than the
    HMAC. The cache contains two generations of at most ``max_entries / 2``
    ids each. When the newer one fills, the older one is dropped, so memory
    stays bounded and the ids seen most recently stay cached. With
    ``max_entries=0`` every id is hashed.
    """

    def __init__(self, pseudonymizer: Pseudonymizer, max_entries: int) -> None:
        self._pseudonymizer = pseudonymizer
        self._generation_size = max_entries // 2
        self._recent: dict[str, str] = {}
        self._older: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"PseudonymCache(entries={len(self)}, key=<hidden>)"

    def __len__(self) -> int:
        return len(self._recent) + len(self._older)

    def __call__(self, raw_id: str) -> str:
        pseudonym = self._recent.get(raw_id) or self._older.get(raw_id)
        if pseudonym is None:
            pseudonym = self._pseudonymizer.pseudonymize(raw_id)
            self._remember([raw_id], [pseudonym])
        return pseudonym

    def many(self, raw_ids: Sequence[str]) -> list[str]:
        """Return the pseudonym of each raw player id, in order."""
        pseudonyms: list[str | None] = list(map(self._recent.get, raw_ids))
        if None not in pseudonyms:
            return pseudonyms  # type: ignore[return-value]
        older = self._older.get
        missing = []
        for index, pseudonym in enumerate(pseudonyms):
            if pseudonym is None:
                pseudonym = pseudonyms[index] = older(raw_ids[index])
                if pseudonym is None:
                    missing.append(index)
        if missing:
            unknown = [raw_ids[index] for index in missing]
            computed = self._pseudonymizer.pseudonymize_many(unknown)
            for index, pseudonym in zip(missing, computed, strict=True):
                pseudonyms[index] = pseudonym
            self._remember(unknown, computed)
        return pseudonyms  # type: ignore[return-value]

    def _remember(self, raw_ids: list[str], pseudonyms: list[str]) -> None:
        size = self._generation_size
        if size == 0:
            return
        if len(self._recent) + len(raw_ids) > size:
            self._older, self._recent = self._recent, {}
        # A batch larger than a generation keeps its last ids only.
        self._recent.update(zip(raw_ids[-size:], pseudonyms[-size:], strict=True))


class RoutingError(CrmbetError, ValueError):
    """Raised when a routing change cannot apply, such as promoting no challenger."""


#: Feature source names, indexed by ``from_request + 2 * from_store``.
SOURCES = ("cold_start", "request", "online_store", "request+online_store")
_SOURCE_NAMES = np.array(SOURCES, dtype=object)


@dataclass
class _Part:
    """The players of a batch that one variant scored."""

    #: Positions of the players in the batch; None when the part is the whole batch.
    index: np.ndarray | None
    model: ServingModel
    scored: Scored
    ids: list[str]
    #: Feature source name of each player (object array).
    sources: np.ndarray
    #: Mask of the model features each player lacked (players by features).
    missing: np.ndarray
    variant: str


def _imputed_names(model: ServingModel, missing: np.ndarray) -> list[list[str]]:
    """Return the names of the missing model features of each row.

    Rows with the same missing features share one list, because a batch
    usually has only a few such patterns.
    """
    names = model.model.feature_names
    if missing.shape[1] > 62:
        # Too many features for an int64 bit pattern.
        return [
            [name for name, gap in zip(names, row, strict=True) if gap]
            for row in missing
        ]
    keys = (missing.astype(np.int64) << np.arange(missing.shape[1])).sum(axis=1)
    patterns: dict[int, list[str]] = {}
    imputed = []
    for key in keys.tolist():
        pattern = patterns.get(key)
        if pattern is None:
            pattern = patterns[key] = [
                name for bit, name in enumerate(names) if key >> bit & 1
            ]
        imputed.append(pattern)
    return imputed


class ModelServingSystem:
    """Serves the champion and an optional challenger from the model registry.

    Parameters
    ----------
    settings, serving:
        Runtime and server settings; read from ``CRMBET_*`` variables when None.
    registry:
        The model registry; built from ``settings`` when None.
    feature_source:
        Features of players known only by id; the embedded online store
        (loaded from its snapshot under ``settings.home`` when present) when None.
    max_batch_size, batch_timeout_ms:
        Micro-batching limits, as in ``OptimizationConfig``; the serving
        settings' ``batch_max_size`` and ``batch_timeout_ms`` when None.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        serving: ServingSettings | None = None,
        *,
        registry: ModelRegistry | None = None,
        feature_source: FeatureSource | None = None,
        max_batch_size: int | None = None,
        batch_timeout_ms: float | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.serving = serving or ServingSettings()
        self.registry = registry or ModelRegistry(self.settings)
        self.model_name = self.registry.model_name
        self.feature_source = feature_source or self._default_feature_source()
        self.max_batch_size = max_batch_size or self.serving.batch_max_size
        self.batch_timeout_ms = (
            batch_timeout_ms
            if batch_timeout_ms is not None
            else self.serving.batch_timeout_ms
        )
        self._pseudonymizer = pseudonymizer_from(self.settings)
        self._pseudonym = PseudonymCache(
            self._pseudonymizer, self.serving.pseudonym_cache_size
        )
        self._loaded: dict[str, ServingModel] = {}
        self._variants: dict[str, ServingModel] = {}
        self._batchers: dict[str, MicroBatcher[Any, dict[str, Any]]] = {}
        self._request_counters: dict[tuple[str, str, str | None, str], Any] = {}
        self._predict_latency = metrics.model_latency_seconds.labels("predict")
        self.router = TrafficRouter(None)
        self.started_at: float | None = None
        self.last_refresh_error: str | None = None
        self._poll_task: asyncio.Task[None] | None = None

    def _default_feature_source(self) -> FeatureSource:
        from crmbet.features.store import EnterpriseFeatureStore

        # Redis when CRMBET_REDIS_URL is set, else the embedded store's
        # snapshot, behind the L1 cache in both cases.
        store = EnterpriseFeatureStore.from_settings(self.settings)
        logger.info(
            "feature source: %s with %d players",
            type(store.backend).__name__,
            len(store.backend),
        )
        return FeatureStoreSource(store)

    # Lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Load the champion (and challenger) from the registry and start polling it."""
        self.started_at = time.time()
        await asyncio.to_thread(self.refresh)
        if self.serving.registry_poll_seconds > 0:
            self._poll_task = asyncio.create_task(self._poll())
        logger.info("model serving started for %s", self.model_name)

    async def stop(self) -> None:
        """Stop polling the registry."""
        if self._poll_task is not None:
            self._poll_task.cancel()
            self._poll_task = None
        logger.info("model serving stopped for %s", self.model_name)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.serving.registry_poll_seconds)
            await asyncio.to_thread(self.refresh)

    @property
    def ready(self) -> bool:
        """Whether a champion model is loaded."""
        return CHAMPION in self._variants

    def load(self, version: str) -> ServingModel:
        """Return the serving model of a registered version, loading it once."""
        if version not in self._loaded:
            model = self.registry.load(version)
            try:
                onnx_bytes: bytes | None = self.registry.load_onnx(version)
            except ModelNotFoundError:
                onnx_bytes = None
            engine = choose_engine(model, onnx_bytes, self.serving.engine)
            mismatch = key_mismatch(model, self._pseudonymizer)
            if mismatch:
                logger.warning("%s", mismatch)
            self._loaded[version] = ServingModel(model, engine)
            logger.info(
                "loaded %s version %s with the %s engine",
                self.model_name,
                version,
                engine.name,
            )
        return self._loaded[version]

    def refresh(self) -> None:
        """Re-read aliases and routing tags from the registry and apply them.

        Registry errors are logged and kept in :attr:`last_refresh_error`,
        and the models already loaded keep serving.
        """
        try:
            champion = self.registry.alias_version(CHAMPION)
            challenger = self.registry.alias_version(CHALLENGER)
            tags = self._routing_tags()
            self._apply(champion, challenger, tags)
            self.last_refresh_error = None
        except Exception as error:  # noqa: BLE001 - serving must survive a registry outage
            self.last_refresh_error = f"{type(error).__name__}: {error}"
            logger.exception(
                "reading the registry for %s failed; serving the loaded models",
                self.model_name,
            )

    def _routing_tags(self) -> dict[str, str]:
        from mlflow.exceptions import MlflowException

        try:
            return dict(self.registry.client.get_registered_model(self.model_name).tags)
        except MlflowException:
            return {}

    def _apply(
        self, champion: str | None, challenger: str | None, tags: Mapping[str, str]
    ) -> None:
        if champion is None:
            return
        if self._version(CHAMPION) != champion:
            self._set_variant(CHAMPION, self.load(champion))
        mode = tags.get(MODE_TAG, "single")
        traffic = float(tags.get(TRAFFIC_TAG, "0") or 0)
        if challenger is None or mode == "single":
            if (
                self.router.mode != "single"
                or self.router.stats[CHAMPION].model_version != champion
            ):
                self.router.stop(champion)
            self._variants.pop(CHALLENGER, None)
            self._update_gauge()
            return
        routed = (self.router.mode, self.router.traffic, self._version(CHALLENGER))
        if routed != (mode, traffic, challenger):
            self._set_variant(CHALLENGER, self.load(challenger))
            self.router.start(mode, challenger, traffic, salt=f"{mode}-{challenger}")  # type: ignore[arg-type]
        self._update_gauge()

    def _set_variant(self, variant: str, model: ServingModel) -> None:
        self._variants[variant] = model
        if variant == CHAMPION:
            self.router.stats[CHAMPION].model_version = model.version
        self._update_gauge()

    def _update_gauge(self) -> None:
        versions = {
            m.version
            for v, m in self._variants.items()
            if v == CHAMPION or self.router.traffic > 0
        }
        metrics.active_instances.set(len(versions))

    def _version(self, variant: str) -> str | None:
        model = self._variants.get(variant)
        return model.version if model is not None else None

    def _require(self, variant: str) -> ServingModel:
        model = self._variants.get(variant) or self._variants.get(CHAMPION)
        if model is None:
            raise ModelNotFoundError(
                f"no champion of {self.model_name!r} is loaded; train and register one "
                "with 'crmbet train', then restart or POST /admin/models/reload"
            )
        return model

    # Routing changes -----------------------------------------------------------

    def _check_name(self, model_name: str | None) -> None:
        if model_name is not None and model_name != self.model_name:
            raise ModelNotFoundError(
                f"model {model_name!r} is not served here; this server serves "
                f"{self.model_name!r} (set CRMBET_MODEL_NAME to serve another)"
            )

    def _route(
        self, mode: Mode, model_name: str | None, version: str, traffic: float
    ) -> None:
        self._check_name(model_name)
        if not 0.0 <= traffic <= 1.0:
            raise RoutingError(
                f"traffic={traffic} is invalid; use a fraction between 0 and 1"
            )
        self.load(str(version))
        client = self.registry.client
        # Tags before the alias: a server polling in between then routes the
        # previous challenger (if any) at the new fraction, never a new version
        # at a stale fraction.
        client.set_registered_model_tag(self.model_name, MODE_TAG, mode)
        client.set_registered_model_tag(
            self.model_name, TRAFFIC_TAG, repr(float(traffic))
        )
        self.registry.set_alias(CHALLENGER, str(version))
        logger.info(
            "%s: version %s gets %.1f%% of players", mode, version, traffic * 100
        )
        self.refresh()

    def deploy_canary(
        self, model_name: str | None, version: str, traffic: float
    ) -> dict[str, Any]:
        """Send ``traffic`` (a fraction) of the players to ``version`` as a canary."""
        self._route("canary", model_name, version, traffic)
        return self.get_system_status()

    def start_ab_test(
        self, model_name: str | None, version: str, traffic: float = 0.5
    ) -> dict[str, Any]:
        """Split players between the champion and ``version`` for an A/B experiment."""
        self._route("ab_test", model_name, version, traffic)
        return self.get_system_status()

    def promote(self, model_name: str | None = None) -> dict[str, Any]:
        """Make the challenger the champion and send every player to it."""
        self._check_name(model_name)
        challenger = self.registry.alias_version(CHALLENGER)
        if challenger is None:
            raise RoutingError(
                f"model {self.model_name!r} has no challenger to promote; deploy one "
                "with 'crmbet models deploy-canary VERSION'"
            )
        self.registry.set_alias(CHAMPION, challenger)
        self._end_experiment()
        logger.info(
            "promoted version %s of %s to champion", challenger, self.model_name
        )
        return self.get_system_status()

    def rollback(self, model_name: str | None = None) -> dict[str, Any]:
        """Send every player back to the champion at once and drop the challenger."""
        self._check_name(model_name)
        self.router.stop(self._version(CHAMPION))
        self._variants.pop(CHALLENGER, None)
        self._end_experiment()
        logger.info(
            "rolled back %s: every player goes to the champion", self.model_name
        )
        return self.get_system_status()

    def _end_experiment(self) -> None:
        self.registry.delete_alias(CHALLENGER)
        self.registry.client.set_registered_model_tag(
            self.model_name, MODE_TAG, "single"
        )
        self.registry.client.set_registered_model_tag(
            self.model_name, TRAFFIC_TAG, "0.0"
        )
        self.refresh()

    # Prediction ------------------------------------------------------------------

    def _batcher(self, model: ServingModel) -> MicroBatcher[Any, dict[str, Any]]:
        key = str(model.version)
        if key not in self._batchers:

            def process(
                items: list[tuple[str, np.ndarray, list[str]]],
            ) -> list[dict[str, Any]]:
                rows = np.vstack([item[1] for item in items])
                scored = model.score(rows)
                return model.answers(
                    scored, [i[0] for i in items], [i[2] for i in items]
                )

            self._batchers[key] = MicroBatcher(
                process, self.max_batch_size, self.batch_timeout_ms
            )
        return self._batchers[key]

    @staticmethod
    def _row(
        model: ServingModel,
        values: list[float | None],
        stored: Mapping[str, float | None] | None,
    ) -> tuple[np.ndarray, list[str]]:
        """Return a player's row of :attr:`ServingModel.needed` features and
        the model features it lacks.

        ``values`` contains the requested value of each needed feature. A
        requested value wins over a stored one, and None or NaN marks a
        missing value. The row is built as a list, then one array, because
        per-element NumPy writes cost more at one row.
        """
        if stored is not None:
            values = [
                stored.get(name) if value is None or value != value else value
                for name, value in zip(model.needed, values, strict=True)
            ]
        # model.needed starts with the model's features, in their order.
        imputed = [
            name
            for name, value in zip(model.model.feature_names, values, strict=False)
            if value is None or value != value
        ]
        return np.array(values, dtype=np.float64), imputed

    def _requests_counter(
        self, endpoint: str, variant: str, version: str | None, status: str
    ) -> Any:
        """Return the labelled request counter, looked up once per label set."""
        key = (endpoint, variant, version, status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = metrics.model_requests_total.labels(
                endpoint, variant, str(version), status
            )
            self._request_counters[key] = counter
        return counter

    async def predict(
        self, request: PredictionRequest | PredictionBody
    ) -> dict[str, Any]:
        """Predict one player; the result names the variant and model version."""
        start = time.perf_counter()
        player = self._pseudonym(request.player_id)
        variant = self.router.route(player)
        stats = self.router.variant_stats(variant)
        try:
            model = self._require(variant)
            requested = request.features or {}
            values = [requested.get(name) for name in model.needed]
            stored = None
            if not requested or None in values:
                stored = (await self.feature_source.get_features([player])).get(player)
            row, imputed = self._row(model, values, stored)
            answer = await self._batcher(model).submit((player, row, imputed))
        except Exception:
            stats.errors += 1
            self._requests_counter(
                "predict", variant, stats.model_version, "error"
            ).inc()
            raise
        latency = time.perf_counter() - start
        answer = dict(
            answer,
            model_name=self.model_name,
            variant=variant,
            feature_source=SOURCES[bool(requested) + 2 * (stored is not None)],
            latency_ms=latency * 1000.0,
        )
        stats.record(
            player,
            answer["segment"],
            answer["responsible_gambling_flag"],
            latency * 1000.0,
        )
        self._requests_counter("predict", variant, model.version, "ok").inc()
        self._predict_latency.observe(latency)
        return answer

    async def predict_batch(
        self,
        player_ids: Sequence[str],
        features: Mapping[str, Sequence[float | None] | np.ndarray] | None = None,
        *,
        as_columns: bool = False,
    ) -> dict[str, Any]:
        """Predict many players given in columns (see ``BatchPredictionRequest``).

        Feature values may be lists (None for missing) or float arrays (NaN
        for missing), one value per player in the order of ``player_ids``.
        """
        start = time.perf_counter()
        size = len(player_ids)
        columns = {
            name: np.asarray(
                values if isinstance(values, np.ndarray) else list(values),
                dtype=np.float64,
            )
            for name, values in (features or {}).items()
        }
        for name, values in columns.items():
            if values.shape != (size,):
                raise ValueError(
                    f"features[{name!r}] has {values.size} values but player_ids has "
                    f"{size}; give one value (or null) per player"
                )
        players = self._pseudonym.many(player_ids)
        parts = []
        if self.router.traffic:
            variants = np.array([self.router.route(p) for p in players])
            for variant in (CHAMPION, CHALLENGER):
                index = np.flatnonzero(variants == variant)
                if index.size:
                    parts.append(
                        await self._predict_part(variant, players, index, columns)
                    )
        else:
            parts.append(await self._predict_part(CHAMPION, players, None, columns))
        latency = time.perf_counter() - start
        metrics.model_latency_seconds.labels("predict_batch").observe(latency)
        if as_columns:
            body = self._assemble_columns(parts, size)
        else:
            body = self._assemble_rows(parts, size)
        body["latency_ms"] = latency * 1000.0
        return body

    async def _predict_part(
        self,
        variant: str,
        players: list[str],
        index: np.ndarray | None,
        columns: Mapping[str, np.ndarray],
    ) -> _Part:
        """Score the players at ``index`` (every player when None) with ``variant``."""
        model = self._require(variant)
        ids = players if index is None else [players[i] for i in index]
        rows = np.full((len(ids), len(model.needed)), np.nan)
        for name, values in columns.items():
            position = model.position.get(name)
            if position is not None:
                rows[:, position] = values if index is None else values[index]
        requested = ~np.isnan(rows).all(axis=1)
        known = await self._fill_from_store(model, ids, rows)
        missing = np.isnan(rows[:, model.model_columns])
        scored = model.score(rows)

        counts = np.bincount(scored.labels, minlength=len(model.segment_names))
        self.router.variant_stats(variant).record_batch(
            ids,
            dict(zip(model.segment_names, counts.tolist(), strict=True)),
            scored.risk.harm_flag,
        )
        metrics.model_requests_total.labels(
            "predict_batch", variant, str(model.version), "ok"
        ).inc(len(ids))
        sources = _SOURCE_NAMES[requested.astype(np.intp) + 2 * known.astype(np.intp)]
        return _Part(index, model, scored, ids, sources, missing, variant)

    async def _fill_from_store(
        self, model: ServingModel, ids: list[str], rows: np.ndarray
    ) -> np.ndarray:
        """Fill missing values of ``rows`` in place from the feature source.

        Returns the players the source has features for.
        """
        known = np.zeros(len(ids), dtype=bool)
        lacking = np.flatnonzero(np.isnan(rows).any(axis=1))
        if not lacking.size:
            return known
        found = await self.feature_source.get_features([ids[i] for i in lacking])
        for i in lacking:
            stored = found.get(ids[i])
            if stored is None:
                continue
            known[i] = True
            fill = np.array([stored.get(name, np.nan) for name in model.needed])
            rows[i] = np.where(np.isnan(rows[i]), fill, rows[i])
        return known

    def _assemble_rows(self, parts: list[_Part], size: int) -> dict[str, Any]:
        answers: list[Any] = [None] * size
        for part in parts:
            positions = range(size) if part.index is None else part.index.tolist()
            imputed = _imputed_names(part.model, part.missing)
            rows = part.model.answers(part.scored, part.ids, imputed)
            for position, answer, source in zip(
                positions, rows, part.sources.tolist(), strict=True
            ):
                answer["model_name"] = self.model_name
                answer["variant"] = part.variant
                answer["feature_source"] = source
                answer["latency_ms"] = 0.0
                answers[position] = answer
        return {
            "model_name": self.model_name,
            "model_versions": [part.model.version for part in parts],
            "count": size,
            "predictions": answers,
        }

    def _assemble_columns(self, parts: list[_Part], size: int) -> dict[str, Any]:
        # Numeric columns stay NumPy arrays: orjson encodes them without
        # building a Python object per value.
        merged: dict[str, list[Any]] = {}
        segments: dict[str, dict[str, Any]] = {}
        for part in parts:
            model, scored, count = part.model, part.scored, len(part.ids)
            risk = scored.risk
            part_columns = {
                "player_id": np.array(part.ids, dtype=object),
                "model_version": np.full(count, model.version, dtype=object),
                "cluster_id": scored.labels,
                "segment": np.array(model.segment_names, dtype=object)[scored.labels],
                "confidence": scored.confidence,
                "harm_score": risk.harm_score,
                "responsible_gambling_flag": risk.harm_flag,
                "churn_risk": risk.churn_risk,
                "bonus_abuse_risk": risk.bonus_abuse_risk,
                "feature_source": part.sources,
                "variant": np.full(count, part.variant, dtype=object),
            }
            for key, values in part_columns.items():
                merged.setdefault(key, []).append(values)
            for cluster_id, profile in enumerate(model.model.profiles):
                segments[f"{model.version}:{cluster_id}"] = {
                    "segment": profile.name,
                    "campaign_recommendations": model.campaigns(cluster_id),
                }
        if len(parts) == 1 and parts[0].index is None:
            joined = {key: values[0] for key, values in merged.items()}
        else:
            inverse = np.argsort(np.concatenate([part.index for part in parts]))
            joined = {
                key: np.concatenate(values)[inverse] for key, values in merged.items()
            }
        columns = {
            key: values.tolist() if values.dtype == object else values
            for key, values in joined.items()
        }
        return {
            "model_name": self.model_name,
            "model_versions": [part.model.version for part in parts],
            "count": size,
            "columns": columns,
            "segments": segments,
        }

    # Status ------------------------------------------------------------------

    def get_system_status(self) -> dict[str, Any]:
        """Return loaded versions, routing, per-variant stats and batching figures."""
        return {
            "model_name": self.model_name,
            "ready": self.ready,
            "champion": self._version(CHAMPION),
            "challenger": self._version(CHALLENGER),
            "engine": {v: m.engine.name for v, m in self._variants.items()},
            "routing": self.router.summary(),
            "micro_batching": {
                "max_batch_size": self.max_batch_size,
                "batch_timeout_ms": self.batch_timeout_ms,
                "mean_batch_size": {
                    v: b.mean_batch_size for v, b in self._batchers.items()
                },
            },
            "feature_source": self.feature_source.health(),
            "registry_error": self.last_refresh_error,
            "uptime_s": time.time() - self.started_at if self.started_at else 0.0,
        }

    def health(self) -> dict[str, Any]:
        """Return component statuses and the health scores, updating their gauges."""
        try:
            store = self.feature_source.health()
        except Exception as error:  # noqa: BLE001 - a failing store is a health result
            logger.exception("feature source health check failed")
            store = {
                "status": "unavailable",
                "error": f"{type(error).__name__}: {error}",
            }
        components = {
            "model": {
                "status": "healthy" if self.ready else "unavailable",
                "version": self._version(CHAMPION),
            },
            "feature_store": store,
            "registry": {
                "status": "healthy" if self.last_refresh_error is None else "degraded",
                "error": self.last_refresh_error,
            },
        }
        healthy = [c["status"] == "healthy" for c in components.values()]
        system_score = sum(healthy) / len(healthy)
        pipeline_score = (healthy[0] + healthy[1]) / 2
        metrics.system_health_score.set(system_score)
        metrics.pipeline_health_score.set(pipeline_score)
        status = "healthy" if all(healthy) else "degraded"
        if not self.ready:
            status = "unavailable"
        return {
            "status": status,
            "system_health_score": system_score,
            "pipeline_health_score": pipeline_score,
            "components": components,
        }
