"""The worker side of the local launcher: what every launched worker process does at start."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from fastapi import Request

from shapeyard.errors import Unauthenticated
from shapeyard.wire.worker import WORKER_TOKEN_HEADER, WorkerSpec

S = TypeVar("S", bound=WorkerSpec)


def exit_with_parent() -> None:
    """Workers are children of the server: when it is gone, so are they (no orphans holding memory and ports)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def setup_process() -> None:
    """Logging to the worker's log (the launcher captures it) and the parent watch."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    exit_with_parent()


def start_worker(spec_type: type[S], description: str) -> S:
    """The spec the launcher wrote (`--spec <file>`), with the process set up. Torch threads are the business of
    the process that runs torch (`spec.threads`); a worker's HTTP process does not import torch at all."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--spec", required=True, help="the worker spec JSON written by the launcher")
    spec = spec_type.model_validate_json(Path(parser.parse_args().spec).read_text())
    setup_process()
    return spec


def gateway_only(token: str) -> Callable[[Request], Awaitable[None]]:
    """The dependency of a worker's routes: only requests that carry the worker's token (the gateway adds it) get
    through. A coroutine, so that FastAPI checks it on the event loop rather than in a thread per request."""

    async def check_token(request: Request) -> None:
        if token and not secrets.compare_digest(request.headers.get(WORKER_TOKEN_HEADER, ""), token):
            raise Unauthenticated("this worker only answers requests that come through the shapeyard gateway")

    return check_token
