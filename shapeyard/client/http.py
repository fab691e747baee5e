"""The client's HTTP: a session that sends the API key, and the one error type every call raises (`ApiError`)."""

from __future__ import annotations

from typing import Any

import httpx

from shapeyard.wire.errors import ShapeyardError


class ApiError(Exception):
    """A request the server refused or could not run.

    An HTTP error answer carries its `http_status` and gRPC-style `status` (INVALID_ARGUMENT, NOT_FOUND, ...); a
    request that was accepted and then failed (a failed future) has no HTTP status. Either way `category` says
    whose the fault is: `user` for bad input, `server` otherwise.
    """

    def __init__(self, message: str, *, http_status: int | None = None, status: str = "", category: str = "") -> None:
        self.message, self.http_status, self.status = message, http_status, status
        self.category = category or ("user" if http_status is not None and http_status < 500 else "server")
        where = f"HTTP {http_status} {status}".rstrip() if http_status is not None else f"{self.category} error"
        super().__init__(f"{where}: {message}")


def session(base_url: str, api_key: str, timeout: float | httpx.Timeout) -> httpx.Client:
    return httpx.Client(base_url=base_url.rstrip("/"), headers={"X-Api-Key": api_key}, timeout=timeout)


def check(response: httpx.Response) -> Any:
    """The JSON of a 2xx answer; an error answer raises ApiError with the server's status and message."""
    if response.is_error:
        error = ShapeyardError.from_response(response.status_code, response.content)
        raise ApiError(error.message, http_status=response.status_code, status=error.status)
    return response.json()
