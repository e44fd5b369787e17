"""Health of the stream consumer: a stalled handler shows as stalled."""

from __future__ import annotations

import threading
import time

import orjson

from crmbet.streaming import LocalSink, StreamConfig, StreamingMLPipeline


class SlowSink(LocalSink):
    """A sink whose first send blocks, as a stalled downstream system would."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def send_dead_letters(self, letters):  # noqa: ANN001
        self.release.wait(10)
        super().send_dead_letters(letters)


def test_stalled_handler_shows_in_health(tmp_path, settings):
    path = tmp_path / "bets.jsonl"
    row = {
        "event_id": "e1",
        "player_id": "alice",
        "ts": "2024-05-01T10:00:00Z",
        "event_type": "bet",
        "amount": "5",
    }
    path.write_bytes(orjson.dumps(row) + b"\n")
    config = StreamConfig(
        model_ref=None, session_timeout_ms=100, max_poll_interval_ms=200
    )
    sink = SlowSink()
    pipeline = StreamingMLPipeline(config, settings=settings, sink=sink)
    assert pipeline.health()["status"] == "stopped"

    worker = threading.Thread(target=pipeline.replay, args=(path,))
    worker.start()
    time.sleep(0.5)
    stalled = pipeline.health()
    sink.release.set()
    worker.join(10)

    assert stalled["status"] == "stalled"
    assert stalled["seconds_since_poll"] > 0.2
    assert pipeline.health()["status"] == "stopped"
    assert pipeline.records_processed == 1
