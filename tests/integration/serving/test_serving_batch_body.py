"""Batch body layouts and value checks of /v1/predict/batch through real HTTP."""

from __future__ import annotations

import httpx
import pytest
from serving_support import API_KEY, LiveServer, Trained

from crmbet.features.definitions import compute_one

pytestmark = pytest.mark.integration

HEADERS = {"X-API-Key": API_KEY}


def _columns(trained: Trained, count: int) -> dict[str, list[float | None]]:
    watermark = float(trained.states["last_ts"].max())
    rows = []
    for index in range(count):
        row = trained.states.row(index, named=True)
        row.pop("player_id")
        rows.append(compute_one(row, watermark))
    columns: dict[str, list[float | None]] = {
        name: [row[name] for row in rows] for name in rows[0]
    }
    # Missing values in a few places, so imputation and feature sources differ.
    columns["avg_stake"][3] = None
    columns["bet_count"][5] = None
    return columns


def _post(server: LiveServer, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/predict/batch", headers=HEADERS, json=body)


def _without_latency(body: dict) -> dict:
    body.pop("latency_ms")
    for item in body.get("predictions") or []:
        item.pop("latency_ms")
    return body


@pytest.mark.parametrize("response_format", ["rows", "columns"])
def test_rows_layout_matches_features_layout(
    secured: LiveServer, trained: Trained, response_format: str
) -> None:
    columns = _columns(trained, 30)
    ids = [f"layout-{i}" for i in range(30)]
    names = list(columns)
    by_feature = _post(
        secured,
        {"player_ids": ids, "features": columns, "format": response_format},
    )
    by_row = _post(
        secured,
        {
            "player_ids": ids,
            "feature_names": names,
            "rows": [[columns[name][i] for name in names] for i in range(30)],
            "format": response_format,
        },
    )
    assert by_feature.status_code == 200, by_feature.text
    assert by_row.status_code == 200, by_row.text
    assert _without_latency(by_row.json()) == _without_latency(by_feature.json())


def test_rows_layout_matches_single(secured: LiveServer, trained: Trained) -> None:
    columns = _columns(trained, 6)
    names = list(columns)
    ids = [f"single-{i}" for i in range(6)]
    batch = _post(
        secured,
        {
            "player_ids": ids,
            "feature_names": names,
            "rows": [[columns[name][i] for name in names] for i in range(6)],
        },
    ).json()
    for index in (0, 3, 5):
        features = {name: columns[name][index] for name in names}
        single = httpx.post(
            f"{secured.url}/v1/predict",
            headers=HEADERS,
            json={"player_id": ids[index], "features": features},
        ).json()
        item = batch["predictions"][index]
        for key in ("player_id", "cluster_id", "risk", "imputed_features"):
            assert item[key] == single[key]
        # One row and a batch round differently in the last bits.
        assert item["confidence"] == pytest.approx(single["confidence"])


def test_number_strings_accepted(secured: LiveServer) -> None:
    strings = _post(
        secured,
        {"player_ids": ["a", "b"], "features": {"bet_count": ["12", 40]}},
    )
    numbers = _post(
        secured,
        {"player_ids": ["a", "b"], "features": {"bet_count": [12.0, 40.0]}},
    )
    assert strings.status_code == 200, strings.text
    assert _without_latency(strings.json()) == _without_latency(numbers.json())


def _detail(response: httpx.Response) -> list[dict]:
    assert response.status_code == 422, response.text
    return response.json()["detail"]


def test_infinite_feature_value_is_422(secured: LiveServer) -> None:
    response = httpx.post(
        f"{secured.url}/v1/predict/batch",
        headers={**HEADERS, "Content-Type": "application/json"},
        content=b'{"player_ids": ["a", "b"], "features": {"bet_count": [1, 1e400]}}',
    )
    error = _detail(response)[0]
    assert error["loc"] == ["body", "features", "bet_count", 1]
    assert "player_ids[1]" in error["msg"]
    assert "finite" in error["msg"]
    assert error["input"] == "inf"


def test_infinite_row_value_is_422(secured: LiveServer) -> None:
    response = httpx.post(
        f"{secured.url}/v1/predict/batch",
        headers={**HEADERS, "Content-Type": "application/json"},
        content=b'{"player_ids": ["a", "b"], "feature_names": ["avg_stake", '
        b'"bet_count"], "rows": [[1, 2], [3, -1e400]]}',
    )
    error = _detail(response)[0]
    assert error["loc"] == ["body", "rows", 1, 1]
    assert error["msg"].startswith("bet_count=-inf is not finite")
    assert "player_ids[1]" in error["msg"]


@pytest.mark.parametrize(
    ("body", "location", "message"),
    [
        (
            b'{"player_ids": ["a", "b"], "features": {"avg_stake": [1, -4]}}',
            ["body", "features", "avg_stake", 1],
            "avg_stake=-4.0 is negative",
        ),
        (
            b'{"player_ids": ["a"], "feature_names": ["late_night_share"], '
            b'"rows": [[5]]}',
            ["body", "rows", 0, 0],
            "late_night_share=5.0 is above 1",
        ),
    ],
)
def test_impossible_batch_values_are_422(
    secured: LiveServer, body: bytes, location: list[object], message: str
) -> None:
    response = httpx.post(
        f"{secured.url}/v1/predict/batch",
        headers={**HEADERS, "Content-Type": "application/json"},
        content=body,
    )
    assert response.status_code == 422
    error = _detail(response)[0]
    assert error["loc"] == location
    assert error["msg"].startswith(message)


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ({"avg_stake": -5}, "avg_stake=-5.0 is negative"),
        ({"late_night_share": 7}, "late_night_share=7.0 is above 1"),
        ({"avg_stake": True}, "are true or false"),
    ],
)
def test_impossible_single_values_are_422(
    secured: LiveServer, features: dict[str, object], message: str
) -> None:
    response = httpx.post(
        f"{secured.url}/v1/predict",
        headers=HEADERS,
        json={"player_id": "a", "features": features},
    )
    assert response.status_code == 422
    assert message in _detail(response)[0]["msg"]


def test_single_infinite_value_is_422(secured: LiveServer) -> None:
    response = httpx.post(
        f"{secured.url}/v1/predict",
        headers={**HEADERS, "Content-Type": "application/json"},
        content=b'{"player_id": "a", "features": {"bet_count": 1e400}}',
    )
    error = _detail(response)[0]
    assert error["loc"] == ["body", "features"]
    assert "bet_count" in error["msg"]


@pytest.mark.parametrize(
    ("body", "location", "message"),
    [
        (
            {"player_ids": ["a"], "feature_names": ["bet_count"], "rows": [["x"]]},
            ["body", "rows", 0, 0],
            "number",
        ),
        (
            {"player_ids": ["a", "b"], "feature_names": ["bet_count"], "rows": [[1]]},
            ["body", "rows"],
            "has 1 rows but player_ids has 2",
        ),
        (
            {
                "player_ids": ["a", "b"],
                "feature_names": ["bet_count", "avg_stake"],
                "rows": [[1, 2], [3]],
            },
            ["body", "rows", 1],
            "has 1 values but feature_names has 2",
        ),
        (
            {"player_ids": ["a"], "feature_names": ["no_such"], "rows": [[1]]},
            ["body", "feature_names"],
            "no_such",
        ),
        (
            {
                "player_ids": ["a"],
                "feature_names": ["bet_count", "bet_count"],
                "rows": [[1, 2]],
            },
            ["body", "feature_names"],
            "more than once",
        ),
        (
            {"player_ids": ["a"], "feature_names": ["bet_count"]},
            ["body"],
            "together",
        ),
        (
            {
                "player_ids": ["a"],
                "features": {"bet_count": [1]},
                "feature_names": ["bet_count"],
                "rows": [[1]],
            },
            ["body"],
            "not both",
        ),
        (
            {"player_ids": ["a"], "features": {"bet_count": [[1]]}},
            ["body", "features", "bet_count", 0],
            "number",
        ),
        ({"player_ids": []}, ["body", "player_ids"], ""),
        ({"player_ids": ["a", ""]}, ["body", "player_ids", 1], ""),
    ],
)
def test_bad_batch_field_is_422(
    secured: LiveServer, body: dict, location: list, message: str
) -> None:
    error = _detail(_post(secured, body))[0]
    assert error["loc"] == location
    assert message in error["msg"]


def test_openapi_lists_rows_layout(secured: LiveServer) -> None:
    schema = httpx.get(f"{secured.url}/openapi.json").json()
    body = schema["paths"]["/v1/predict/batch"]["post"]["requestBody"]
    properties = body["content"]["application/json"]["schema"]["properties"]
    assert {"player_ids", "features", "feature_names", "rows", "format"} <= set(
        properties
    )
    assert "feature_names" in properties["rows"]["description"]


def test_overlong_player_id_is_not_echoed_in_full(secured: LiveServer) -> None:
    response = httpx.post(
        f"{secured.url}/v1/predict",
        headers=HEADERS,
        json={"player_id": "x" * 20_000},
    )
    assert response.status_code == 422
    assert len(response.content) < 2_000
    assert _detail(response)[0]["loc"] == ["body", "player_id"]
