"""The engine: ordering and futures between the HTTP layer and the backend.

- One compute thread runs every request of the job, one at a time.
- A model's requests run strictly in seq_id order: early arrivals wait until the gap before them is filled.
- A request re-sent with the same (model, seq_id) gets the same request id and runs once.
- Every submission returns a request id at once; `wait` long-polls its result (or its failure, with a category:
  `user` for bad input, `server` for anything else).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError

from shapeyard.errors import ShapeyardError, validation_message
from shapeyard.wire.trainer import ErrorCategory, RequestFailed

log = logging.getLogger("shapeyard.trainer")
RESULT_TTL_SECONDS = 900.0
Work = Callable[[], BaseModel]


@dataclass
class _ModelQueue:
    next_seq: int = 1
    waiting: dict[int, tuple[str, Work]] = field(default_factory=dict)


def _encode(answer: BaseModel) -> bytes:
    """JSON once, here. Python mode keeps NaN as NaN (JSON mode would quietly write null) so that it is refused:
    the official clients parse results with orjson, which rejects NaN."""
    try:
        return json.dumps(answer.model_dump(exclude_none=True), allow_nan=False).encode()
    except ValueError:
        raise RuntimeError("the result holds NaN or infinity, which JSON clients cannot read") from None


def _failure(message: str, category: ErrorCategory) -> bytes:
    return json.dumps(RequestFailed(error=message, category=category).model_dump(mode="json")).encode()


class Engine:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: queue.Queue[tuple[str, Work] | None] = queue.Queue()
        self._futures: dict[str, Future[bytes]] = {}
        self._done_at: dict[str, float] = {}
        self._queues: dict[str, _ModelQueue] = {}
        self._seen: dict[tuple[str, int], str] = {}
        self._thread = threading.Thread(target=self._run, name="shapeyard-compute", daemon=True)
        self._thread.start()

    def submit(self, work: Work, *, model_id: str | None = None, seq_id: int | None = None) -> str:
        """Queue `work`; with a model and seq_id it runs after that model's earlier seq_ids."""
        with self._lock:
            self._expire()
            if model_id is not None and seq_id is not None:
                key = (model_id, seq_id)
                if key in self._seen:
                    return self._seen[key]
            request_id = f"req-{secrets.token_hex(8)}"
            self._futures[request_id] = Future()
            if model_id is None or seq_id is None:
                self._ready.put((request_id, work))
                return request_id
            self._seen[key] = request_id
            lane = self._queues.setdefault(model_id, _ModelQueue())
            if seq_id < lane.next_seq:
                self._ready.put((request_id, work))  # an old seq_id never seen before: run it in arrival order
                return request_id
            lane.waiting[seq_id] = (request_id, work)
            while lane.next_seq in lane.waiting:
                self._ready.put(lane.waiting.pop(lane.next_seq))
                lane.next_seq += 1
            return request_id

    def known(self, request_id: str) -> bool:
        with self._lock:
            return request_id in self._futures

    async def wait(self, request_id: str, timeout: float) -> bytes | None:
        """The JSON result of a request, or None if it is still running after `timeout` seconds."""
        with self._lock:
            future = self._futures[request_id]
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout)
        except TimeoutError:
            return None

    def _run(self) -> None:
        while True:
            item = self._ready.get()
            if item is None:
                return
            request_id, work = item
            try:
                # Serialised once, here; NaN is refused because the clients parse with orjson, which rejects it.
                result = _encode(work())
            except ShapeyardError as exc:
                result = _failure(exc.message, ErrorCategory.USER)
            except ValidationError as exc:
                result = _failure(validation_message(exc.errors()), ErrorCategory.USER)
            except Exception as exc:
                log.exception("request %s failed", request_id)
                result = _failure(f"{type(exc).__name__}: {exc}", ErrorCategory.SERVER)
            with self._lock:
                self._done_at[request_id] = time.monotonic()
                future = self._futures[request_id]
            future.set_result(result)

    def _expire(self) -> None:
        cutoff = time.monotonic() - RESULT_TTL_SECONDS
        for request_id in [rid for rid, at in self._done_at.items() if at < cutoff]:
            del self._done_at[request_id]
            self._futures.pop(request_id, None)

    def stop(self) -> None:
        self._ready.put(None)
        self._thread.join(timeout=30)
