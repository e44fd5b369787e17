"""Helpers shared by the serving tests: live uvicorn servers and admin tokens."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import jwt
import polars as pl
import pytest
import uvicorn

from crmbet.config import Settings
from crmbet.serving.app import create_app
from crmbet.serving.settings import ServingSettings
from crmbet.serving.system import ModelServingSystem

JWT_SECRET = "serving-tests-hs256-secret-0123456789abcdef"
API_KEY = "serving-tests-api-key"
AUDIENCE = "crmbet-admin"


@dataclass
class Trained:
    settings: Settings
    champion: str
    challenger: str
    states: pl.DataFrame


@dataclass
class LiveServer:
    url: str
    system: ModelServingSystem


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def run_server(system: ModelServingSystem) -> Iterator[str]:
    """Serve the app of ``system`` with uvicorn on a free loopback port in a thread."""
    port = free_port()
    config = uvicorn.Config(
        create_app(system),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            pytest.fail(f"uvicorn did not start on port {port} within 30 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def make_system(trained: Trained, **serving: object) -> ModelServingSystem:
    settings = ServingSettings(registry_poll_seconds=0, **serving)  # type: ignore[arg-type]
    return ModelServingSystem(
        trained.settings, settings, max_batch_size=64, batch_timeout_ms=1.0
    )


def admin_token(
    secret: str = JWT_SECRET,
    expires_in: float = 300.0,
    audience: str = AUDIENCE,
    algorithm: str = "HS256",
) -> str:
    """Return a signed admin token."""
    claims = {"sub": "tests", "aud": audience, "exp": int(time.time() + expires_in)}
    return jwt.encode(claims, secret, algorithm=algorithm)
