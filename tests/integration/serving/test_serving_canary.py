"""Canary routing over 10,000 players, through the serving system and the CLI."""

from __future__ import annotations

import pytest
from serving_support import LiveServer, Trained, make_system
from typer.testing import CliRunner

from crmbet.config import get_settings

pytestmark = pytest.mark.integration

PLAYERS = [f"player-{i}" for i in range(10_000)]


async def _variants(system) -> list[str]:  # noqa: ANN001
    body = await system.predict_batch(PLAYERS, as_columns=True)
    return body["columns"]["variant"]


@pytest.mark.usefixtures("restore_routing")
async def test_canary_share_sticky_rollback(trained: Trained) -> None:
    system = make_system(trained)
    system.refresh()
    system.deploy_canary(system.model_name, trained.challenger, 0.2)

    first = await _variants(system)
    share = first.count("challenger") / len(PLAYERS)
    assert abs(share - 0.2) <= 0.03
    assert await _variants(system) == first
    stats = system.get_system_status()["routing"]["variants"]
    assert stats["challenger"]["model_version"] == trained.challenger
    assert stats["challenger"]["requests"] == 2 * first.count("challenger")

    system.rollback()
    assert set(await _variants(system)) == {"champion"}
    assert system.registry.alias_version("challenger") is None


@pytest.mark.usefixtures("restore_routing")
async def test_raising_traffic_keeps_players(trained: Trained) -> None:
    system = make_system(trained)
    system.refresh()
    system.deploy_canary(None, trained.challenger, 0.1)
    small = await _variants(system)
    system.deploy_canary(None, trained.challenger, 0.3)
    large = await _variants(system)
    moved = [
        a for a, b in zip(small, large, strict=True) if a == "challenger" and b != a
    ]
    assert moved == []
    assert large.count("challenger") > small.count("challenger")


@pytest.mark.usefixtures("restore_routing")
def test_cli_canary_reaches_server(
    trained: Trained, open_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crmbet.cli import app

    monkeypatch.setenv("CRMBET_HOME", str(trained.settings.home))
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        result = runner.invoke(
            app, ["models", "deploy-canary", trained.challenger, "--traffic", "0.25"]
        )
        assert result.exit_code == 0, result.output
        assert "25.0%" in result.output
        open_server.system.refresh()
        assert open_server.system.router.traffic == 0.25
        listed = runner.invoke(app, ["models", "list"])
        assert "challenger" in listed.output
        result = runner.invoke(app, ["models", "rollback"])
        assert result.exit_code == 0, result.output
        open_server.system.refresh()
        assert open_server.system.router.mode == "single"
    finally:
        get_settings.cache_clear()
