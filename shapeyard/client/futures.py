"""Futures over `retrieve_future`: every mutating call returns at once; `result()` long-polls for the outcome."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import httpx

from shapeyard.client.http import ApiError, check
from shapeyard.wire import routes
from shapeyard.wire.trainer import RequestFailed, RetrieveFutureRequest

T = TypeVar("T")


class Future(Generic[T]):
    def __init__(self, http: httpx.Client, request_id: str, parse: Callable[[dict[str, Any]], T]) -> None:
        self._http, self.request_id, self._parse = http, request_id, parse
        self._outcome: tuple[T | None, ApiError | None] | None = None

    def result(self, timeout: float | None = None) -> T:
        deadline = None if timeout is None else time.monotonic() + timeout
        request = RetrieveFutureRequest(request_id=self.request_id).to_json_dict()
        while self._outcome is None:
            response = self._http.post(routes.trainer_op("retrieve_future"), json=request)
            if response.status_code == 408:
                continue
            body = check(response)
            if body.get("type") == "try_again":
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"request {self.request_id} is still running")
                continue
            if "error" in body:
                failed = RequestFailed.model_validate(body)
                self._outcome = (None, ApiError(failed.error, category=failed.category.value))
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
