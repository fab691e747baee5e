"""The tinker client's sessions at the server root, kept on the control plane and pruned as they go idle.

A session belongs to the account that opened it. For each job its models run on, it holds the session opened on
that job's worker and how many models it created there (the worker orders a session's models by that count).
`create_model` at the root is answered by a future of the control plane (it may start a job first); a finished one
stays retrievable for `RESULT_SECONDS`, as a worker's results do.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shapeyard.wire.errors import NotFound

SESSION_IDLE_SECONDS = 3600.0  # no heartbeat and no call for this long: the session is forgotten
RESULT_SECONDS = 900.0


@dataclass
class WorkerLink:
    session_id: str  # the session on the job's worker
    models: int = 0  # models created there so far


@dataclass
class Session:
    account: str
    seen: float
    workers: dict[str, WorkerLink] = field(default_factory=dict)  # job id -> its link


class TinkerSessions:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        self.futures: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._finished: dict[str, float] = {}  # request id -> when its future finished

    def open(self, account: str) -> str:
        self.prune()
        session_id = f"sess-{secrets.token_hex(8)}"
        self.sessions[session_id] = Session(account, self.clock())
        return session_id

    def get(self, session_id: str, account: str) -> Session:
        """The caller's session, marked as seen; another account's is reported as absent."""
        session = self.sessions.get(session_id)
        if session is None or session.account != account:
            raise NotFound(f"session {session_id!r} not found; call create_session first")
        session.seen = self.clock()
        return session

    def add_future(self, future: asyncio.Future[dict[str, Any]]) -> str:
        self.prune()
        request_id = f"sl-{secrets.token_hex(8)}"
        self.futures[request_id] = future
        future.add_done_callback(lambda _: self._finished.__setitem__(request_id, self.clock()))
        return request_id

    def prune(self) -> None:
        now = self.clock()
        for session_id in [key for key, session in self.sessions.items() if now - session.seen > SESSION_IDLE_SECONDS]:
            del self.sessions[session_id]
        for request_id in [key for key, at in self._finished.items() if now - at > RESULT_SECONDS]:
            del self._finished[request_id]
            self.futures.pop(request_id, None)
