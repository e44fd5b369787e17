"""Admin endpoints: token checks, canary routing, promotion and rollback over HTTP."""

from __future__ import annotations

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from serving_support import (
    API_KEY,
    LiveServer,
    Trained,
    admin_token,
    make_system,
    run_server,
)

pytestmark = pytest.mark.integration


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        _auth(admin_token(expires_in=-60)),
        _auth(admin_token(secret="another-secret-of-the-same-length-000000")),
        _auth(admin_token(audience="someone-else")),
        _auth("not.a.jwt"),
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
    ids=[
        "missing",
        "expired",
        "wrong-signature",
        "wrong-audience",
        "malformed",
        "basic",
    ],
)
def test_admin_rejects_bad_token(secured: LiveServer, headers: dict[str, str]) -> None:
    response = httpx.post(f"{secured.url}/admin/models/rollback", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_admin_accepts_valid_token(secured: LiveServer, trained: Trained) -> None:
    response = httpx.get(f"{secured.url}/admin/status", headers=_auth(admin_token()))
    assert response.status_code == 200
    assert response.json()["champion"] == trained.champion


def test_token_without_exp_rejected(secured: LiveServer) -> None:
    import jwt
    from serving_support import AUDIENCE, JWT_SECRET

    token = jwt.encode({"aud": AUDIENCE}, JWT_SECRET, algorithm="HS256")
    response = httpx.get(f"{secured.url}/admin/status", headers=_auth(token))
    assert response.status_code == 401


def test_admin_lists_versions(secured: LiveServer, trained: Trained) -> None:
    rows = httpx.get(f"{secured.url}/admin/models", headers=_auth(admin_token())).json()
    assert {row["version"] for row in rows} >= {trained.champion, trained.challenger}


def test_rs256_public_key(trained: Trained, tmp_path) -> None:  # noqa: ANN001
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "admin.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    system = make_system(trained, jwt_public_key_path=public)
    with run_server(system) as url:
        good = admin_token(secret=private, algorithm="RS256")  # type: ignore[arg-type]
        assert httpx.get(f"{url}/admin/status", headers=_auth(good)).status_code == 200
        forged = admin_token()
        assert (
            httpx.get(f"{url}/admin/status", headers=_auth(forged)).status_code == 401
        )


@pytest.mark.usefixtures("restore_routing")
def test_canary_over_http(secured: LiveServer, trained: Trained) -> None:
    token = _auth(admin_token())
    response = httpx.post(
        f"{secured.url}/admin/models/canary",
        headers=token,
        json={"version": trained.challenger, "traffic": 0.2},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["challenger"] == trained.challenger

    ids = [f"canary-player-{i}" for i in range(900)]
    first = _variants(secured.url, ids)
    share = sum(v == "challenger" for v in first.values()) / len(ids)
    assert 0.15 <= share <= 0.25
    assert _variants(secured.url, ids) == first
    versions = {v: set() for v in ("champion", "challenger")}
    for player in ids[:200]:
        body = httpx.post(
            f"{secured.url}/v1/predict",
            headers={"X-API-Key": API_KEY},
            json={"player_id": player},
        ).json()
        assert body["variant"] == first[player]
        versions[body["variant"]].add(body["model_version"])
    assert versions["champion"] == {trained.champion}
    assert versions["challenger"] == {trained.challenger}

    rollback = httpx.post(
        f"{secured.url}/admin/models/rollback", headers=token, timeout=60
    )
    assert rollback.status_code == 200
    assert set(_variants(secured.url, ids).values()) == {"champion"}


@pytest.mark.usefixtures("restore_routing")
def test_promote_over_http(secured: LiveServer, trained: Trained) -> None:
    token = _auth(admin_token())
    httpx.post(
        f"{secured.url}/admin/models/ab-test",
        headers=token,
        json={"version": trained.challenger, "traffic": 0.5},
        timeout=60,
    )
    response = httpx.post(
        f"{secured.url}/admin/models/promote", headers=token, timeout=60
    )
    assert response.status_code == 200
    assert response.json()["champion"] == trained.challenger
    assert secured.system.registry.alias_version("champion") == trained.challenger
    assert set(_variants(secured.url, ["a", "b", "c", "d"]).values()) == {"champion"}


def test_promote_without_challenger_is_409(secured: LiveServer) -> None:
    response = httpx.post(
        f"{secured.url}/admin/models/promote", headers=_auth(admin_token()), timeout=60
    )
    assert response.status_code == 409
    assert "deploy-canary" in response.json()["detail"]


def test_canary_unknown_version_is_404(secured: LiveServer) -> None:
    response = httpx.post(
        f"{secured.url}/admin/models/canary",
        headers=_auth(admin_token()),
        json={"version": "999", "traffic": 0.1},
        timeout=60,
    )
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "version 999" in detail
    # Where the registry lives is the operator's business, not the client's.
    assert "sqlite" not in detail
    assert "mlflow.db" not in detail


def _variants(url: str, ids: list[str]) -> dict[str, str]:
    response = httpx.post(
        f"{url}/v1/predict/batch",
        headers={"X-API-Key": API_KEY},
        json={"player_ids": ids, "format": "columns"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return dict(zip(ids, response.json()["columns"]["variant"], strict=True))
