"""The worker side of the gateway's token: a worker's HTTP routes answer only requests that came through it.

Apart from `launch.child` so that processes which serve no HTTP (the trainer's compute process, the smoke step)
do not import FastAPI.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from fastapi import Request

from shapeyard.errors import Unauthenticated
from shapeyard.wire.worker import WORKER_TOKEN_HEADER


def gateway_only(token: str) -> Callable[[Request], Awaitable[None]]:
    """The dependency of a worker's routes: only requests that carry the worker's token (the gateway adds it) get
    through. A coroutine, so that FastAPI checks it on the event loop rather than in a thread per request."""

    async def check_token(request: Request) -> None:
        if token and not secrets.compare_digest(request.headers.get(WORKER_TOKEN_HEADER, ""), token):
            raise Unauthenticated("this worker only answers requests that come through the shapeyard gateway")

    return check_token
