"""Bearer-token auth of the HTTP API: one shared token (``TREADLE_API_TOKEN``), on every
route but the health probes.

Without a token the API does not start at all, unless auth is turned off on purpose
(``TREADLE_API_AUTH=off`` or ``--insecure-no-auth``): an API that is open because a
variable was forgotten is worse than one that is not there.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from config.settings import Settings
from orchestrator.errors import InvalidInput, Problem, Unauthorized

# Long enough that guessing is hopeless; `treadle up` makes 32 url-safe characters.
MIN_TOKEN_CHARS = 16

_bearer = HTTPBearer(auto_error=False, description="TREADLE_API_TOKEN")


def token_matches(given: str | None, expected: str) -> bool:
    """Whether ``given`` is the token, in time that does not depend on where they differ."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


class Auth:
    """The token every protected request must carry; ``None``: auth is off."""

    def __init__(self, token: SecretStr | None):
        self._token = token

    @classmethod
    def from_settings(cls, settings: Settings, *, insecure_no_auth: bool = False) -> Auth:
        """Raises InvalidInput when auth is on and there is no usable token."""
        if insecure_no_auth or not settings.api_auth:
            return cls(None)
        token = settings.api_token
        if token is None or not token.get_secret_value():
            raise InvalidInput(
                Problem(
                    "TREADLE_API_TOKEN",
                    "is not set, and the HTTP API does not run without a token: set it (the "
                    "remote CLI sends the same setting), or turn auth off for local use only "
                    "with TREADLE_API_AUTH=off or --insecure-no-auth",
                )
            )
        if len(token.get_secret_value()) < MIN_TOKEN_CHARS:
            raise InvalidInput(
                Problem("TREADLE_API_TOKEN", f"is shorter than {MIN_TOKEN_CHARS} characters")
            )
        return cls(token)

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, given: str | None) -> None:
        """Raises Unauthorized unless auth is off or ``given`` is the token."""
        if self._token is None:
            return
        if given is None:
            raise Unauthorized("this needs a bearer token: Authorization: Bearer <token>")
        if not token_matches(given, self._token.get_secret_value()):
            raise Unauthorized("the bearer token is not the one this orchestrator was given")


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The dependency that guards a router (also declares the scheme in OpenAPI)."""
    auth: Auth = request.app.state.auth
    auth.check(credentials.credentials if credentials is not None else None)
