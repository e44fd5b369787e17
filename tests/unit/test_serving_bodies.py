"""Decoding of prediction bodies: msgspec fast path against the pydantic models."""

from __future__ import annotations

import msgspec
import numpy as np
import orjson
import pytest
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError

from crmbet.serving.bodies import (
    BatchBody,
    PredictionBody,
    decode_prediction,
    parse_batch_body,
)
from crmbet.serving.schemas import BatchPredictionRequest, PredictionRequest


@pytest.mark.parametrize(
    ("struct", "model"),
    [(BatchBody, BatchPredictionRequest), (PredictionBody, PredictionRequest)],
)
def test_structs_mirror_models(struct: type, model: type) -> None:
    names = {field.name for field in msgspec.structs.fields(struct)}
    assert names == set(model.model_fields)


def test_layouts_give_same_columns() -> None:
    columns = {"bet_count": [1.0, None, 3.0], "avg_stake": [0.5, 2.0, None]}
    ids = ["a", "b", "c"]
    by_feature = parse_batch_body(
        orjson.dumps({"player_ids": ids, "features": columns}), 10
    )
    by_row = parse_batch_body(
        orjson.dumps(
            {
                "player_ids": ids,
                "feature_names": list(columns),
                "rows": [list(row) for row in zip(*columns.values(), strict=True)],
                "format": "columns",
            }
        ),
        10,
    )
    assert by_feature.player_ids == by_row.player_ids == ids
    assert not by_feature.as_columns
    assert by_row.as_columns
    for name, values in columns.items():
        expected = np.array(values, dtype=np.float64)
        np.testing.assert_array_equal(by_feature.columns[name], expected)
        np.testing.assert_array_equal(by_row.columns[name], expected)


def test_no_features_gives_no_columns() -> None:
    batch = parse_batch_body(b'{"player_ids": ["a"]}', 10)
    assert batch.columns == {}


def test_too_many_players_is_413() -> None:
    with pytest.raises(HTTPException) as raised:
        parse_batch_body(orjson.dumps({"player_ids": ["a", "b", "c"]}), 2)
    assert raised.value.status_code == 413
    assert "CRMBET_MAX_BATCH_SIZE" in raised.value.detail


def test_lax_number_string_falls_back() -> None:
    batch = parse_batch_body(
        b'{"player_ids": ["a"], "features": {"bet_count": ["7.5"]}}', 10
    )
    assert batch.columns["bet_count"].tolist() == [7.5]


def test_infinite_value_names_player() -> None:
    with pytest.raises(RequestValidationError) as raised:
        parse_batch_body(
            b'{"player_ids": ["a", "b"], "features": {"bet_count": [1, 1e999]}}', 10
        )
    error = raised.value.errors()[0]
    assert error["loc"] == ("body", "features", "bet_count", 1)
    assert "player_ids[1]" in error["msg"]


def test_decode_prediction_defers_unknown_names() -> None:
    assert decode_prediction(b'{"player_id": "a", "features": {"nope": 1}}') is None
    assert decode_prediction(b'{"player_id": ""}') is None
    decoded = decode_prediction(b'{"player_id": "a", "features": {"bet_count": 2}}')
    assert decoded is not None
    assert decoded.features == {"bet_count": 2.0}
