"""The Python facade names players as the HTTP API does."""

from __future__ import annotations

import asyncio

import pytest

from crmbet import EnterprisePipelineOrchestrator, PipelineConfig
from crmbet.config import Settings
from crmbet.events.synthetic import generate_transactions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def orchestrator(tmp_path_factory: pytest.TempPathFactory) -> object:
    home = tmp_path_factory.mktemp("facade")
    orchestrator = EnterprisePipelineOrchestrator(PipelineConfig(home=str(home)))
    orchestrator.start_background_services()
    transactions = generate_transactions(players=600, days=14, seed=5)
    asyncio.run(orchestrator.train_model(transactions))
    return orchestrator


def test_predict_returns_raw_id_and_pseudonym(
    orchestrator: EnterprisePipelineOrchestrator, settings: Settings
) -> None:
    result = asyncio.run(orchestrator.predict(player_id="player-000007"))
    assert result["player_id"] == "player-000007"
    assert result["prediction"]["player_id"].startswith("p_")
    assert result["prediction"]["feature_source"] == "online_store"


def test_trained_players_are_known_to_the_next_process(
    orchestrator: EnterprisePipelineOrchestrator,
) -> None:
    # A new orchestrator on the same home plays the part of the next process.
    home = orchestrator.settings.home
    again = EnterprisePipelineOrchestrator(PipelineConfig(home=str(home)))
    again.start_background_services()
    result = asyncio.run(again.predict(player_id="player-000007"))
    assert result["prediction"]["feature_source"] == "online_store"


def test_user_id_is_accepted_for_player_id(
    orchestrator: EnterprisePipelineOrchestrator,
) -> None:
    by_player = asyncio.run(orchestrator.predict(player_id="player-000011"))
    by_user = asyncio.run(orchestrator.predict(user_id="player-000011"))
    assert by_user["player_id"] == "player-000011"
    assert by_user["prediction"]["segment"] == by_player["prediction"]["segment"]
    batch = asyncio.run(
        orchestrator.batch_predict(
            [{"player_id": "player-000011"}, {"user_id": "player-000011"}]
        )
    )
    assert [r["player_id"] for r in batch] == ["player-000011"] * 2
    assert batch[0]["prediction"]["segment"] == by_player["prediction"]["segment"]


def test_batch_predict_names_missing_player_id(
    orchestrator: EnterprisePipelineOrchestrator,
) -> None:
    with pytest.raises(ValueError, match="player_id is missing in request 1"):
        asyncio.run(orchestrator.batch_predict([{"player_id": "a"}, {"features": {}}]))
    with pytest.raises(ValueError, match="differ"):
        asyncio.run(orchestrator.predict(player_id="a", user_id="b"))
