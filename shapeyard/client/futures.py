"""Futures over `retrieve_future`: every mutating call returns at once; `result()` long-polls for the outcome."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import httpx

T = TypeVar("T")


class RequestFailedError(RuntimeError):
    """The server ran the request and it failed; `category` is `user` for bad input."""

    def __init__(self, message: str, category: str) -> None:
        super().__init__(f"{message} (category {category})")
        self.message, self.category = message, category


def check(response: httpx.Response) -> dict[str, Any]:
    """The JSON of a 2xx answer; otherwise raise with the server's message."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.is_error:
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else (error or response.text)
        raise RequestFailedError(
            f"HTTP {response.status_code}: {message}", "user" if response.status_code < 500 else "server"
        )
    return body


class Future(Generic[T]):
    def __init__(self, http: httpx.Client, request_id: str, parse: Callable[[dict[str, Any]], T]) -> None:
        self._http, self.request_id, self._parse = http, request_id, parse
        self._outcome: tuple[T | None, RequestFailedError | None] | None = None

    def result(self, timeout: float | None = None) -> T:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._outcome is None:
            response = self._http.post("/api/v1/retrieve_future", json={"request_id": self.request_id})
            if response.status_code == 408:
                continue
            body = check(response)
            if body.get("type") == "try_again":
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"request {self.request_id} is still running")
                continue
            if "error" in body:
                self._outcome = (None, RequestFailedError(body["error"], body.get("category", "unknown")))
            else:
                self._outcome = (self._parse(body), None)
        value, error = self._outcome
        if error is not None:
            raise error
        return value


class Done(Generic[T]):
    """A future whose value is already known (a result computed on the client)."""

    def __init__(self, value: T) -> None:
        self._value = value

    def result(self, timeout: float | None = None) -> T:
        return self._value
