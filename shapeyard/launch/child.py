"""The worker side of the local launcher: what every launched worker process does at start."""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from pathlib import Path
from typing import TypeVar

import torch

from shapeyard.wire.worker import WorkerSpec

S = TypeVar("S", bound=WorkerSpec)


def exit_with_parent() -> None:
    """Workers are children of the server: when it is gone, so are they (no orphans holding memory and ports)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def start_worker(spec_type: type[S], description: str) -> S:
    """The spec the launcher wrote (`--spec <file>`), with logging, threads and the parent watch set up."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--spec", required=True, help="the worker spec JSON written by the launcher")
    spec = spec_type.model_validate_json(Path(parser.parse_args().spec).read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    exit_with_parent()
    torch.set_num_threads(spec.threads)
    return spec
