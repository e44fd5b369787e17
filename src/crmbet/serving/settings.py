"""Settings of the HTTP server, read from ``CRMBET_*`` environment variables.

They live beside the server rather than in :mod:`crmbet.config` because only
``crmbet serve`` and the ``crmbet models`` commands read them.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from crmbet.errors import CrmbetError


class InsecureServerError(CrmbetError, RuntimeError):
    """Raised when the server would expose unauthenticated endpoints to a network."""


class ServingSettings(BaseSettings):
    """Server address, authentication, TLS and request limits.

    Examples
    --------
    >>> ServingSettings(host="127.0.0.1").auth_enabled
    False
    """

    model_config = SettingsConfigDict(
        env_prefix="CRMBET_", env_file=None, extra="ignore", validate_default=True
    )

    host: str = Field(default="127.0.0.1", description="Address the server binds to.")
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes.")
    engine: Literal["auto", "numpy", "onnx"] = Field(
        default="auto",
        description="Inference path; 'auto' times both at start-up, keeps the faster.",
    )
    jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 secret that signs admin tokens."
    )
    jwt_public_key_path: Path | None = Field(
        default=None,
        description="PEM file of the RS256 public key that verifies admin tokens.",
    )
    jwt_audience: str = Field(
        default="crmbet-admin", description="Required 'aud' claim."
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="API keys accepted in the X-API-Key header of predictions; "
        "prediction endpoints are open when the list is empty.",
    )
    tls_cert_path: Path | None = None
    tls_key_path: Path | None = None
    allow_insecure: bool = Field(
        default=False,
        description="Allow serving without admin auth on a non-loopback address.",
    )
    max_body_bytes: int = Field(
        default=16 * 2**20,
        ge=1024,
        description="Largest accepted request body, in bytes.",
    )
    max_batch_size: int = Field(
        default=100_000, ge=1, description="Most players accepted in one batch request."
    )
    batch_max_size: int = Field(
        default=512,
        ge=1,
        description="Maximum single requests in one model call (1 turns grouping off).",
    )
    # 0 closes a batch on the next event-loop turn. In two serving-http
    # benchmark runs it gave a lower p99 at 1,000 requests/s than 2 ms, and a
    # maximum rate within the run-to-run noise (docs/serving.md).
    batch_timeout_ms: float = Field(
        default=0.0,
        ge=0,
        description="Maximum wait of a single request for others to join, in ms.",
    )
    pseudonym_cache_size: int = Field(
        default=65_536,
        ge=0,
        description="Most raw player ids whose pseudonyms are kept in memory "
        "(0 turns the cache off).",
    )
    registry_poll_seconds: float = Field(
        default=30.0,
        ge=0,
        description="Seconds between reads of registry aliases; 0 turns polling off.",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        # Keys come from the environment as one comma-separated string.
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @property
    def auth_enabled(self) -> bool:
        """Whether admin endpoints verify a JWT (a secret or public key is set)."""
        return self.jwt_secret is not None or self.jwt_public_key_path is not None

    @property
    def tls_enabled(self) -> bool:
        """Whether the server speaks HTTPS."""
        return self.tls_cert_path is not None and self.tls_key_path is not None

    def check_startup(self) -> None:
        """Raise :class:`InsecureServerError` when the configuration is unsafe."""
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise InsecureServerError(
                "TLS needs both CRMBET_TLS_CERT_PATH and CRMBET_TLS_KEY_PATH; "
                "set both, or neither for plain HTTP"
            )
        if self.auth_enabled or self.allow_insecure or is_loopback(self.host):
            return
        raise InsecureServerError(
            f"refusing to serve on {self.host} with admin authentication disabled: set "
            "CRMBET_JWT_SECRET or CRMBET_JWT_PUBLIC_KEY_PATH, bind to 127.0.0.1, "
            "or pass "
            "--allow-insecure (CRMBET_ALLOW_INSECURE=true) to accept the risk"
        )


def is_loopback(host: str) -> bool:
    """Return whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
