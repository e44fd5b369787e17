"""The FastAPI application: predictions, health, metrics, OIP v2 and admin.

Request bodies of the prediction endpoints are parsed with pydantic-core's
JSON parser straight from the bytes, and responses are encoded with orjson,
because the generic FastAPI path costs more than the prediction itself.
Limits: bodies over ``CRMBET_MAX_BODY_BYTES`` (16 MiB by default) and batches
of more than ``CRMBET_MAX_BATCH_SIZE`` players (100,000 by default) get 413.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crmbet import __version__
from crmbet.errors import ModelNotFoundError
from crmbet.monitoring import metrics
from crmbet.serving import inference_protocol
from crmbet.serving.auth import AdminAuthenticator, ApiKeyChecker
from crmbet.serving.bodies import (
    PredictionBody,
    decode_prediction,
    parse_batch_body,
    parse_json_body,
)
from crmbet.serving.docs_pages import add_offline_docs
from crmbet.serving.schemas import (
    BatchPredictionRequest,
    BatchPredictionResponse,
    CanaryRequest,
    PredictionRequest,
    PredictionResponse,
    inline_schema,
)
from crmbet.serving.settings import ServingSettings
from crmbet.serving.system import ModelServingSystem, RoutingError

logger = logging.getLogger(__name__)

Model = TypeVar("Model", bound=BaseModel)


class OrjsonResponse(Response):
    """JSON response encoded with orjson (NumPy arrays and scalars allowed)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Encode ``content`` as JSON bytes."""
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class BodyTooLargeError(Exception):
    """Raised inside the body-limit middleware when a body passes the limit."""


class BodyLimitMiddleware:
    """Returns 413 for bodies larger than ``max_bytes``, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > self.max_bytes
        ):
            await self._reject(send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = orjson.dumps(
            {
                "detail": f"request body exceeds the limit of {self.max_bytes} "
                "bytes; split the batch or raise CRMBET_MAX_BODY_BYTES"
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class PredictFastPath:
    """Serves valid ``POST /v1/predict`` requests before FastAPI's middleware.

    Single predictions are the hot path, and FastAPI's middleware, routing,
    dependency resolution and exception layers cost more than the model
    call. Any request this path cannot serve (bad body, missing API key,
    no model, a body over the limit) goes on to the full application with
    its body replayed, so errors look the same on both paths.
    """

    def __init__(
        self,
        app: ASGIApp,
        system: ModelServingSystem,
        api_keys: ApiKeyChecker,
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.system = system
        self.api_keys = api_keys
        self.max_body_bytes = max_body_bytes

    @staticmethod
    def matches(scope: Scope) -> bool:
        """Return whether ``scope`` is a ``POST /v1/predict`` request."""
        return (
            scope["type"] == "http"
            and scope["path"] == "/v1/predict"
            and scope["method"] == "POST"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, more_body = await _read_body(receive, self.max_body_bytes)
        request = None
        if not more_body and len(body) <= self.max_body_bytes:
            request = self._accept(scope, body)
        if request is None:
            # Over the limit, BodyLimitMiddleware of the full app returns the 413.
            await self.app(scope, _replay(body, more_body, receive), send)
            return
        try:
            answer = await self.system.predict(request)
        except ModelNotFoundError:
            # The champion went away since _accept; the full app returns the 503.
            await self.app(scope, _replay(body, more_body, receive), send)
            return
        content = orjson.dumps(answer)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})

    def _accept(self, scope: Scope, body: bytes) -> PredictionBody | None:
        if not self.system.ready:
            return None
        if self.api_keys.required:
            key = dict(scope["headers"]).get(b"x-api-key", b"").decode("latin-1")
            try:
                self.api_keys.check(key)
            except HTTPException:
                return None
        return decode_prediction(body)


class ServingApp(FastAPI):
    """The FastAPI application, with :class:`PredictFastPath` in front of it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fast_path: PredictFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast_path is not None and PredictFastPath.matches(scope):
            await self.fast_path(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a request with the full FastAPI stack."""
        await super().__call__(scope, receive, send)


async def _read_body(receive: Receive, max_bytes: int) -> tuple[bytes, bool]:
    """Read the request body, stopping early once it passes ``max_bytes``.

    Returns the bytes read and whether more of the body is left unread.
    """
    chunks = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more_body = message.get("more_body", False)
        if not more_body or size > max_bytes:
            return b"".join(chunks), more_body


def _replay(body: bytes, more_body: bool, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more_body}
        return await receive()

    return replayed


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(model)}},
        }
    }


def create_app(
    system: ModelServingSystem | None = None, serving: ServingSettings | None = None
) -> FastAPI:
    """Build the application around a serving system (from the environment if None)."""
    serving = serving or (system.serving if system is not None else ServingSettings())
    system = system or ModelServingSystem(serving=serving)
    admin = AdminAuthenticator(serving)
    api_keys = ApiKeyChecker(serving)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await system.start()
        yield
        await system.stop()

    app = ServingApp(
        title="crmbet model serving",
        version=__version__,
        description="Player segments, risk scores and campaign recommendations.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        docs_url=None,
        redoc_url=None,
    )
    add_offline_docs(app)
    app.state.system = system
    app.add_middleware(BodyLimitMiddleware, max_bytes=serving.max_body_bytes)
    app.fast_path = PredictFastPath(
        app.handle, system, api_keys, serving.max_body_bytes
    )
    _add_error_handlers(app)

    bearer = HTTPBearer(
        auto_error=False, description="JWT signed for the admin audience."
    )
    key_header = APIKeyHeader(
        name="X-API-Key",
        auto_error=False,
        description="Required only when CRMBET_API_KEYS is set.",
    )

    # FastAPI reads dependencies from parameter defaults. Annotated[] cannot be
    # used here, because the schemes are locals that string annotations miss.
    def require_key(key: str | None = Security(key_header)) -> None:  # noqa: B008
        api_keys.check(key)

    def require_admin(
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008
    ) -> dict[str, Any]:
        return admin.verify(credentials.credentials if credentials else None)

    _add_prediction_routes(app, system, serving, Depends(require_key))
    _add_health_routes(app, system)
    inference_protocol.add_routes(app, system, Depends(require_key))
    _add_admin_routes(app, system, Depends(require_admin))
    return app


def create_app_from_env() -> FastAPI:
    """Build the application from ``CRMBET_*`` variables (the uvicorn factory)."""
    return create_app()


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ModelNotFoundError)
    async def _not_found(request: Request, error: ModelNotFoundError) -> JSONResponse:
        code = 404 if request.url.path.startswith(("/admin", "/v2/models")) else 503
        # A wrong name or version is the client's mistake; a missing champion is ours.
        logger.log(
            logging.DEBUG if code == 404 else logging.WARNING,
            "%s %s returned %d: %s",
            request.method,
            request.url.path,
            code,
            error,
        )
        return JSONResponse({"detail": str(error)}, status_code=code)

    @app.exception_handler(RoutingError)
    async def _conflict(request: Request, error: RoutingError) -> JSONResponse:
        logger.warning("%s %s: %s", request.method, request.url.path, error)
        return JSONResponse({"detail": str(error)}, status_code=409)


def _add_prediction_routes(
    app: FastAPI, system: ModelServingSystem, serving: ServingSettings, key: Any
) -> None:
    @app.post(
        "/v1/predict",
        response_model=PredictionResponse,
        dependencies=[key],
        openapi_extra=_body_schema(PredictionRequest),
        tags=["predictions"],
        responses={
            413: {"description": "Body larger than CRMBET_MAX_BODY_BYTES."},
            503: {"description": "No champion model is loaded."},
        },
    )
    async def predict(request: Request) -> Response:
        """Predict one player's segment, risk and campaigns.

        An unknown player who sends no features gets the cold-start prediction:
        the segment of the training medians, with ``feature_source`` set to
        ``cold_start`` and every model feature in ``imputed_features``.
        """
        body = parse_json_body(PredictionRequest, await request.body())
        return OrjsonResponse(await system.predict(body))

    @app.post(
        "/v1/predict/batch",
        response_model=BatchPredictionResponse,
        dependencies=[key],
        openapi_extra=_body_schema(BatchPredictionRequest),
        tags=["predictions"],
        responses={
            413: {
                "description": "More players than CRMBET_MAX_BATCH_SIZE, "
                "or a body larger than CRMBET_MAX_BODY_BYTES."
            },
            503: {"description": "No champion model is loaded."},
        },
    )
    async def predict_batch(request: Request) -> Response:
        """Predict many players in one vectorised pass.

        Features come as one list per feature (``features``) or as one row
        per player (``feature_names`` with ``rows``). Players without
        features get them from the feature store, or the cold-start
        prediction when the store does not know them.
        """
        batch = parse_batch_body(await request.body(), serving.max_batch_size)
        answer = await system.predict_batch(
            batch.player_ids, batch.columns, as_columns=batch.as_columns
        )
        return OrjsonResponse(answer)


def _add_health_routes(app: FastAPI, system: ModelServingSystem) -> None:
    def _status(body: dict[str, Any]) -> OrjsonResponse:
        return OrjsonResponse(
            body, status_code=200 if body["status"] != "unavailable" else 503
        )

    @app.get("/health", tags=["health"])
    async def health() -> Response:
        """Overall status and health scores; 503 when no model is loaded."""
        return _status(system.health())

    @app.get("/health/feature-store", tags=["health"])
    async def feature_store_health() -> Response:
        """Status of the feature source."""
        return _status(system.health()["components"]["feature_store"])

    @app.get("/health/model-serving", tags=["health"])
    async def model_serving_health() -> Response:
        """Loaded versions, routing and per-variant statistics."""
        status = system.get_system_status()
        status["status"] = "healthy" if status["ready"] else "unavailable"
        return _status(status)

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics in the text exposition format."""
        system.health()
        return Response(
            generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST
        )


def _add_admin_routes(app: FastAPI, system: ModelServingSystem, admin: Any) -> None:
    import asyncio

    async def run(call: Callable[..., dict[str, Any]], *args: Any) -> Response:
        # Registry calls block on MLflow, so they run off the event loop.
        return OrjsonResponse(await asyncio.to_thread(call, *args))

    @app.get("/admin/status", dependencies=[admin], tags=["admin"])
    async def status() -> Response:
        """Loaded versions, routing mode and per-variant statistics."""
        return OrjsonResponse(system.get_system_status())

    @app.get("/admin/models", dependencies=[admin], tags=["admin"])
    async def versions() -> Response:
        """Every registered version with its aliases and metrics."""
        return OrjsonResponse(await asyncio.to_thread(system.registry.versions))

    @app.post("/admin/models/canary", dependencies=[admin], tags=["admin"])
    async def canary(body: CanaryRequest) -> Response:
        """Send a fraction of the players to a version as a canary."""
        return await run(
            system.deploy_canary, body.model_name, body.version, body.traffic
        )

    @app.post("/admin/models/ab-test", dependencies=[admin], tags=["admin"])
    async def ab_test(body: CanaryRequest) -> Response:
        """Split the players between the champion and a version."""
        return await run(
            system.start_ab_test, body.model_name, body.version, body.traffic
        )

    @app.post("/admin/models/promote", dependencies=[admin], tags=["admin"])
    async def promote() -> Response:
        """Make the challenger the champion."""
        return await run(system.promote)

    @app.post("/admin/models/rollback", dependencies=[admin], tags=["admin"])
    async def rollback() -> Response:
        """Send every player back to the champion."""
        return await run(system.rollback)

    @app.post("/admin/models/reload", dependencies=[admin], tags=["admin"])
    async def reload() -> Response:
        """Re-read aliases and routing from the registry now."""
        await asyncio.to_thread(system.refresh)
        return OrjsonResponse(system.get_system_status())
