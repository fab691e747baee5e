"""API keys: `X-Api-Key` (or `Authorization: Bearer`) names the caller's account."""

from __future__ import annotations

from fastapi import Request

from shapeyard.errors import NotFound, Unauthenticated
from shapeyard.store.accounts import Caller, caller_for_key


def api_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def authenticate(request: Request) -> Caller:
    key = api_key(request)
    if not key:
        raise Unauthenticated("missing API key: send it in the X-Api-Key header")
    with request.app.state.control.db.session() as session:
        caller = caller_for_key(session, key)
    if caller is None:
        raise Unauthenticated("invalid API key")
    return caller


def require_account(caller: Caller, account: str, what: str) -> None:
    """Another account's resources are reported as absent, not forbidden, so their names do not leak."""
    if account != caller.account and not caller.is_admin:
        raise NotFound(f"{what} not found")
