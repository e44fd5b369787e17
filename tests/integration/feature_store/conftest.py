"""Fixtures of the feature-store tests: Redis namespaces and a private server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from crmbet.features.redis_store import RedisOnlineStore


def wait_until(check: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``check`` every 10 ms until it is truthy; False after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return bool(check())


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., bool]:
    """The polling helper :func:`wait_until`, for tests of asynchronous effects."""
    return wait_until


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisOnlineStore]:
    """A Redis online store in a namespace of its own, deleted afterwards."""
    store = RedisOnlineStore(redis_url, namespace=f"crmbet-test-{uuid.uuid4().hex[:8]}")
    yield store
    store.delete_namespace()
    store.close()


@dataclass
class RedisServer:
    """A redis-server process on a loopback port that the test can stop and restart."""

    binary: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # A save point makes SIGTERM write dump.rdb, so a restart keeps the data.
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "3600 1",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        if not wait_until(lambda: _answers(client), timeout=10):
            self.stop()
            pytest.fail(f"redis-server did not start on port {self.port} within 10 s")
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port, stopped after the test."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed; apt-get install redis-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = RedisServer(binary, port, tmp_path)
    server.start()
    yield server
    server.stop()
