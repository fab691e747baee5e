"""What every worker process does at start: read the launcher's file, watch its parent, keep freed memory.

No FastAPI or torch here: the trainer's compute process and validation's smoke step import this too.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import threading
import time
from pathlib import Path
from typing import TypeVar

from shapeyard.wire.worker import WorkerLaunch, WorkerSpec

S = TypeVar("S", bound=WorkerSpec)
# glibc's mallopt parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 << 20  # the most glibc accepts on 64-bit
TRIM_THRESHOLD = 1 << 30


def exit_with_parent() -> None:
    """Workers are children of the server: when it is gone, so are they (no orphans holding memory and ports)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def retain_freed_memory() -> None:
    """Let glibc's malloc keep the memory a training step frees, for the next step to reuse.

    By default glibc serves large blocks with mmap and hands the top of its heap back to the kernel whenever more
    than a (moving) threshold of it is free. A training step frees most of its activations at its end, so the next
    step faults every page back in: 2,000-7,000 page faults and 3-16 ms of kernel time per step of the tiny model
    (~150 ms), measured. With fixed thresholds, blocks up to 32 MiB come from the heap and up to 1 GiB of free heap
    is kept: the same steps fault almost no pages. The process's peak memory does not change, only its giving
    back. Without glibc (macOS, musl) this does nothing.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def release_freed_memory() -> None:
    """Hand the heap's free memory back to the kernel once: after loading, when a rank has dropped the whole
    checkpoint it read and kept only its shards, the retained heap would otherwise hold that copy's pages."""
    malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if malloc_trim is not None:
        malloc_trim(0)


def setup_process() -> None:
    """Logging to the worker's log (the launcher captures it), the parent watch and malloc's thresholds."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    exit_with_parent()
    retain_freed_memory()


def launch_path(description: str) -> Path:
    """The file the launcher wrote for this process (`--launch <file>`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--launch", required=True, type=Path, help="the worker-launch JSON written by the launcher")
    return parser.parse_args().launch


def read_launch(spec_type: type[S], path: Path) -> WorkerLaunch[S]:
    return WorkerLaunch[spec_type].model_validate_json(path.read_text())


def start_worker(spec_type: type[S], path: Path) -> WorkerLaunch[S]:
    """What the launcher wrote for this worker, with the process set up. Torch threads are the business of the
    process that runs torch (`process.threads`); a worker's HTTP process does not import torch at all."""
    launch = read_launch(spec_type, path)
    setup_process()
    return launch
