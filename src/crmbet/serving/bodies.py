"""Decoding of JSON request bodies, with FastAPI-style 422 errors.

The prediction bodies are decoded by msgspec against typed structs, which runs in C
and returns plain lists that NumPy turns into one float array per feature.
Any body msgspec rejects, or whose feature names are wrong, is parsed again
with the pydantic model shown in /docs. The client then gets pydantic's
field-level errors, and a body pydantic accepts in lax mode (such as a
number sent as a string) is still served.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

import msgspec
import numpy as np
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from crmbet.features.definitions import FEATURES
from crmbet.serving.schemas import (
    MAX_PLAYER_ID_LENGTH,
    BatchPredictionRequest,
)
from crmbet.serving.value_checks import column_problems, value_problem

Model = TypeVar("Model", bound=BaseModel)

PlayerId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PLAYER_ID_LENGTH)]


class PredictionBody(msgspec.Struct, forbid_unknown_fields=True):
    """msgspec mirror of :class:`PredictionRequest`, without its validators."""

    player_id: PlayerId
    features: dict[str, float | None] | None = None


class BatchBody(msgspec.Struct, forbid_unknown_fields=True):
    """msgspec mirror of :class:`BatchPredictionRequest`, without its validators."""

    player_ids: Annotated[list[PlayerId], msgspec.Meta(min_length=1)]
    features: dict[str, list[float | None]] | None = None
    feature_names: list[str] | None = None
    rows: list[list[float | None]] | None = None
    format: Literal["rows", "columns"] = "rows"


_PREDICTION_DECODER = msgspec.json.Decoder(PredictionBody)
_BATCH_DECODER = msgspec.json.Decoder(BatchBody)
_FEATURE_NAMES = frozenset(FEATURES)


@dataclass
class BatchInput:
    """A validated batch: raw ids and one float column per feature (NaN if missing)."""

    player_ids: list[str]
    columns: dict[str, np.ndarray]
    as_columns: bool


def parse_json_body(model: type[Model], body: bytes) -> Model:
    """Validate ``body`` against ``model``, raising FastAPI's 422 error on failure."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        errors = error.errors(include_url=False)
        for item in errors:
            item["loc"] = ("body", *item["loc"])
            item.pop("ctx", None)
            if isinstance(item.get("input"), bytes):
                # Invalid JSON comes back as raw bytes, which may not even be UTF-8.
                item["input"] = item["input"][:200].decode("utf-8", errors="replace")
            else:
                item["input"] = _json_safe(item.get("input"))
        raise RequestValidationError(errors) from None


#: Maximum length of a string echoed back in a 422 error. A longer input is
#: cut at this length.
MAX_ECHOED_CHARS = 200


def _json_safe(value: object) -> object:
    """Return ``value`` fit for a 422 body: finite floats, strings cut short.

    JSON has no infinite or NaN floats, so those become strings, and a long
    string (a 1 MB player id, say) is cut to ``MAX_ECHOED_CHARS``.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str) and len(value) > MAX_ECHOED_CHARS:
        return value[:MAX_ECHOED_CHARS] + "..."
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def decode_prediction(body: bytes) -> PredictionBody | None:
    """Decode a valid ``POST /v1/predict`` body, or return None.

    None means the body needs :class:`PredictionRequest`, which either
    accepts it in lax mode or raises the field-level errors.
    """
    try:
        decoded = _PREDICTION_DECODER.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    features = decoded.features
    if features and not _FEATURE_NAMES.issuperset(features):
        return None
    if features and any(
        value is not None and value_problem(name, value) is not None
        for name, value in features.items()
    ):
        return None
    return decoded


def parse_batch_body(body: bytes, max_batch_size: int) -> BatchInput:
    """Decode and check a ``POST /v1/predict/batch`` body.

    Raises RequestValidationError (422) for invalid bodies, naming the
    field, the player's position and the value, and HTTPException (413)
    for more than ``max_batch_size`` players.
    """
    try:
        decoded: BatchBody | BatchPredictionRequest = _BATCH_DECODER.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        decoded = parse_json_body(BatchPredictionRequest, body)
    if not _layout_valid(decoded):
        # Pydantic's validators raise the errors for these cases.
        decoded = parse_json_body(BatchPredictionRequest, body)
    size = len(decoded.player_ids)
    if size > max_batch_size:
        raise HTTPException(
            413,
            detail=(
                f"batch of {size} players exceeds the limit of {max_batch_size}; "
                "split it or raise CRMBET_MAX_BATCH_SIZE"
            ),
        )
    if decoded.rows is not None and decoded.feature_names is not None:
        columns = _row_columns(decoded.feature_names, decoded.rows, size)
    else:
        columns = _feature_columns(decoded.features or {}, size)
    return BatchInput(list(decoded.player_ids), columns, decoded.format == "columns")


def _layout_valid(decoded: BatchBody | BatchPredictionRequest) -> bool:
    names = decoded.feature_names
    if decoded.features is not None:
        return (
            names is None
            and decoded.rows is None
            and all(name in FEATURES for name in decoded.features)
        )
    if (names is None) != (decoded.rows is None):
        return False
    return names is None or (
        all(name in FEATURES for name in names) and len(set(names)) == len(names)
    )


def _feature_columns(
    features: dict[str, list[float | None]], size: int
) -> dict[str, np.ndarray]:
    errors = [
        _error(
            ("features", name),
            f"has {len(values)} values but player_ids has {size}; "
            "give one value (or null) per player",
            len(values),
        )
        for name, values in features.items()
        if len(values) != size
    ]
    if errors:
        raise RequestValidationError(errors)
    # None becomes NaN, which marks a missing value.
    columns = {
        name: np.array(values, dtype=np.float64) for name, values in features.items()
    }
    errors = [
        _error(
            ("features", name, row),
            f"{problem} (player_ids[{row}])",
            _json_safe(float(values[row])),
        )
        for name, values in columns.items()
        for row, problem in column_problems(name, values)
    ]
    if errors:
        raise RequestValidationError(errors[:10])
    return columns


def _row_columns(
    names: list[str], rows: list[list[float | None]], size: int
) -> dict[str, np.ndarray]:
    if len(rows) != size:
        raise RequestValidationError(
            [
                _error(
                    ("rows",),
                    f"has {len(rows)} rows but player_ids has {size}; "
                    "give one row per player",
                    len(rows),
                )
            ]
        )
    width = len(names)
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=size)
    ragged = np.flatnonzero(lengths != width)[:10].tolist()
    if ragged:
        raise RequestValidationError(
            [
                _error(
                    ("rows", row),
                    f"has {lengths[row]} values but feature_names has {width}; "
                    "give one value (or null) per feature name",
                    int(lengths[row]),
                )
                for row in ragged
            ]
        )
    if width == 0:
        return {}
    # None becomes NaN, which marks a missing value.
    matrix = np.array(rows, dtype=np.float64)
    errors = [
        _error(
            ("rows", row, column),
            f"{problem} (player_ids[{row}])",
            _json_safe(float(matrix[row, column])),
        )
        for column, name in enumerate(names)
        for row, problem in column_problems(name, matrix[:, column])
    ]
    if errors:
        raise RequestValidationError(errors[:10])
    return {name: matrix[:, column] for column, name in enumerate(names)}


def _error(
    location: tuple[str | int, ...], message: str, value: object
) -> dict[str, object]:
    return {
        "type": "value_error",
        "loc": ("body", *location),
        "msg": message,
        "input": value,
    }
