"""Bearer-token checks for the API (constant-time compare; the token is never logged)."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

from .settings import TOKEN_ENV, ApiSettings

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="hbmon"'}


def _presented(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _check(settings: ApiSettings, request: Request) -> None:
    expected = settings.token
    assert expected is not None
    presented = _presented(request)
    if presented is None:
        raise HTTPException(
            401, {"field": "authorization", "message": "missing 'Authorization: Bearer <token>'"},
            headers=_CHALLENGE)
    # compare_digest on bytes: time does not depend on where the strings differ.
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise HTTPException(
            401, {"field": "authorization", "message": "invalid token"}, headers=_CHALLENGE)


def require_write(request: Request) -> None:
    settings: ApiSettings = request.app.state.hbmon.settings
    if settings.token is None:
        if settings.allow_anonymous_writes:
            return
        raise HTTPException(
            403, {"field": "authorization",
                  "message": f"writes are disabled: no API token configured ({TOKEN_ENV})"})
    _check(settings, request)


def require_read(request: Request) -> None:
    settings: ApiSettings = request.app.state.hbmon.settings
    if settings.read_auth:
        _check(settings, request)
