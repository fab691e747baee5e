"""Errors that cross layers. Each carries the gRPC-style status the control plane reports and its HTTP code.

Resolution, validation and storage raise these; the control plane turns them into
`{"error": {"code", "message", "status"}}` bodies, which the official SDK parses.
"""

from __future__ import annotations

from typing import Any


class ShapeyardError(Exception):
    status = "UNKNOWN"
    grpc_code = 2
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


def validation_message(errors: list[dict[str, Any]], what: str = "request") -> str:
    """Pydantic validation errors as one line naming each bad field."""
    problems = []
    for item in errors:
        location = ".".join(str(part) for part in item["loc"] if part not in ("body", "query", "path"))
        problems.append(f"{location or 'body'}: {item['msg']}")
    return f"invalid {what}: " + "; ".join(problems)
