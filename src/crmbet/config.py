"""Settings read from ``CRMBET_*`` environment variables.

Every external component has an embedded default, so an empty environment
runs the whole job in one process: the online store lives in memory with a
snapshot file, the model registry is MLflow on a local SQLite file, and the
event stream is replayed from a file. Setting ``CRMBET_REDIS_URL``,
``CRMBET_KAFKA_BOOTSTRAP_SERVERS`` or ``CRMBET_MLFLOW_TRACKING_URI`` selects
the production backend for that role.

Examples
--------
>>> settings = Settings(home="/tmp/crmbet-doc", profile="dev")
>>> settings.registry_uri.startswith("sqlite:///")
True
"""

from __future__ import annotations

import logging
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

#: Key used for pseudonymisation when none is configured. Identifiers hashed
#: with it are only as private as this public string, so it is for
#: development and tests only.
DEVELOPMENT_PSEUDONYM_KEY = "crmbet-development-key-do-not-use-in-production"
#: Shortest pseudonymisation key accepted with CRMBET_PROFILE=production: the
#: key is what keeps raw player ids from being guessed back from pseudonyms.
MIN_PRODUCTION_KEY_BYTES = 32


#: URL schemes ``CRMBET_REDIS_URL`` accepts (those of redis-py).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

#: Values ``CRMBET_LOG_LEVEL`` accepts, in either case.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """Error raised when a ``CRMBET_*`` variable contains an invalid value."""


class InsecureKeyWarning(UserWarning):
    """Warning raised when the public development pseudonymisation key is used."""


class Settings(BaseSettings):
    """Runtime settings of crmbet, read from ``CRMBET_*`` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="CRMBET_", env_file=None, extra="ignore", validate_default=True
    )

    profile: Literal["dev", "production"] = "dev"
    home: Path = Field(
        default=Path(".crmbet"),
        description="Folder for the local registry, snapshots, reports and dead "
        "letters.",
    )
    pseudonym_key: SecretStr | None = Field(
        default=None,
        description="HMAC-SHA256 key that pseudonymises player identifiers.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking and registry URI; a SQLite file under home "
        "by default.",
    )
    mlflow_enable_telemetry: bool = False
    model_name: str = "crmbet-segments"
    redis_url: SecretStr | None = Field(
        default=None,
        description="Redis URL of the online store; the embedded store when unset.",
    )
    kafka_bootstrap_servers: str | None = None
    log_level: str = "INFO"

    @field_validator("home")
    @classmethod
    def _home_is_a_folder(cls, value: Path) -> Path:
        # The nearest existing path decides: a file there, or above it, can
        # never hold the snapshots and the registry.
        for path in (value, *value.parents):
            if path.exists():
                if not path.is_dir():
                    raise ValueError(
                        f"{str(path)!r} is a file, not a folder; point "
                        "CRMBET_HOME at a folder, or at a path that does not "
                        "exist yet so crmbet creates it"
                    )
                break
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if not value.get_secret_value().startswith(REDIS_SCHEMES):
            raise ValueError(
                f"use a URL starting with {', '.join(REDIS_SCHEMES)}, for example "
                "redis://127.0.0.1:6379/0, or unset it for the embedded store"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"use one of {', '.join(LOG_LEVELS)}")
        return level

    @property
    def registry_uri(self) -> str:
        """Return the MLflow URI, defaulting to a SQLite file under ``home``."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        """Return the folder where the local registry stores model artifacts."""
        return (self.home / "mlartifacts").resolve()

    def pseudonym_key_bytes(self) -> bytes:
        """Return the pseudonymisation key, warning when it is the development key."""
        if self.pseudonym_key is not None and self.pseudonym_key.get_secret_value():
            key = self.pseudonym_key.get_secret_value().encode()
            if self.profile == "production" and len(key) < MIN_PRODUCTION_KEY_BYTES:
                raise ValueError(
                    f"CRMBET_PSEUDONYM_KEY has {len(key)} bytes but "
                    "CRMBET_PROFILE=production needs at least "
                    f"{MIN_PRODUCTION_KEY_BYTES}: set it to a random secret, for "
                    "example the output of 'openssl rand -hex 32'."
                )
            if len(key) < MIN_PRODUCTION_KEY_BYTES:
                warnings.warn(
                    f"CRMBET_PSEUDONYM_KEY has only {len(key)} bytes; a short key "
                    "can be guessed, and CRMBET_PROFILE=production refuses keys "
                    f"under {MIN_PRODUCTION_KEY_BYTES} bytes, so set a random "
                    "secret such as the output of 'openssl rand -hex 32'",
                    InsecureKeyWarning,
                    stacklevel=2,
                )
            return key
        if self.profile == "production":
            raise ValueError(
                "CRMBET_PSEUDONYM_KEY is missing but CRMBET_PROFILE=production: "
                "set CRMBET_PSEUDONYM_KEY to a random secret of at least 32 bytes."
            )
        warnings.warn(
            "player identifiers are pseudonymised with the public development key; "
            "set CRMBET_PSEUDONYM_KEY to a secret before using real player data",
            InsecureKeyWarning,
            stacklevel=2,
        )
        return DEVELOPMENT_PSEUDONYM_KEY.encode()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read once from the environment.

    Raises :class:`SettingsError` naming each variable, its value and the
    values it accepts, instead of pydantic's report on model fields.
    """
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "?"
        variable = f"CRMBET_{field.upper()}"
        value = "<hidden>" if field in _SECRET_FIELDS else repr(item.get("input"))
        reason = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{variable}={value}: {reason}")
    return "invalid setting: " + "; ".join(problems) + "; fix or unset the variable"


_SECRET_FIELDS = {"pseudonym_key", "redis_url"}


def configure_mlflow_environment(settings: Settings) -> None:
    """Switch MLflow's usage telemetry off unless the settings enable it."""
    if not settings.mlflow_enable_telemetry:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("DO_NOT_TRACK", "true")
