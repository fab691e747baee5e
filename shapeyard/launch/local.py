"""The default launcher: each worker is a subprocess of the server, on this machine's devices.

CPU workers take one of `cpu_slots` slots (each runs torch with `threads` threads; on a small machine one thread
per worker is much faster than two fighting over the cores). CUDA workers get whole GPUs of the shape's type,
pinned with CUDA_VISIBLE_DEVICES. Placements that need more than one node, or devices this machine lacks, are
refused with a message that names what is missing. Each worker starts from `<work dir>/worker-launch.json`.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shapeyard.launch.base import Placement, WorkerState, WorkerStatus
from shapeyard.launch.hardware import LocalHardware, detect
from shapeyard.wire.errors import FailedPrecondition
from shapeyard.wire.routes import WORKER_TOKEN_HEADER
from shapeyard.wire.shapes import DeviceKind, SmokeResult
from shapeyard.wire.worker import Listener, TrainerWorkerSpec, WorkerLaunch, WorkerProcess, WorkerSpec

log = logging.getLogger("shapeyard.launch")
LOG_TAIL_LINES = 25


@dataclass
class _Worker:
    process: subprocess.Popen
    listener: Listener
    log_path: Path
    kind: DeviceKind
    health_url: str
    gpus: list[int] = field(default_factory=list)
    ready: bool = False  # once healthz answered, only the process is watched


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class LocalLauncher:
    def __init__(self, cpu_slots: int, threads: int = 1, hardware: LocalHardware | None = None) -> None:
        self.cpu_slots = cpu_slots
        self.threads = threads
        self.hardware = hardware or detect()
        self._workers: dict[str, _Worker] = {}
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=2.0)

    def check(self, placement: Placement) -> None:
        needed = f"the shape needs {placement.describe()}"
        if placement.nodes > 1:
            raise FailedPrecondition(
                f"{needed}; the local launcher runs on one machine. Run multi-node shapes with a cluster launcher"
            )
        if placement.replicas > 1:
            raise FailedPrecondition(
                f"trainerReplicaCount {placement.replicas}: the local launcher runs one trainer replica per job"
            )
        if placement.accelerator.kind == DeviceKind.CPU:
            if placement.memory_gib > self.hardware.memory_gib:
                raise FailedPrecondition(
                    f"{needed} with {placement.memory_gib:.1f} GiB of memory; this machine has "
                    f"{self.hardware.memory_gib:.1f} GiB"
                )
            return
        name = placement.accelerator.display_name or placement.accelerator.accelerator_type
        matching = [gpu for gpu in self.hardware.gpus_of(name) if gpu.memory_gib >= placement.memory_gib]
        if len(matching) < placement.count:
            found = ", ".join(gpu.name for gpu in self.hardware.gpus) or "no CUDA devices"
            raise FailedPrecondition(
                f"{needed}; this machine has {len(matching)} matching device(s) ({found}). "
                "A GPU shape never runs on the CPU instead"
            )

    def _free_gpus(self, placement: Placement) -> list[int]:
        taken = {index for worker in self._workers.values() for index in worker.gpus}
        name = placement.accelerator.display_name or placement.accelerator.accelerator_type
        return [gpu.index for gpu in self.hardware.gpus_of(name) if gpu.index not in taken]

    def _cpu_workers(self) -> int:
        return sum(1 for worker in self._workers.values() if worker.kind == DeviceKind.CPU)

    def has_capacity(self, placement: Placement) -> bool:
        with self._lock:
            if placement.accelerator.kind == DeviceKind.CPU:
                return self._cpu_workers() < self.cpu_slots
            return len(self._free_gpus(placement)) >= placement.count

    def capacity_message(self, placement: Placement) -> str:
        if placement.accelerator.kind == DeviceKind.CPU:
            return f"waiting for a CPU worker slot ({self._cpu_workers()} of {self.cpu_slots} in use)"
        return f"waiting for {placement.describe()} to be free"

    def _environment(self, gpus: list[int]) -> dict[str, str]:
        return {
            **os.environ,
            "OMP_NUM_THREADS": str(self.threads),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # device numbers as nvidia-smi prints them (see launch.hardware)
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)),
        }

    def _gpus_for(self, placement: Placement) -> list[int]:
        return [] if placement.accelerator.kind == DeviceKind.CPU else self._free_gpus(placement)[: placement.count]

    def _write_launch(self, spec: WorkerSpec, process: WorkerProcess, file_name: str) -> Path:
        spec.work_dir.mkdir(parents=True, exist_ok=True)
        path = spec.work_dir / file_name
        path.write_text(WorkerLaunch(spec=spec, process=process).model_dump_json(indent=2))
        return path

    def smoke(self, spec: TrainerWorkerSpec, placement: Placement, timeout: float = 900.0) -> SmokeResult | str:
        """Run the smoke step in a subprocess on this machine's devices (the placement passed `check`); a string
        says why it cannot run now."""
        gpus = self._gpus_for(placement)
        if len(gpus) < placement.count and placement.accelerator.kind != DeviceKind.CPU:
            return f"the {placement.describe()} it needs are busy"
        process = WorkerProcess(device="cuda" if gpus else "cpu", threads=self.threads)
        path = self._write_launch(spec, process, "smoke-launch.json")
        done = subprocess.run(
            [sys.executable, "-m", "shapeyard.trainer.smoke", "--launch", str(path)],
            capture_output=True,
            text=True,
            env=self._environment(gpus),
            timeout=timeout,
        )
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            tail = "\n".join(done.stderr.strip().splitlines()[-LOG_TAIL_LINES:])
            return SmokeResult(
                device=process.device,
                peak_memory_gib=0.0,
                step_seconds=0.0,
                tokens=spec.max_context_length,
                passed=False,
                detail=f"the smoke step exited with code {done.returncode}:\n{tail}",
            )
        return SmokeResult.model_validate_json(lines[-1])

    def start(self, name: str, spec: WorkerSpec, placement: Placement) -> None:
        with self._lock:
            gpus = self._gpus_for(placement)
            listener = Listener(port=free_port(), token=secrets.token_hex(16))
            process = WorkerProcess(device="cuda" if gpus else "cpu", threads=self.threads, listener=listener)
            path = self._write_launch(spec, process, "worker-launch.json")
            log_path = spec.work_dir / "worker.log"
            with log_path.open("a") as log_file:
                child = subprocess.Popen(
                    [sys.executable, "-m", spec.module, "--launch", str(path)],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=self._environment(gpus),
                    cwd=spec.work_dir,
                )
            health = f"{listener.url}{spec.health_path}"
            self._workers[name] = _Worker(child, listener, log_path, placement.accelerator.kind, health, gpus)
        log.info("started worker for %s (pid %d, %s)", name, child.pid, listener.url)

    def status(self, name: str) -> WorkerStatus | None:
        worker = self._workers.get(name)
        if worker is None:
            return None
        code = worker.process.poll()
        if code is not None:
            return WorkerStatus(WorkerState.EXITED, f"worker exited with code {code}:\n{log_tail(worker.log_path)}")
        if not worker.ready:
            try:
                response = self._http.get(worker.health_url, headers={WORKER_TOKEN_HEADER: worker.listener.token})
                worker.ready = response.status_code == 200
            except httpx.HTTPError:
                pass
        return WorkerStatus(WorkerState.READY if worker.ready else WorkerState.STARTING)

    def running(self, prefix: str) -> list[str]:
        with self._lock:
            return [name for name in self._workers if name.startswith(prefix)]

    def listener(self, name: str) -> Listener | None:
        worker = self._workers.get(name)
        return worker.listener if worker else None

    def stop(self, name: str) -> None:
        with self._lock:
            worker = self._workers.pop(name, None)
        if worker is None:
            return
        worker.process.terminate()
        try:
            worker.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
        log.info("stopped worker for %s", name)

    def close(self) -> None:
        for name in list(self._workers):
            self.stop(name)
        self._http.close()
