"""Bearer-token checks for the API (constant-time compare; the token is never logged).

Writes are checked twice: by `AuthBeforeBody` (app.py) from the request headers, before a
single body byte is read, so an unauthenticated client cannot make the server read, buffer
or parse a large body; and by the `require_write` dependency, which also marks the routes
in the OpenAPI document. Both use `write_denial`, so they cannot disagree.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

from hbmon.api.settings import TOKEN_ENV, ApiSettings

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="hbmon"'}


def _presented(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _token_denial(settings: ApiSettings, authorization: str | None) -> HTTPException | None:
    expected = settings.token
    assert expected is not None
    presented = _presented(authorization)
    if presented is None:
        return HTTPException(
            401, {"field": "authorization", "message": "missing 'Authorization: Bearer <token>'"},
            headers=_CHALLENGE)
    # compare_digest on bytes: time does not depend on where the strings differ.
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        return HTTPException(
            401, {"field": "authorization", "message": "invalid token"}, headers=_CHALLENGE)
    return None


def write_denial(settings: ApiSettings, authorization: str | None) -> HTTPException | None:
    """Why a write with this Authorization header is refused (401/403), or None."""
    if settings.token is None:
        if settings.allow_anonymous_writes:
            return None
        return HTTPException(
            403, {"field": "authorization",
                  "message": f"writes are disabled: no API token configured ({TOKEN_ENV})"})
    return _token_denial(settings, authorization)


def read_denial(settings: ApiSettings, authorization: str | None) -> HTTPException | None:
    if not settings.read_auth:
        return None
    return _token_denial(settings, authorization)


def require_write(request: Request) -> None:
    denial = write_denial(request.app.state.hbmon.settings, request.headers.get("authorization"))
    if denial is not None:
        raise denial


def require_read(request: Request) -> None:
    denial = read_denial(request.app.state.hbmon.settings, request.headers.get("authorization"))
    if denial is not None:
        raise denial
