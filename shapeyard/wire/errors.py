"""Errors on the wire. Each carries the gRPC-style status the official clients read and its HTTP code.

Every shapeyard server (control plane and workers) answers an error as `{"error": {"code", "message", "status"}}`
(`ErrorBody`); the official SDKs parse exactly this. Code below the wire raises these classes, and a relayed
answer becomes one again with the status and code it was sent with (`ShapeyardError.from_response`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError


class ErrorDetail(BaseModel):
    code: int
    message: str
    status: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class ShapeyardError(Exception):
    status = "UNKNOWN"
    grpc_code = 2
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> ErrorBody:
        return ErrorBody(error=ErrorDetail(code=self.grpc_code, message=self.message, status=self.status))

    @staticmethod
    def from_response(http_status: int, content: bytes) -> ShapeyardError:
        """A server's error answer as an error again: its status and code as sent, or its text if it sent no
        `ErrorBody`."""
        try:
            detail = ErrorBody.model_validate_json(content).error
        except ValidationError:
            detail = ErrorDetail(code=2, message=content.decode(errors="replace"), status="UNKNOWN")
        error = ShapeyardError(detail.message)
        error.status, error.grpc_code, error.http_status = detail.status, detail.code, http_status
        return error


class InvalidArgument(ShapeyardError):
    status, grpc_code, http_status = "INVALID_ARGUMENT", 3, 400


class FailedPrecondition(ShapeyardError):
    status, grpc_code, http_status = "FAILED_PRECONDITION", 9, 400


class NotFound(ShapeyardError):
    status, grpc_code, http_status = "NOT_FOUND", 5, 404


class AlreadyExists(ShapeyardError):
    status, grpc_code, http_status = "ALREADY_EXISTS", 6, 409


class Unauthenticated(ShapeyardError):
    status, grpc_code, http_status = "UNAUTHENTICATED", 16, 401


class PermissionDenied(ShapeyardError):
    status, grpc_code, http_status = "PERMISSION_DENIED", 7, 403


class HotLoadInProgress(ShapeyardError):
    """425 Too Early: the clients retry it (the fireworks sampler every 5 s, up to 10 times)."""

    status, grpc_code, http_status = "UNAVAILABLE", 14, 425


class Unavailable(ShapeyardError):
    """The request is fine but the hardware it needs is not here."""

    status, grpc_code, http_status = "UNAVAILABLE", 14, 503


# HTTP errors raised by the web framework itself (unknown route, wrong method), as gRPC statuses.
HTTP_STATUSES = {
    400: ("INVALID_ARGUMENT", 3),
    401: ("UNAUTHENTICATED", 16),
    403: ("PERMISSION_DENIED", 7),
    404: ("NOT_FOUND", 5),
    405: ("UNIMPLEMENTED", 12),
    409: ("ALREADY_EXISTS", 6),
}


def for_http_status(http_status: int, message: str) -> ShapeyardError:
    error = ShapeyardError(message)
    error.http_status = http_status
    error.status, error.grpc_code = HTTP_STATUSES.get(http_status, ("UNKNOWN", 2))
    return error


def validation_message(errors: list[dict[str, Any]], what: str = "request") -> str:
    """Pydantic validation errors as one line naming each bad field."""
    problems = []
    for item in errors:
        location = ".".join(str(part) for part in item["loc"] if part not in ("body", "query", "path"))
        problems.append(f"{location or 'body'}: {item['msg']}")
    return f"invalid {what}: " + "; ".join(problems)
