"""Settings: errors that name the variable, and MLflow's defaults at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import crmbet
from crmbet.config import Settings, SettingsError, get_settings

_MLFLOW_VARIABLES = (
    "MLFLOW_DISABLE_TELEMETRY",
    "DO_NOT_TRACK",
    "MLFLOW_LOGGING_LEVEL",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
    "CRMBET_MLFLOW_ENABLE_TELEMETRY",
)


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    assert Settings(home=tmp_path, log_level=" debug ").log_level == "DEBUG"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("CRMBET_LOG_LEVEL", "verbose", "CRMBET_LOG_LEVEL='verbose': use one of DEBUG"),
        ("CRMBET_PROFILE", "prod", "CRMBET_PROFILE='prod': Input should be 'dev'"),
    ],
)
def test_bad_variable_is_named_with_its_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match="invalid setting") as caught:
            get_settings()
    finally:
        get_settings.cache_clear()
    assert expected in str(caught.value)
    assert "fix or unset the variable" in str(caught.value)


def _environment_after_import(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _MLFLOW_VARIABLES}
    env |= extra | {"PYTHONPATH": str(Path(crmbet.__file__).resolve().parents[1])}
    code = (
        "import json, os, crmbet; "
        f"print(json.dumps({{k: os.environ.get(k) for k in {_MLFLOW_VARIABLES!r}}}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def test_importing_crmbet_turns_mlflow_telemetry_and_noise_off() -> None:
    seen = _environment_after_import({})
    assert seen["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert seen["DO_NOT_TRACK"] == "true"
    assert seen["MLFLOW_LOGGING_LEVEL"] == "WARNING"
    assert seen["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


def test_telemetry_stays_on_when_the_operator_enables_it() -> None:
    seen = _environment_after_import(
        {"CRMBET_MLFLOW_ENABLE_TELEMETRY": "true", "MLFLOW_LOGGING_LEVEL": "INFO"}
    )
    assert seen["MLFLOW_DISABLE_TELEMETRY"] is None
    assert seen["DO_NOT_TRACK"] is None
    assert seen["MLFLOW_LOGGING_LEVEL"] == "INFO"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("https://user:pw@mlflow.example:5000/x", "https://***@mlflow.example:5000/x"),
        ("postgresql://u@db/mlflow", "postgresql://***@db/mlflow"),
        ("sqlite:////srv/crmbet/mlflow.db", "sqlite:////srv/crmbet/mlflow.db"),
        ("databricks", "databricks"),
    ],
)
def test_registry_uri_is_shown_without_credentials(uri: str, shown: str) -> None:
    from crmbet.models.registry import redact_uri

    assert redact_uri(uri) == shown


def test_production_training_without_a_key_stops_before_reading(tmp_path: Path) -> None:
    from crmbet.training import run_training

    settings = Settings(home=tmp_path, pseudonym_key=None, profile="production")
    # The source does not exist: the key check must come first.
    with pytest.raises(ValueError, match="CRMBET_PSEUDONYM_KEY is missing"):
        run_training(tmp_path / "not-read.parquet", settings=settings, register=False)


def test_bad_redis_url_is_named_without_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A Redis URL may carry a password, so its value is not repeated.
    monkeypatch.setenv("CRMBET_REDIS_URL", "notaurl-with-secret")
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError) as caught:
            get_settings()
    finally:
        get_settings.cache_clear()
    message = str(caught.value)
    assert "CRMBET_REDIS_URL=<hidden>: use a URL starting with redis://" in message
    assert "notaurl-with-secret" not in message


@pytest.mark.parametrize("below", ["", "sub"])
def test_home_on_a_file_is_a_settings_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, below: str
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    home = blocker / below if below else blocker
    monkeypatch.setenv("CRMBET_HOME", str(home))
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match="CRMBET_HOME") as caught:
            get_settings()
    finally:
        get_settings.cache_clear()
    assert repr(str(home)) in str(caught.value)
    assert "is a file, not a folder" in str(caught.value)
