"""Shared fixtures: an isolated crmbet home, a test key and the bustabit events."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

# A fixed test key keeps pseudonyms stable across tests and avoids the
# development-key warning, which the test settings turn into an error.
os.environ.setdefault("CRMBET_PSEUDONYM_KEY", "crmbet-test-key-0123456789abcdef")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

from crmbet.config import Settings, get_settings  # noqa: E402
from crmbet.events.adapters import bundled_bustabit_path, ingest  # noqa: E402
from crmbet.events.pseudonym import Pseudonymizer  # noqa: E402

TEST_KEY = os.environ["CRMBET_PSEUDONYM_KEY"].encode()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose home, registry and snapshots live in a temporary folder."""
    monkeypatch.setenv("CRMBET_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def pseudonymizer() -> Pseudonymizer:
    return Pseudonymizer(TEST_KEY)


@pytest.fixture(scope="session")
def bustabit_events(pseudonymizer: Pseudonymizer) -> pl.DataFrame:
    """The 50,000 bundled bustabit bets as canonical events."""
    return ingest(bundled_bustabit_path(), pseudonymizer=pseudonymizer).events


def _redis_reachable(host: str, port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host=host, port=port, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """URL of a real Redis database owned by the tests.

    Uses database 15 of the server on 127.0.0.1:6379 when one runs there
    (``CRMBET_TEST_REDIS_DB`` picks another, so that two test runs on one
    machine keep apart), otherwise starts ``redis-server`` on a free loopback
    port. ``CRMBET_TEST_OWN_REDIS=1`` starts one even when 6379 answers.
    """
    import os
    import shutil
    import socket
    import subprocess
    import time

    own = os.environ.get("CRMBET_TEST_OWN_REDIS", "") == "1"
    if not own and _redis_reachable("127.0.0.1", 6379):
        database = int(os.environ.get("CRMBET_TEST_REDIS_DB", "15"))
        yield f"redis://127.0.0.1:6379/{database}"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed; run .ci/run or apt-get install redis-server"
        )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _redis_reachable("127.0.0.1", port):
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"redis-server did not start on port {port} within 10 s")
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)
