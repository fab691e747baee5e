"""pageSize / pageToken paging. Tokens are opaque to clients (an offset, base64-encoded)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TypeVar

from shapeyard.wire.errors import InvalidArgument

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


def _offset(token: str) -> int:
    if not token:
        return 0
    try:
        return int(base64.urlsafe_b64decode(token.encode()).decode())
    except ValueError:
        raise InvalidArgument(f"pageToken {token!r} is not a token this server issued") from None


def paginate(items: Sequence[T], page_size: int, page_token: str) -> tuple[list[T], str]:
    if page_size < 0:
        raise InvalidArgument(f"pageSize must not be negative, got {page_size}")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    start = _offset(page_token)
    end = start + size
    token = base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(items) else ""
    return list(items[start:end]), token
