"""Prediction, health and metrics endpoints through real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import polars as pl
import pytest
from serving_support import API_KEY, LiveServer, Trained

from crmbet.features.definitions import compute_one
from crmbet.serving.schemas import MAX_PLAYER_ID_LENGTH

pytestmark = pytest.mark.integration

HEADERS = {"X-API-Key": API_KEY}


def _features(trained: Trained, index: int = 0) -> tuple[str, dict[str, float]]:
    row = trained.states.row(index, named=True)
    player = row.pop("player_id")
    watermark = float(trained.states["last_ts"].max())
    return player, compute_one(row, watermark)


def test_predict_names_model_version(secured: LiveServer, trained: Trained) -> None:
    _, features = _features(trained)
    response = httpx.post(
        f"{secured.url}/v1/predict",
        headers=HEADERS,
        json={"player_id": "player-1", "features": features},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == trained.champion
    assert body["variant"] == "champion"
    assert body["feature_source"] == "request"
    assert body["imputed_features"] == []
    assert body["player_id"] != "player-1"


def test_predict_matches_predictor(secured: LiveServer, trained: Trained) -> None:
    from crmbet.serving.predictor import SegmentPredictor

    predictor = SegmentPredictor(secured.system.load(trained.champion).model)
    for index in range(0, 200, 20):
        _, features = _features(trained, index)
        expected = predictor.predict_features(features)
        body = httpx.post(
            f"{secured.url}/v1/predict",
            headers=HEADERS,
            json={"player_id": f"p{index}", "features": features},
        ).json()
        assert body["cluster_id"] == expected.cluster_id
        assert body["responsible_gambling_flag"] == expected.responsible_gambling_flag
        assert np.isclose(body["confidence"], expected.confidence)


def test_predict_reads_online_store(secured: LiveServer, trained: Trained) -> None:
    system = secured.system
    store = system.feature_source.store.backend
    state = trained.states.row(3, named=True)
    state["player_id"] = system._pseudonymizer.pseudonymize("raw-player-7")
    store.put_states(pl.DataFrame([state], schema=trained.states.schema))
    features = compute_one(state, store.watermark)
    expected = httpx.post(
        f"{secured.url}/v1/predict",
        headers=HEADERS,
        json={"player_id": "other", "features": features},
    ).json()
    body = httpx.post(
        f"{secured.url}/v1/predict", headers=HEADERS, json={"player_id": "raw-player-7"}
    ).json()
    assert body["feature_source"] == "online_store"
    assert body["imputed_features"] == []
    assert body["cluster_id"] == expected["cluster_id"]
    assert body["risk"] == expected["risk"]


def test_unknown_player_gets_cold_start(secured: LiveServer) -> None:
    response = httpx.post(
        f"{secured.url}/v1/predict",
        headers=HEADERS,
        json={"player_id": "never-seen-player"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["feature_source"] == "cold_start"
    assert len(body["imputed_features"]) > 0
    # No harm marker can be read for an unknown player, so no promotion either.
    assert body["responsible_gambling_flag"] is True
    assert body["responsible_gambling_reasons"] == ["harm_markers_unknown"]
    assert not any(c["promotion"] for c in body["campaign_recommendations"])


def test_unknown_feature_is_422(secured: LiveServer) -> None:
    response = httpx.post(
        f"{secured.url}/v1/predict",
        headers=HEADERS,
        json={"player_id": "p", "features": {"no_such_feature": 1.0}},
    )
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "features"]
    assert "no_such_feature" in error["msg"]


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"features": {}}, ["body", "player_id"]),
        ({"player_id": ""}, ["body", "player_id"]),
        ({"player_id": "x" * (MAX_PLAYER_ID_LENGTH + 1)}, ["body", "player_id"]),
        (
            {"player_id": "p", "features": {"bet_count": "many"}},
            ["body", "features", "bet_count"],
        ),
        ({"player_id": "p", "extra": 1}, ["body", "extra"]),
    ],
)
def test_bad_field_is_422(secured: LiveServer, body: dict, location: list) -> None:
    response = httpx.post(f"{secured.url}/v1/predict", headers=HEADERS, json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == location


def test_invalid_json_is_422(secured: LiveServer) -> None:
    response = httpx.post(
        f"{secured.url}/v1/predict", headers=HEADERS, content=b"{not json"
    )
    assert response.status_code == 422


def test_missing_api_key_is_401(secured: LiveServer) -> None:
    response = httpx.post(f"{secured.url}/v1/predict", json={"player_id": "p"})
    assert response.status_code == 401
    wrong = httpx.post(
        f"{secured.url}/v1/predict",
        json={"player_id": "p"},
        headers={"X-API-Key": "wrong"},
    )
    assert wrong.status_code == 401


def test_open_server_needs_no_key(open_server: LiveServer) -> None:
    response = httpx.post(f"{open_server.url}/v1/predict", json={"player_id": "p"})
    assert response.status_code == 200


def test_large_body_is_413(secured: LiveServer) -> None:
    ids = [f"player-{i:08d}" for i in range(5000)]
    response = httpx.post(
        f"{secured.url}/v1/predict/batch", headers=HEADERS, json={"player_ids": ids}
    )
    assert response.status_code == 413
    assert "CRMBET_MAX_BODY_BYTES" in response.json()["detail"]


@pytest.mark.parametrize("chunked", [False, True])
def test_large_single_body_is_413(secured: LiveServer, chunked: bool) -> None:
    body = b'{"player_id": "p", "features": {"bet_count": 1' + b" " * 70_000 + b"}}"

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    response = httpx.post(
        f"{secured.url}/v1/predict",
        headers={**HEADERS, "Content-Type": "application/json"},
        content=chunks() if chunked else body,
    )
    assert response.status_code == 413
    assert "CRMBET_MAX_BODY_BYTES" in response.json()["detail"]


def test_large_batch_is_413(secured: LiveServer) -> None:
    response = httpx.post(
        f"{secured.url}/v1/predict/batch",
        headers=HEADERS,
        json={"player_ids": [str(i) for i in range(1001)]},
    )
    assert response.status_code == 413
    assert "1000" in response.json()["detail"]


def test_batch_rows_match_single(secured: LiveServer, trained: Trained) -> None:
    players, rows = zip(*(_features(trained, i) for i in range(50)), strict=True)
    names = list(rows[0])
    columns = {name: [row[name] for row in rows] for name in names}
    ids = [f"raw-{i}" for i in range(50)]
    response = httpx.post(
        f"{secured.url}/v1/predict/batch",
        headers=HEADERS,
        json={"player_ids": ids, "features": columns},
    )
    assert response.status_code == 200, response.text
    batch = response.json()
    assert batch["count"] == 50
    assert batch["model_versions"] == [trained.champion]
    for index in (0, 17, 49):
        single = httpx.post(
            f"{secured.url}/v1/predict",
            headers=HEADERS,
            json={"player_id": ids[index], "features": rows[index]},
        ).json()
        item = batch["predictions"][index]
        assert item["cluster_id"] == single["cluster_id"]
        assert item["player_id"] == single["player_id"]
        assert item["risk"] == single["risk"]


def test_batch_columns_format(secured: LiveServer, trained: Trained) -> None:
    response = httpx.post(
        f"{secured.url}/v1/predict/batch",
        headers=HEADERS,
        json={
            "player_ids": ["a", "b", "c"],
            "features": {"bet_count": [1.0, None, 300.0]},
            "format": "columns",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["columns"]["cluster_id"]) == 3
    assert body["columns"]["feature_source"] == ["request", "cold_start", "request"]
    assert f"{trained.champion}:0" in body["segments"]


def test_batch_length_mismatch_is_422(secured: LiveServer) -> None:
    response = httpx.post(
        f"{secured.url}/v1/predict/batch",
        headers=HEADERS,
        json={"player_ids": ["a", "b"], "features": {"bet_count": [1.0]}},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "features", "bet_count"]


def test_health_endpoints(secured: LiveServer, trained: Trained) -> None:
    overall = httpx.get(f"{secured.url}/health").json()
    assert overall["status"] == "healthy"
    assert overall["system_health_score"] == 1.0
    store = httpx.get(f"{secured.url}/health/feature-store").json()
    assert store["players"] >= trained.states.height
    serving = httpx.get(f"{secured.url}/health/model-serving").json()
    assert serving["champion"] == trained.champion


def test_metrics_exposition(secured: LiveServer) -> None:
    httpx.post(f"{secured.url}/v1/predict", headers=HEADERS, json={"player_id": "m"})
    text = httpx.get(f"{secured.url}/metrics").text
    for name in (
        "model_requests_total",
        "model_latency_seconds_bucket",
        "system_health_score",
        "pipeline_health_score",
        "active_instances",
    ):
        assert name in text
    assert 'endpoint="predict"' in text


def test_docs_page(secured: LiveServer) -> None:
    page = httpx.get(f"{secured.url}/docs")
    assert page.status_code == 200
    # The page loads Swagger UI from this server, not from a CDN.
    assert "/docs/assets/swagger-ui-bundle.js" in page.text
    assert "cdn." not in page.text
    script = httpx.get(f"{secured.url}/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200
    assert "SwaggerUIBundle" in script.text
    redoc = httpx.get(f"{secured.url}/redoc")
    assert "/docs/assets/redoc.standalone.js" in redoc.text
    assert (
        httpx.get(f"{secured.url}/docs/assets/redoc.standalone.js").status_code == 200
    )
    schema = httpx.get(f"{secured.url}/openapi.json").json()
    assert "/v1/predict" in schema["paths"]
    assert "/v2/models/{name}/infer" in schema["paths"]
