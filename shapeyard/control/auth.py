"""API keys: `X-Api-Key` (or `Authorization: Bearer`) names the caller's account."""

from __future__ import annotations

import time

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from shapeyard.errors import NotFound, Unauthenticated
from shapeyard.store.accounts import Caller, caller_for_key


def api_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


# Known keys are remembered briefly: the trainer gateway sees several requests per training step.
KEY_CACHE_SECONDS = 10.0
_known: dict[str, tuple[Caller, float]] = {}


async def authenticate(request: Request) -> Caller:
    key = api_key(request)
    if not key:
        raise Unauthenticated("missing API key: send it in the X-Api-Key header")
    known = _known.get(key)
    if known is not None and known[1] > time.monotonic():
        return known[0]

    def lookup() -> Caller | None:
        with request.app.state.control.db.session() as session:
            return caller_for_key(session, key)

    caller = await run_in_threadpool(lookup)
    if caller is None:
        raise Unauthenticated("invalid API key")
    _known[key] = (caller, time.monotonic() + KEY_CACHE_SECONDS)
    return caller


def require_account(caller: Caller, account: str, what: str) -> None:
    """Another account's resources are reported as absent, not forbidden, so their names do not leak."""
    if account != caller.account and not caller.is_admin:
        raise NotFound(f"{what} not found")
