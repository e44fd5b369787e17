"""Open Inference Protocol endpoints through the real tritonclient HTTP client."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton
from serving_support import API_KEY, LiveServer, Trained

pytestmark = pytest.mark.integration

# tritonclient adds its own headers to the dict it is given, so each call gets a copy.
# tritonclient adds its own headers to the dict it is given, so each call passes a copy.
HEADERS = {"X-API-Key": API_KEY}


def _client(server: LiveServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


def _inputs(features: dict[str, np.ndarray], binary: bool) -> list[triton.InferInput]:
    inputs = []
    for name, values in features.items():
        tensor = triton.InferInput(name, list(values.shape), "FP64")
        tensor.set_data_from_numpy(values, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_health_and_metadata(secured: LiveServer, trained: Trained) -> None:
    client = _client(secured)
    name = secured.system.model_name
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(name)
    metadata = client.get_model_metadata(name)
    assert metadata["versions"] == [trained.champion]
    assert "bet_count" in {i["name"] for i in metadata["inputs"]}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_matches_sklearn(
    secured: LiveServer, trained: Trained, binary: bool
) -> None:
    from crmbet.features.definitions import compute_features

    model = secured.system.load(trained.champion).model
    table = compute_features(trained.states)
    features = {
        n: table[n].to_numpy().astype(np.float64)[:300] for n in model.feature_names
    }
    client = _client(secured)
    result = client.infer(
        secured.system.model_name,
        _inputs(features, binary),
        outputs=[
            triton.InferRequestedOutput("cluster_id", binary_data=False),
            triton.InferRequestedOutput("segment", binary_data=False),
        ],
        headers=dict(HEADERS),
    )
    expected = model.pipeline.predict(np.column_stack(list(features.values())))
    assert result.as_numpy("cluster_id").tolist() == expected.tolist()
    names = [p.name for p in model.profiles]
    assert [
        s.decode() if isinstance(s, bytes) else s for s in result.as_numpy("segment")
    ] == [names[i] for i in expected]
    assert result.get_response()["model_version"] == trained.champion


def test_infer_unknown_model(secured: LiveServer) -> None:
    client = _client(secured)
    values = {"bet_count": np.array([1.0])}
    with pytest.raises(triton.InferenceServerException, match="not served here"):
        client.infer("no-such-model", _inputs(values, False), headers=dict(HEADERS))


def test_infer_unknown_input_is_422(secured: LiveServer) -> None:
    import httpx

    response = httpx.post(
        f"{secured.url}/v2/models/{secured.system.model_name}/infer",
        headers=HEADERS,
        json={
            "inputs": [
                {"name": "shoe_size", "shape": [1], "datatype": "FP64", "data": [42.0]}
            ]
        },
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "inputs", 0, "name"]


def test_infer_impossible_value_is_422(secured: LiveServer) -> None:
    import httpx

    response = httpx.post(
        f"{secured.url}/v2/models/{secured.system.model_name}/infer",
        headers=HEADERS,
        json={
            "inputs": [
                {
                    "name": "avg_stake",
                    "shape": [2],
                    "datatype": "FP64",
                    "data": [3.0, -1.0],
                }
            ]
        },
    )
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "inputs", 0, "data", 1]
    assert error["msg"].startswith("avg_stake=-1.0 is negative")
