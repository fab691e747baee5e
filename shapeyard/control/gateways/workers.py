"""Calls from the control plane to its workers: every gateway builds them here.

Each request carries the worker's token (the proof that it passed the control plane's authentication). httpcore
rather than httpx: the gateway sits on the training hot path, and the thinner client costs about half the CPU per
request. A worker's error answer becomes an error again with its own status and code.
"""

from __future__ import annotations

import json
from typing import Any

import httpcore

from shapeyard.wire.base import WireModel
from shapeyard.wire.errors import ShapeyardError
from shapeyard.wire.routes import WORKER_TOKEN_HEADER
from shapeyard.wire.worker import Listener

# retrieve_future long-polls on the worker for up to LONG_POLL_SECONDS (wire.trainer); the SDKs wait 45 s.
CALL_TIMEOUTS = {"timeout": {"connect": 5.0, "read": 60.0, "write": 60.0, "pool": 60.0}}
# A streamed completion may take minutes to finish.
STREAM_TIMEOUTS = {"timeout": {"connect": 5.0, "read": 600.0, "write": 60.0, "pool": 60.0}}


def worker_pool() -> httpcore.AsyncConnectionPool:
    """One per running app (it belongs to the app's event loop)."""
    return httpcore.AsyncConnectionPool(max_connections=256, max_keepalive_connections=64)


def _request(
    listener: Listener, method: str, target: str, body: bytes, headers: dict[str, str], extensions: dict[str, Any]
) -> httpcore.Request:
    pairs = [(b"host", f"{listener.host}:{listener.port}".encode())]
    pairs += [(key.encode(), value.encode()) for key, value in headers.items()]
    pairs += [(b"content-length", str(len(body)).encode()), (WORKER_TOKEN_HEADER.encode(), listener.token.encode())]
    return httpcore.Request(method, f"{listener.url}{target}", headers=pairs, content=body, extensions=extensions)


def content_type(response: httpcore.Response) -> str:
    return next((v.decode() for k, v in response.headers if k.lower() == b"content-type"), "application/json")


async def call_worker(
    pool: httpcore.AsyncConnectionPool,
    listener: Listener,
    method: str,
    target: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request to a worker, read whole."""
    response = await pool.handle_async_request(_request(listener, method, target, body, headers or {}, CALL_TIMEOUTS))
    try:
        content = await response.aread()
    finally:
        await response.aclose()
    return response.status, content_type(response), content


async def open_worker_stream(
    pool: httpcore.AsyncConnectionPool, listener: Listener, target: str, body: bytes
) -> httpcore.Response:
    """A POST whose answer is passed on as it arrives; the caller closes it."""
    request = _request(listener, "POST", target, body, {"content-type": "application/json"}, STREAM_TIMEOUTS)
    return await pool.handle_async_request(request)


def raise_worker_error(status: int, content: bytes) -> None:
    """A worker's error answer, raised with its own status, code and message."""
    if status >= 400:
        raise ShapeyardError.from_response(status, content)


async def post_json(
    pool: httpcore.AsyncConnectionPool,
    listener: Listener,
    target: str,
    payload: WireModel | dict[str, Any],
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST to a worker and return its JSON answer; an error answer is raised. A dict is a client's body passed on
    as it came (the worker validates it in order, so that a bad request still takes its place in the sequence)."""
    if isinstance(payload, WireModel):
        body = payload.model_dump_json(exclude_none=True).encode()
    else:
        body = json.dumps(payload).encode()
    headers = {**(headers or {}), "content-type": "application/json"}
    status, _, content = await call_worker(pool, listener, "POST", target, body, headers)
    raise_worker_error(status, content)
    return json.loads(content)
