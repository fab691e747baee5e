"""What every shapeyard HTTP server shares: errors answered as the official clients read them, and, for workers,
the gateway's token.

Apart from `runtime.process` so that processes which serve no HTTP (the trainer's compute process, the smoke step)
do not import FastAPI.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from shapeyard.wire.errors import InvalidArgument, ShapeyardError, Unauthenticated, for_http_status, validation_message
from shapeyard.wire.routes import WORKER_TOKEN_HEADER


def error_response(error: ShapeyardError) -> JSONResponse:
    return JSONResponse(error.body().model_dump(), status_code=error.http_status)


def install_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, as `{"error": {"code", "message", "status"}}`."""

    @app.exception_handler(ShapeyardError)
    async def _shapeyard(_: Request, exc: ShapeyardError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(InvalidArgument(validation_message(exc.errors())))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(for_http_status(exc.status_code, str(exc.detail)))


def gateway_only(token: str) -> Callable[[Request], Awaitable[None]]:
    """The dependency of a worker's routes: only requests that carry the worker's token (the gateway adds it) get
    through. A coroutine, so that FastAPI checks it on the event loop rather than in a thread per request."""

    async def check_token(request: Request) -> None:
        if token and not secrets.compare_digest(request.headers.get(WORKER_TOKEN_HEADER, ""), token):
            raise Unauthenticated("this worker only answers requests that come through the shapeyard gateway")

    return check_token


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """A wire model as JSON, unset (None) fields left out as protojson does, serialised once by pydantic."""
    return Response(model.model_dump_json(exclude_none=True), status_code, media_type="application/json")
