"""The sequencer: ordering and futures between the worker's HTTP process and its compute process.

- A model's requests are handed on strictly in seq_id order: early arrivals wait until the gap before them is
  filled. Everything is handed on from one thread, so the compute process receives calls in this order.
- A request re-sent with the same (model, seq_id) gets the same request id and is handed on once.
- Every submission returns a request id at once; `wait` long-polls its reply.
"""

from __future__ import annotations

import asyncio
import queue
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from shapeyard.trainer.ipc import Call, Reply

RESULT_TTL_SECONDS = 900.0
Send = Callable[[str, Call], None]


@dataclass
class _ModelQueue:
    next_seq: int = 1
    waiting: dict[int, tuple[str, Call]] = field(default_factory=dict)


class Sequencer:
    def __init__(self, send: Send) -> None:
        """`send(request_id, call)` hands a call on (to the compute process); its reply comes to `resolve`."""
        self._send = send
        self._lock = threading.Lock()
        self._ready: queue.Queue[tuple[str, Call] | None] = queue.Queue()
        self._futures: dict[str, Future[Reply]] = {}
        self._done_at: dict[str, float] = {}
        self._queues: dict[str, _ModelQueue] = {}
        self._seen: dict[tuple[str, int], str] = {}
        # a thread of its own, so that a full socket to a busy compute process never blocks the event loop
        self._thread = threading.Thread(target=self._hand_on, name="shapeyard-calls", daemon=True)
        self._thread.start()

    def submit(self, call: Call, *, model_id: str | None = None, seq_id: int | None = None) -> str:
        """Queue `call`; with a model and seq_id it is handed on after that model's earlier seq_ids."""
        with self._lock:
            self._expire()
            if model_id is not None and seq_id is not None:
                key = (model_id, seq_id)
                if key in self._seen:
                    return self._seen[key]
            request_id = f"req-{secrets.token_hex(8)}"
            self._futures[request_id] = Future()
            if model_id is None or seq_id is None:
                self._ready.put((request_id, call))
                return request_id
            self._seen[key] = request_id
            lane = self._queues.setdefault(model_id, _ModelQueue())
            if seq_id < lane.next_seq:
                self._ready.put((request_id, call))  # an old seq_id never seen before: run it in arrival order
                return request_id
            lane.waiting[seq_id] = (request_id, call)
            while lane.next_seq in lane.waiting:
                self._ready.put(lane.waiting.pop(lane.next_seq))
                lane.next_seq += 1
            return request_id

    def resolve(self, reply: Reply) -> None:
        with self._lock:
            self._done_at[reply.request_id] = time.monotonic()
            future = self._futures.get(reply.request_id)
        if future is not None:
            future.set_result(reply)

    def known(self, request_id: str) -> bool:
        with self._lock:
            return request_id in self._futures

    async def wait(self, request_id: str, timeout: float | None) -> Reply | None:
        """The reply to a request, or None if it is still running after `timeout` seconds."""
        with self._lock:
            future = self._futures[request_id]
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout)
        except TimeoutError:
            return None

    def _hand_on(self) -> None:
        while (item := self._ready.get()) is not None:
            self._send(*item)

    def _expire(self) -> None:
        cutoff = time.monotonic() - RESULT_TTL_SECONDS
        for request_id in [rid for rid, at in self._done_at.items() if at < cutoff]:
            del self._done_at[request_id]
            self._futures.pop(request_id, None)

    def stop(self) -> None:
        self._ready.put(None)
        self._thread.join(timeout=30)
