"""Open Inference Protocol (KServe v2) endpoints, so standard clients work.

The model takes one input tensor per feature, named after the feature,
FP64 with shape ``[n]`` or ``[n, 1]``. Features left out are imputed with
the training medians. Outputs are ``cluster_id`` (INT64), ``segment``
(BYTES), ``confidence`` and ``harm_score`` (FP64) and
``responsible_gambling_flag`` (BOOL). Inputs may use the binary tensor
extension (``Inference-Header-Content-Length``); outputs are always JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request, Response

from crmbet import __version__
from crmbet.errors import ModelNotFoundError
from crmbet.serving.bodies import parse_json_body
from crmbet.serving.routing import CHAMPION
from crmbet.serving.schemas import InferRequest, inline_schema
from crmbet.serving.system import ModelServingSystem
from crmbet.serving.value_checks import column_problems

OUTPUTS = {
    "cluster_id": "INT64",
    "segment": "BYTES",
    "confidence": "FP64",
    "harm_score": "FP64",
    "responsible_gambling_flag": "BOOL",
}


def _model(system: ModelServingSystem, name: str, version: str | None = None) -> Any:
    if name != system.model_name:
        raise ModelNotFoundError(
            f"model {name!r} is not served here; GET /v2/models/{system.model_name}"
        )
    model = system._require(CHAMPION)
    if version not in (None, "", model.version):
        raise ModelNotFoundError(
            f"version {version} of {name!r} is not loaded; the champion is version "
            f"{model.version}"
        )
    return model


def _metadata(
    system: ModelServingSystem, name: str, version: str | None
) -> dict[str, Any]:
    model = _model(system, name, version)
    return {
        "name": name,
        "versions": [model.version],
        "platform": f"crmbet-{model.engine.name}",
        "inputs": [
            {"name": feature, "datatype": "FP64", "shape": [-1]}
            for feature in model.needed
        ],
        "outputs": [
            {"name": output, "datatype": datatype, "shape": [-1]}
            for output, datatype in OUTPUTS.items()
        ],
    }


def _split_binary(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise HTTPException(
            400,
            detail=(
                f"Inference-Header-Content-Length={header_length!r} is invalid for a "
                f"body of "
                f"{len(body)} bytes; send the byte length of the JSON header"
            ),
        )
    return body[: int(header_length)], body[int(header_length) :]


def _input_columns(
    request: InferRequest, binary: bytes, needed: list[str]
) -> dict[str, Any]:
    columns: dict[str, np.ndarray] = {}
    offset = 0
    errors = []
    for position, tensor in enumerate(request.inputs):
        where = ("body", "inputs", position)
        size = (tensor.parameters or {}).get("binary_data_size")
        if tensor.name not in needed:
            errors.append(
                (
                    where + ("name",),
                    f"unknown input {tensor.name!r}; GET the model "
                    "metadata for the valid input names",
                )
            )
            continue
        if tensor.datatype not in ("FP64", "FP32"):
            errors.append(
                (
                    where + ("datatype",),
                    f"datatype {tensor.datatype!r} is not "
                    "supported; send FP64 (or FP32)",
                )
            )
            continue
        dtype = np.float64 if tensor.datatype == "FP64" else np.float32
        if isinstance(size, int):
            values = np.frombuffer(binary[offset : offset + size], dtype=dtype)
            offset += size
        elif tensor.data is not None:
            try:
                values = np.asarray(tensor.data, dtype=np.float64).ravel()
            except (TypeError, ValueError):
                errors.append((where + ("data",), "data must be numbers"))
                continue
        else:
            errors.append(
                (where + ("data",), "missing data; send 'data' or binary data")
            )
            continue
        expected = int(np.prod(tensor.shape)) if tensor.shape else -1
        if len(tensor.shape) not in (1, 2) or expected != values.size:
            errors.append(
                (
                    where + ("shape",),
                    f"shape {tensor.shape} does not match "
                    f"{values.size} values; use [n] or [n, 1]",
                )
            )
            continue
        values = values.astype(np.float64)
        problems = column_problems(tensor.name, values)
        if problems:
            errors += [
                (where + ("data", row), f"{problem} (row {row})")
                for row, problem in problems
            ]
            continue
        columns[tensor.name] = values
    sizes = {values.size for values in columns.values()}
    if len(sizes) > 1:
        errors.append(
            (
                ("body", "inputs"),
                f"inputs have different lengths {sorted(sizes)}; "
                "give every input one value per player",
            )
        )
    if errors:
        from fastapi.exceptions import RequestValidationError

        raise RequestValidationError(
            [
                {"type": "value_error", "loc": loc, "msg": msg, "input": None}
                for loc, msg in errors
            ]
        )
    return columns


def add_routes(app: FastAPI, system: ModelServingSystem, key: Any) -> None:
    """Add the Open Inference Protocol routes to ``app``."""
    tags = ["open inference protocol"]

    @app.get("/v2", tags=tags)
    async def server_metadata() -> dict[str, Any]:
        """Server name, version and protocol extensions."""
        return {
            "name": "crmbet",
            "version": __version__,
            "extensions": ["binary_tensor_data"],
        }

    @app.get("/v2/health/live", tags=tags)
    async def live() -> dict[str, bool]:
        """200 while the process runs."""
        return {"live": True}

    @app.get("/v2/health/ready", tags=tags)
    async def ready() -> Response:
        """200 when a champion model is loaded, else 503."""
        return Response(status_code=200 if system.ready else 503)

    @app.get("/v2/models/{name}", tags=tags)
    async def model_metadata(name: str) -> dict[str, Any]:
        """Inputs, outputs and the served version of a model."""
        return _metadata(system, name, None)

    @app.get("/v2/models/{name}/versions/{version}", tags=tags)
    async def model_version_metadata(name: str, version: str) -> dict[str, Any]:
        """Metadata of one version (only the champion is served here)."""
        return _metadata(system, name, version)

    @app.get("/v2/models/{name}/ready", tags=tags)
    async def model_ready(name: str) -> Response:
        """200 when the model is loaded."""
        if name != system.model_name:
            return Response(status_code=404)
        return Response(status_code=200 if system.ready else 503)

    async def infer_version(
        name: str, version: str | None, request: Request
    ) -> dict[str, Any]:
        model = _model(system, name, version)
        head, binary = _split_binary(
            await request.body(), request.headers.get("inference-header-content-length")
        )
        body = parse_json_body(InferRequest, head)
        columns = _input_columns(body, binary, model.needed)
        size = next(iter(columns.values())).size
        rows = np.full((size, len(model.needed)), np.nan)
        for name_, values in columns.items():
            rows[:, model.position[name_]] = values
        scored = model.score(rows)
        data = {
            "cluster_id": scored.labels.tolist(),
            "segment": [model.segment_names[label] for label in scored.labels.tolist()],
            "confidence": scored.confidence.tolist(),
            "harm_score": scored.risk.harm_score.tolist(),
            "responsible_gambling_flag": scored.risk.harm_flag.tolist(),
        }
        requested = [str(o.get("name")) for o in body.outputs or []] or list(OUTPUTS)
        unknown = [o for o in requested if o not in OUTPUTS]
        if unknown:
            raise HTTPException(
                400, detail=f"unknown output(s) {unknown}; valid: {list(OUTPUTS)}"
            )
        return {
            "model_name": name,
            "model_version": model.version,
            "id": body.id,
            "outputs": [
                {"name": o, "datatype": OUTPUTS[o], "shape": [size], "data": data[o]}
                for o in requested
            ],
        }

    @app.post(
        "/v2/models/{name}/infer",
        dependencies=[key],
        tags=tags,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": inline_schema(InferRequest)}
                },
            }
        },
    )
    async def infer(name: str, request: Request) -> dict[str, Any]:
        """Run the model on feature tensors (JSON, or the binary tensor extension)."""
        return await infer_version(name, None, request)

    @app.post(
        "/v2/models/{name}/versions/{version}/infer",
        dependencies=[key],
        tags=tags,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": inline_schema(InferRequest)}
                },
            }
        },
    )
    async def infer_with_version(
        name: str, version: str, request: Request
    ) -> dict[str, Any]:
        """Run one version of the model (only the champion is served here)."""
        return await infer_version(name, version, request)
