"""The default launcher: each worker is a subprocess of the server, on this machine's devices.

A trainer's world (`trainerReplicaCount x nodeCount x acceleratorCount` ranks) runs under torch's elastic
launcher (`shapeyard.launch.torchrun`). CPU ranks each take one of `cpu_slots` slots (each runs torch with
`threads` threads; on a small machine one thread per process is much faster than two fighting over the cores).
CUDA ranks get whole GPUs of the shape's type, pinned with CUDA_VISIBLE_DEVICES. Placements that need devices
this machine lacks, or GPUs on more than one node, are refused with a message that names what is missing.

A CPU shape with `nodeCount` > 1 runs here as a test topology: one agent per node, all on this machine, meeting
through the c10d rendezvous on loopback exactly as agents on separate machines would. Each worker starts from
`<work dir>/worker-launch.json`; every process of a worker writes to `<work dir>/worker.log`.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shapeyard.launch.base import Placement, WorkerState, WorkerStatus
from shapeyard.launch.hardware import LocalHardware, detect
from shapeyard.launch.torchrun import compute_command
from shapeyard.wire.errors import FailedPrecondition
from shapeyard.wire.routes import WORKER_TOKEN_HEADER
from shapeyard.wire.shapes import DeviceKind, SmokeResult
from shapeyard.wire.worker import Listener, TrainerWorkerSpec, WorkerLaunch, WorkerProcess, WorkerSpec, WorldSpec

log = logging.getLogger("shapeyard.launch")
LOG_TAIL_LINES = 25
WARM_REFILL_SECONDS = 10.0
STOP_SECONDS = 20.0  # an agent told to stop gives its ranks up to 15 s before it kills them


@dataclass
class _Worker:
    process: subprocess.Popen
    listener: Listener
    log_path: Path
    kind: DeviceKind
    health_url: str
    slots: int  # CPU slots it takes: its ranks
    gpus: list[int] = field(default_factory=list)
    agents: list[subprocess.Popen] = field(default_factory=list)  # a trainer's agents of further nodes
    ready: bool = False  # once healthz answered, only the processes are watched

    def processes(self) -> list[subprocess.Popen]:
        return [self.process, *self.agents]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_world(agents: list[subprocess.Popen], timeout: float) -> list[int]:
    """The agents' exit codes. Once one has exited the others get STOP_SECONDS: an agent whose peer failed waits
    out torch's exit barrier (300 s) otherwise. Past `timeout`, or past their grace, they are stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(agent.poll() is None for agent in agents):
        if any(agent.poll() is not None for agent in agents):
            deadline = min(deadline, time.monotonic() + STOP_SECONDS)
        time.sleep(0.1)
    for agent in agents:
        if agent.poll() is None:
            agent.terminate()
    return [agent.wait() for agent in agents]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class LocalLauncher:
    def __init__(self, cpu_slots: int, threads: int = 1, hardware: LocalHardware | None = None, warm: int = 0) -> None:
        self.cpu_slots = cpu_slots
        self.threads = threads
        self.hardware = hardware or detect()
        self.warm = warm if cpu_slots > 0 else 0
        self._workers: dict[str, _Worker] = {}
        self._warm: list[subprocess.Popen] = []
        self._closed = False
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=2.0)
        self._refill()

    # --- warm trainer workers ---------------------------------------------------------------------------------

    def _refill(self) -> None:
        """Keep `warm` trainer workers started ahead, their modules imported (torch, transformers, peft: most of
        a worker's start), each waiting for a one-rank CPU job's launch file on stdin."""
        self._warm = [process for process in self._warm if process.poll() is None]
        while len(self._warm) < self.warm:
            command = [sys.executable, "-m", TrainerWorkerSpec.module, "--warm"]
            self._warm.append(
                subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,  # until it has a job and its log
                    text=True,
                    env=self._environment([]),
                )
            )

    def _take_warm(self, spec: WorkerSpec, process: WorkerProcess) -> subprocess.Popen | None:
        """A warm worker for a one-rank CPU trainer, out of the pool; None if none fits or is alive."""
        alive = [warm for warm in self._warm if warm.poll() is None]
        if not alive or not isinstance(spec, TrainerWorkerSpec) or process.device != "cpu" or process.world.size > 1:
            return None
        self._warm.remove(alive[0])
        # the next one starts once this job has had the cores to itself for its start
        threading.Timer(WARM_REFILL_SECONDS, self._refill_locked).start()
        return alive[0]

    def _refill_locked(self) -> None:
        with self._lock:
            if not self._closed:
                self._refill()

    def check(self, placement: Placement) -> None:
        needed = f"the shape needs {placement.describe()}"
        ranks = placement.devices
        if placement.accelerator.kind == DeviceKind.CPU:
            if placement.memory_gib * ranks > self.hardware.memory_gib:
                raise FailedPrecondition(
                    f"{needed} with {placement.memory_gib:.1f} GiB of memory for each of {ranks} rank(s); this "
                    f"machine has {self.hardware.memory_gib:.1f} GiB"
                )
            if 0 < self.cpu_slots < ranks:  # no slots at all: a control plane alone, where jobs wait
                raise FailedPrecondition(
                    f"{needed}: {ranks} CPU ranks; this server runs at most {self.cpu_slots} (cpuWorkerSlots)"
                )
            return
        if placement.nodes > 1:
            raise FailedPrecondition(
                f"{needed}; the local launcher runs GPU shapes on one machine. A multi-node GPU shape runs with a "
                "cluster launcher (Kubernetes through Kubeflow Trainer, or Slurm)"
            )
        name = placement.accelerator.display_name or placement.accelerator.accelerator_type
        matching = [gpu for gpu in self.hardware.gpus_of(name) if gpu.memory_gib >= placement.memory_gib]
        if len(matching) < ranks:
            found = ", ".join(gpu.name for gpu in self.hardware.gpus) or "no CUDA devices"
            raise FailedPrecondition(
                f"{needed}; this machine has {len(matching)} matching device(s) ({found}). "
                "A GPU shape never runs on the CPU instead"
            )

    def _free_gpus(self, placement: Placement) -> list[int]:
        taken = {index for worker in self._workers.values() for index in worker.gpus}
        name = placement.accelerator.display_name or placement.accelerator.accelerator_type
        return [gpu.index for gpu in self.hardware.gpus_of(name) if gpu.index not in taken]

    def _cpu_slots_used(self) -> int:
        return sum(worker.slots for worker in self._workers.values() if worker.kind == DeviceKind.CPU)

    def has_capacity(self, placement: Placement) -> bool:
        with self._lock:
            if placement.accelerator.kind == DeviceKind.CPU:
                return self._cpu_slots_used() + placement.devices <= self.cpu_slots
            return len(self._free_gpus(placement)) >= placement.devices

    def capacity_message(self, placement: Placement) -> str:
        if placement.accelerator.kind == DeviceKind.CPU:
            return (
                f"waiting for {placement.devices} CPU worker slot(s) ({self._cpu_slots_used()} of {self.cpu_slots} "
                "in use)"
            )
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
        return [] if placement.accelerator.kind == DeviceKind.CPU else self._free_gpus(placement)[: placement.devices]

    @staticmethod
    def _world(placement: Placement, name: str) -> WorldSpec:
        """One agent per node, each with its node's ranks of every replica; on loopback when there are several."""
        return WorldSpec(
            nodes=placement.nodes,
            procs_per_node=placement.count * placement.replicas,
            replicas=placement.replicas,
            rendezvous=f"127.0.0.1:{free_port()}" if placement.nodes > 1 else "",
            run_id=name.replace("/", "-"),
        )

    def _process(
        self, spec: WorkerSpec, placement: Placement, gpus: list[int], name: str, launch_file: Path, module: str = ""
    ) -> WorkerProcess:
        """Devices and threads; for a trainer also its world, the link to its rank 0, and the command each node
        runs (`module` on every rank: the compute process, or validation's smoke step)."""
        device = "cuda" if gpus else "cpu"
        if not isinstance(spec, TrainerWorkerSpec):
            return WorkerProcess(device=device, threads=self.threads)
        world = self._world(placement, name)
        return WorkerProcess(
            device=device,
            threads=self.threads,
            world=world,
            compute=Listener(port=free_port(), token=secrets.token_hex(16)),
            compute_command=compute_command(world, launch_file, module or spec.compute_module),
        )

    @staticmethod
    def _write_launch(spec: WorkerSpec, process: WorkerProcess, path: Path) -> None:
        spec.work_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(WorkerLaunch(spec=spec, process=process).model_dump_json(indent=2))

    def smoke(self, spec: TrainerWorkerSpec, placement: Placement, timeout: float = 900.0) -> SmokeResult | str:
        """Run the smoke step at the shape's world size on this machine's devices (the placement passed `check`);
        a string says why it cannot run now."""
        gpus = self._gpus_for(placement)
        if len(gpus) < placement.devices and placement.accelerator.kind != DeviceKind.CPU:
            return f"the {placement.describe()} it needs are busy"
        path = spec.work_dir / "smoke-launch.json"
        process = self._process(spec, placement, gpus, f"smoke-{secrets.token_hex(3)}", path, spec.smoke_module)
        self._write_launch(spec, process, path)
        result_path = spec.smoke_result
        result_path.unlink(missing_ok=True)
        log_path = spec.work_dir / "smoke.log"
        with log_path.open("a") as log_file:
            children = [  # one agent per node, as for the job
                subprocess.Popen(
                    process.compute_command, stdout=log_file, stderr=subprocess.STDOUT, env=self._environment(gpus)
                )
                for _ in range(process.world.nodes)
            ]
            codes = wait_world(children, timeout)
        if any(codes) or not result_path.exists():
            return SmokeResult(
                device=process.device,
                peak_memory_gib=0.0,
                step_seconds=0.0,
                tokens=spec.max_context_length,
                passed=False,
                detail=f"the smoke step exited with code {max(codes, key=abs)}:\n{log_tail(log_path)}",
            )
        return SmokeResult.model_validate_json(result_path.read_text())

    def start(self, name: str, spec: WorkerSpec, placement: Placement) -> None:
        with self._lock:
            gpus = self._gpus_for(placement)
            listener = Listener(port=free_port(), token=secrets.token_hex(16))
            path = spec.work_dir / "worker-launch.json"
            log_path = spec.work_dir / "worker.log"
            process = self._process(spec, placement, gpus, name, path).model_copy(update={"listener": listener})
            warm = self._take_warm(spec, process)
            if warm is not None:  # started before its log existed, it moves its output there itself
                process = process.model_copy(update={"log_file": log_path})
            self._write_launch(spec, process, path)
            if warm is not None:
                assert warm.stdin is not None
                warm.stdin.write(f"{path}\n")
                warm.stdin.close()
            with log_path.open("a") as log_file:

                def run(command: list[str]) -> subprocess.Popen:
                    env = self._environment(gpus)
                    return subprocess.Popen(
                        command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=spec.work_dir
                    )

                child = warm or run([sys.executable, "-m", spec.module, "--launch", str(path)])
                # the HTTP process starts the first node's agent; these are the others'
                agents = [run(process.compute_command) for _ in range(process.world.nodes - 1)]
            health = f"{listener.url}{spec.health_path}"
            slots = placement.devices if placement.accelerator.kind == DeviceKind.CPU else 0
            kind = placement.accelerator.kind
            self._workers[name] = _Worker(child, listener, log_path, kind, health, slots, gpus, agents)
        log.info("started worker for %s (pid %d, %s)", name, child.pid, listener.url)

    def status(self, name: str) -> WorkerStatus | None:
        worker = self._workers.get(name)
        if worker is None:
            return None
        for process in worker.processes():
            code = process.poll()
            if code is not None:
                detail = f"worker exited with code {code}:\n{log_tail(worker.log_path)}"
                return WorkerStatus(WorkerState.EXITED, detail)
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
        for process in worker.processes():
            process.terminate()
        for process in worker.processes():
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.info("stopped worker for %s", name)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for warm in self._warm:
                warm.kill()
                warm.wait()
            self._warm = []
        for name in list(self._workers):
            self.stop(name)
        self._http.close()
