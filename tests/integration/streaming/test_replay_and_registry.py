"""File replay through the consumer code, the CLI, and the online challenger."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from stream_helpers import assert_same_states
from typer.testing import CliRunner

from crmbet.events.adapters import ingest_frame
from crmbet.features.state import fold
from crmbet.streaming import (
    EmbeddedStateStore,
    LocalSink,
    StreamConfig,
    StreamingMLPipeline,
)
from crmbet.streaming.learning import ChallengerPublisher, OnlineCentroids

pytestmark = pytest.mark.integration


@pytest.fixture
def replay_file(tmp_path, raw_bustabit):
    path = tmp_path / "bets.jsonl"
    path.write_bytes(
        b"".join(
            orjson.dumps(row) + b"\n"
            for row in raw_bustabit.head(5_000).iter_rows(named=True)
        )
    )
    return path


def test_replay_equals_fold_and_resumes(
    replay_file, raw_bustabit, pseudonymizer, settings, tmp_path
):
    config = StreamConfig(
        model_ref=None, max_batch_size=1_000, snapshot_path=tmp_path / "state.zip"
    )
    first = StreamingMLPipeline(config, settings=settings, sink=LocalSink())
    assert first.replay(replay_file) == 5_000

    again = StreamingMLPipeline(config, settings=settings, sink=LocalSink())
    assert again.replay(replay_file) == 0
    expected = fold(
        ingest_frame(raw_bustabit.head(5_000), pseudonymizer=pseudonymizer).events
    )
    assert_same_states(
        EmbeddedStateStore(config.snapshot_path).states_frame(), expected
    )


def test_cli_stream_replay(replay_file, settings):
    from crmbet.cli import app

    result = CliRunner().invoke(
        app, ["stream", "--replay", str(replay_file), "--model", "none"]
    )
    assert result.exit_code == 0, result.output
    assert "records=5,000" in result.output
    assert (settings.home / "stream" / "state.zip").exists()


def test_cli_stream_replay_reads_the_records_own_names(settings, tmp_path):
    from crmbet.cli import app

    source = tmp_path / "export.csv"
    source.write_text(
        "txn,customer,when,kind,value\n"
        "t1,c1,2026-01-10T10:00:00Z,dep,50\n"
        "t2,c1,2026-01-10T10:01:00Z,wager,5\n"
        "t3,c2,2026-01-10T10:02:00Z,spin,5\n"
    )
    mapping = (
        '{"columns": {"event_id": "txn", "player_id": "customer", "ts": "when", '
        '"event_type": "kind", "amount": "value"}, '
        '"event_type_values": {"dep": "deposit", "wager": "bet"}}'
    )
    result = CliRunner().invoke(
        app,
        ["stream", "--replay", str(source), "--model", "none", "--mapping", mapping],
    )
    assert result.exit_code == 0, result.output
    # 'spin' has no translation, so that record alone is a dead letter.
    assert "records=3 events=2 dead letters=1" in result.output


def test_cli_stream_replay_of_only_invalid_records_fails(settings, tmp_path):
    from crmbet.cli import app

    source = tmp_path / "export.csv"
    source.write_text("txn,customer,when\nt1,c1,2026-01-10T10:00:00Z\n")
    result = CliRunner().invoke(
        app, ["stream", "--replay", str(source), "--model", "none"]
    )
    assert result.exit_code == 1, result.output
    assert "every record of" in " ".join(result.output.split())
    assert (settings.home / "stream" / "dead_letters.jsonl").exists()


@pytest.mark.slow
# MLflow 3 warns that the registry's pyfunc wrapper takes untyped input.
@pytest.mark.filterwarnings("ignore:.*Any type hint is inferred:UserWarning")
def test_challenger_never_replaces_champion(bustabit_events, settings):
    from crmbet.models.registry import ModelRegistry
    from crmbet.training import train_from_events

    trained = train_from_events(bustabit_events, settings=settings, k=4, register=True)
    registry = ModelRegistry(settings)
    champion = registry.alias_version("champion")
    learner = OnlineCentroids(registry.load("champion"), max_count=50)
    learner.partial_fit(trained.model.matrix(trained.features) * 2.0)

    version = ChallengerPublisher(registry, interval_s=0, min_updates=1).maybe_publish(
        learner
    )

    assert version is not None and version != champion
    assert registry.alias_version("champion") == champion
    assert registry.alias_version("challenger") == version
    loaded = registry.load("challenger").pipeline.named_steps["kmeans"].cluster_centers_
    assert np.allclose(loaded, learner.centers_)
