"""What every worker process does at start: read the launcher's file, watch its parent, keep freed memory.

No FastAPI or torch here: the trainer's compute process and validation's smoke step import this too.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import sys
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


def launch_argument(description: str) -> Path | None:
    """`--launch <file>`: the file the launcher wrote for this process; None for `--warm`, a process started
    before its job (see `await_launch`)."""
    parser = argparse.ArgumentParser(description=description)
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--launch", type=Path, help="the worker-launch JSON written by the launcher")
    given.add_argument("--warm", action="store_true", help="wait for the launch file's path on stdin")
    return parser.parse_args().launch


def await_launch() -> Path:
    """A warm process has imported its modules and waits here for the path the launcher writes to its stdin once
    it has a job for it."""
    return Path(sys.stdin.readline().strip())


def launch_path(description: str) -> Path:
    return launch_argument(description) or await_launch()


def read_launch(spec_type: type[S], path: Path) -> WorkerLaunch[S]:
    return WorkerLaunch[spec_type].model_validate_json(path.read_text())


def enter_launch(launch: WorkerLaunch) -> None:
    """Move this process's output to the log the launcher named (a warm process was started before there was
    one) and into the worker's directory."""
    if launch.process.log_file is not None:
        log = os.open(launch.process.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(log, sys.stdout.fileno())
        os.dup2(log, sys.stderr.fileno())
        os.close(log)
    os.chdir(launch.spec.work_dir)


def start_worker(spec_type: type[S], path: Path) -> WorkerLaunch[S]:
    """What the launcher wrote for this worker, with the process set up. Torch threads are the business of the
    process that runs torch (`process.threads`); a worker's HTTP process does not import torch at all."""
    launch = read_launch(spec_type, path)
    enter_launch(launch)
    setup_process()
    return launch
