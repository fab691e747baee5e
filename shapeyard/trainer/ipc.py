"""The link between a trainer worker's two processes: the HTTP process and the compute process.

The HTTP process (`shapeyard.trainer.worker`) orders requests and keeps their futures (`shapeyard.trainer.sequencer`);
the compute process (`shapeyard.trainer.compute`) owns the model and runs one call after another. They are separate
processes so that request handling never competes with the training step for the GIL: with the tiny model on CPU a
step is mostly Python dispatch, and an event loop in the same process slowed it measurably.

The worker's launch (as JSON), then calls, go down a socket pair as pickled `(request_id, Call)`; each comes back as
a `Reply`, in the same order.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from pydantic import BaseModel

from shapeyard.wire.errors import ShapeyardError
from shapeyard.wire.trainer import ErrorCategory, Op, RequestFailed
from shapeyard.wire.worker import TrainerWorkerSpec, WorkerLaunch

log = logging.getLogger("shapeyard.trainer")
READY = "ready"  # the compute process's first message: the model is loaded
STOP_SECONDS = 15.0


@dataclass(frozen=True)
class Call:
    """One protocol operation for the compute process: its name, the request body as the client sent it (validated
    there, in order), and whether the client is the plain tinker client (it names checkpoints differently)."""

    op: Op
    body: dict[str, Any]
    tinker: bool = False


@dataclass(frozen=True)
class Reply:
    """How a call ended: a result, an error that is the client's to fix, or a fault of ours."""

    request_id: str
    result: BaseModel | None = None
    error: ShapeyardError | None = None
    fault: str | None = None

    def encode(self) -> bytes:
        """The retrieve_future body: the result, or `{error, category}`."""
        if self.error is not None:
            return _failure(self.error.message, ErrorCategory.USER)
        if self.fault is not None:
            return _failure(self.fault, ErrorCategory.SERVER)
        assert self.result is not None
        try:
            # Python mode keeps NaN as NaN (JSON mode would quietly write null) so that it is refused: the official
            # clients parse results with orjson, which rejects NaN.
            return json.dumps(self.result.model_dump(exclude_none=True), allow_nan=False).encode()
        except ValueError:
            message = "RuntimeError: the result holds NaN or infinity, which JSON clients cannot read"
            return _failure(message, ErrorCategory.SERVER)

    def unwrap(self) -> BaseModel:
        """The result of a call answered in the same HTTP request: errors raise, to become HTTP errors."""
        if self.error is not None:
            raise self.error
        if self.fault is not None:
            raise RuntimeError(self.fault)
        assert self.result is not None
        return self.result


def _failure(message: str, category: ErrorCategory) -> bytes:
    return json.dumps(RequestFailed(error=message, category=category).model_dump(mode="json")).encode()


class ComputeProcess:
    """The compute process, seen from the HTTP process: started with the worker's launch, fed calls in order."""

    def __init__(self, launch: WorkerLaunch[TrainerWorkerSpec]) -> None:
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shapeyard.trainer.compute", "--fd", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        self._socket = ours  # kept to shut down: that wakes the reply reader and ends the compute process's loop
        self._connection = Connection(os.dup(ours.fileno()))
        self._connection.send_bytes(launch.model_dump_json().encode())
        self._closing = False

    def wait_ready(self) -> None:
        """Block until the model is loaded; exit this process if the compute process died loading it."""
        try:
            message = self._connection.recv()
        except EOFError:
            message = None
        if message != READY:
            raise SystemExit(f"the compute process exited with code {self.process.wait()} while loading the model")
        log.info("compute process %d is ready", self.process.pid)

    def send(self, request_id: str, call: Call) -> None:
        self._connection.send((request_id, call))

    def deliver_replies(self, resolve: Callable[[Reply], None]) -> None:
        """Hand every reply to `resolve`, on a thread of its own. If the compute process dies, so does this one:
        the launcher then reports the job FAILED with the log, which holds the compute process's last words."""

        def read() -> None:
            while True:
                try:
                    reply = self._connection.recv()
                except (EOFError, OSError):
                    if self._closing:
                        return
                    log.error("the compute process exited with code %s", self.process.wait())
                    os._exit(1)
                resolve(reply)

        threading.Thread(target=read, name="shapeyard-replies", daemon=True).start()

    def stop(self) -> None:
        """Shutting the socket down ends the compute process's loop; it gets STOP_SECONDS to finish its call."""
        self._closing = True
        self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
