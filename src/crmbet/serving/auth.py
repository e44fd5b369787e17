"""Authentication: JWT bearer tokens for admin endpoints, API keys for predictions.

Admin tokens are verified with PyJWT against an HS256 secret or an RS256
public key from :class:`~crmbet.serving.settings.ServingSettings`; the
``exp`` and ``aud`` claims are required. Tokens and keys are never logged.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import jwt
from fastapi import HTTPException, status

from crmbet.serving.settings import ServingSettings

logger = logging.getLogger(__name__)


class AdminAuthenticator:
    """Verifies admin bearer tokens, or lets every request through when auth is off."""

    def __init__(self, serving: ServingSettings) -> None:
        self.enabled = serving.auth_enabled
        self.audience = serving.jwt_audience
        self._key: Any = None
        self._algorithms: list[str] = []
        if serving.jwt_public_key_path is not None:
            self._key = serving.jwt_public_key_path.read_text()
            self._algorithms = ["RS256"]
        elif serving.jwt_secret is not None:
            self._key = serving.jwt_secret.get_secret_value()
            self._algorithms = ["HS256"]

    def verify(self, token: str | None) -> dict[str, Any]:
        """Return the token's claims, or raise HTTP 401 with the reason."""
        if not self.enabled:
            return {}
        if not token:
            raise _unauthorized(
                "missing bearer token; send 'Authorization: Bearer <JWT>'"
            )
        try:
            return jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self.audience,
                options={"require": ["exp", "aud"]},
            )
        except jwt.ExpiredSignatureError as error:
            logger.warning("admin token rejected: expired")
            raise _unauthorized("token expired; request a new one") from error
        except jwt.InvalidAudienceError as error:
            logger.warning("admin token rejected: wrong audience")
            raise _unauthorized(f"token audience is not {self.audience!r}") from error
        except jwt.InvalidTokenError as error:
            logger.warning("admin token rejected: %s", type(error).__name__)
            raise _unauthorized(f"invalid token ({type(error).__name__})") from error


class ApiKeyChecker:
    """Checks the ``X-API-Key`` header of predictions when keys are configured."""

    def __init__(self, serving: ServingSettings) -> None:
        self._keys = [key.get_secret_value().encode() for key in serving.api_keys]

    @property
    def required(self) -> bool:
        """Whether prediction requests must carry a key."""
        return bool(self._keys)

    def check(self, key: str | None) -> None:
        """Raise HTTP 401 unless ``key`` is one of the configured keys (or none are)."""
        if not self._keys:
            return
        given = (key or "").encode()
        # Compare against every key so the time taken does not reveal which matched.
        matched = [hmac.compare_digest(given, known) for known in self._keys]
        if not any(matched):
            raise _unauthorized(
                "missing or invalid API key; send it in the X-API-Key header",
                scheme="ApiKey",
            )


def _unauthorized(detail: str, scheme: str = "Bearer") -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": scheme},
    )
