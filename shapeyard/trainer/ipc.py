"""The link between a trainer worker's two processes: the HTTP process and the compute process.

The HTTP process (`shapeyard.trainer.worker`) orders requests and keeps their futures (`shapeyard.trainer.sequencer`);
the compute process (`shapeyard.trainer.compute`) owns the model and runs one call after another. They are separate
processes so that request handling never competes with the training step for the GIL: with the tiny model on CPU a
step is mostly Python dispatch, and an event loop in the same process slowed it measurably.

The compute process is a world of ranks (`shapeyard.trainer.world`); its rank 0 connects to the HTTP process over
loopback, proving itself with the launch's token, and says READY once every rank has loaded the model. Calls go
down that link as pickled `(request_id, Call)`; each comes back as a `Reply`, in the same order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import connection
from pathlib import Path
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
    """The compute world, seen from the HTTP process: its first agent (or only process) is started here, or was
    started warm beforehand; rank 0 connects back over loopback with the launch's token, and calls are fed to it in
    order."""

    def __init__(
        self, launch: WorkerLaunch[TrainerWorkerSpec], launch_file: Path, warm: subprocess.Popen | None = None
    ) -> None:
        link = launch.process.compute
        assert link is not None, "the launcher gives a trainer a link for its rank 0"
        self._listener = connection.Listener((link.host, link.port), authkey=link.token.encode())
        if warm is None:
            # its own session, so that stopping it reaches the agent and not this process
            self.process = subprocess.Popen(launch.process.compute_command, start_new_session=True)
        else:
            assert launch.process.world.size == 1, "a warm compute process is one rank"
            assert warm.stdin is not None
            warm.stdin.write(f"{launch_file}\n")
            warm.stdin.close()
            self.process = warm
        self._connection: connection.Connection | None = None
        self._socket: socket.socket | None = None
        self._closing = False

    @staticmethod
    def start_warm() -> subprocess.Popen:
        """A compute process of one rank started before its job: it imports torch, transformers and peft, then
        waits for its launch file's path on stdin."""
        command = [sys.executable, "-m", TrainerWorkerSpec.compute_module, "--warm"]
        return subprocess.Popen(command, stdin=subprocess.PIPE, text=True, start_new_session=True)

    def _accept(self) -> connection.Connection | None:
        """Rank 0's connection, or None if the compute process (or agent) exited first."""
        accepted: list[connection.Connection] = []
        waiter = threading.Thread(target=lambda: accepted.append(self._listener.accept()), daemon=True)
        waiter.start()
        while waiter.is_alive() and self.process.poll() is None:
            waiter.join(0.2)
        waiter.join(0.2)
        return accepted[0] if accepted else None

    def wait_ready(self) -> None:
        """Block until the model is loaded on every rank; exit this process if the compute world died loading it."""
        self._connection = self._accept()
        message = None
        if self._connection is not None:
            # kept to shut down: that wakes the reply reader and ends rank 0's loop
            self._socket = socket.socket(fileno=os.dup(self._connection.fileno()))
            with contextlib.suppress(EOFError):
                message = self._connection.recv()
        self._listener.close()
        if message != READY:
            raise SystemExit(f"the compute process exited with code {self.process.wait()} while loading the model")
        log.info("compute process %d is ready", self.process.pid)

    def send(self, request_id: str, call: Call) -> None:
        assert self._connection is not None
        self._connection.send((request_id, call))

    def deliver_replies(self, resolve: Callable[[Reply], None]) -> None:
        """Hand every reply to `resolve`, on a thread of its own. If the compute world dies (the link breaks or the
        first agent exits), so does this process: the launcher then reports the job FAILED with the log, which
        holds the failed rank's last words."""
        assert self._connection is not None
        reader = self._connection

        def read() -> None:
            while True:
                try:
                    reply = reader.recv()
                except (EOFError, OSError):
                    if self._closing:
                        return
                    log.error("the compute process exited with code %s", self.process.wait())
                    os._exit(1)
                resolve(reply)

        def watch() -> None:
            # A rank can die while rank 0 waits for the next call and notices nothing: its agent then exits
            code = self.process.wait()
            if not self._closing:
                log.error("the compute process exited with code %s", code)
                os._exit(1)

        threading.Thread(target=read, name="shapeyard-replies", daemon=True).start()
        threading.Thread(target=watch, name="shapeyard-compute-watch", daemon=True).start()

    def stop(self) -> None:
        """Shutting the link down ends rank 0's loop, and it tells the other ranks; they get STOP_SECONDS to finish
        their call. An agent told to stop stops its ranks first."""
        self._closing = True
        if self._socket is not None:
            self._socket.shutdown(socket.SHUT_RDWR)
            self._socket.close()
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
