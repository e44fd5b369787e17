"""Start-up checks of the server settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmbet.serving.settings import InsecureServerError, ServingSettings, is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "example.org", "::"])
def test_network_hosts(host: str) -> None:
    assert not is_loopback(host)


def test_open_network_server_rejected() -> None:
    with pytest.raises(InsecureServerError, match="--allow-insecure"):
        ServingSettings(host="0.0.0.0").check_startup()


def test_allow_insecure_flag() -> None:
    ServingSettings(host="0.0.0.0", allow_insecure=True).check_startup()


def test_jwt_secret_enables_auth() -> None:
    settings = ServingSettings(host="0.0.0.0", jwt_secret="s" * 32)
    assert settings.auth_enabled
    settings.check_startup()


def test_tls_needs_both_paths(tmp_path: Path) -> None:
    with pytest.raises(InsecureServerError, match="CRMBET_TLS_KEY_PATH"):
        ServingSettings(tls_cert_path=tmp_path / "cert.pem").check_startup()


def test_api_keys_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMBET_API_KEYS", "first, second")
    keys = [key.get_secret_value() for key in ServingSettings().api_keys]
    assert keys == ["first", "second"]


def test_secret_hidden_in_repr() -> None:
    assert "topsecret" not in repr(ServingSettings(jwt_secret="topsecret"))


def test_serve_rejects_open_network_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from crmbet.cli import app

    for name in (
        "CRMBET_JWT_SECRET",
        "CRMBET_JWT_PUBLIC_KEY_PATH",
        "CRMBET_ALLOW_INSECURE",
    ):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 2
    assert "refusing to serve on 0.0.0.0" in result.output
