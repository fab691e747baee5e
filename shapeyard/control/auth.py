"""API keys: `X-Api-Key` (or `Authorization: Bearer`) names the caller's account."""

from __future__ import annotations

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from shapeyard.control.state import ControlPlane
from shapeyard.store.accounts import Caller, caller_for_key
from shapeyard.wire.errors import NotFound, PermissionDenied, Unauthenticated


def api_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


async def authenticate(request: Request) -> Caller:
    key = api_key(request)
    if not key:
        raise Unauthenticated("missing API key: send it in the X-Api-Key header")
    control: ControlPlane = request.app.state.control
    caller = control.keys.get(key)
    if caller is not None:
        return caller

    def lookup() -> Caller | None:
        with control.db.session() as session:
            return caller_for_key(session, key)

    caller = await run_in_threadpool(lookup)
    if caller is None:
        raise Unauthenticated("invalid API key")
    control.keys.put(key, caller)
    return caller


def require_account(caller: Caller, account: str, what: str) -> None:
    """Another account's resources are reported as absent, not forbidden, so their names do not leak."""
    if account != caller.account and not caller.is_admin:
        raise NotFound(f"{what} not found")


def require_admin(caller: Caller) -> None:
    if not caller.is_admin:
        raise PermissionDenied("this operation needs an admin API key")
