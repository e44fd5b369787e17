"""A bounded schemathesis run against /openapi.json: no request may get a 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from serving_support import API_KEY, LiveServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_no_server_errors(secured: LiveServer, tmp_path: Path) -> None:
    # Admin endpoints return 401 without a token, so the run cannot change routing.
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{secured.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "8",
        "--seed",
        "1",
        "--request-timeout",
        "30",
        "--header",
        f"X-API-Key: {API_KEY}",
        "--no-color",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=240, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "21 selected" in result.stdout
    assert "❌" not in result.stdout
