"""What a worker process is told when it starts: one JSON file the launcher writes (`WorkerLaunch`).

It joins two decisions: the control plane's (`WorkerSpec`: the model, the job or deployment, where it writes) and
the launcher's (`WorkerProcess`: the device, threads, and where the worker listens).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from pydantic import BaseModel

from shapeyard.wire import routes
from shapeyard.wire.shapes import TrainerMode, TrainingRecipe, WeightsSource


class WorkerSpec(BaseModel):
    """What every worker needs from the control plane: the model and where it writes."""

    module: ClassVar[str]  # the worker's entry point, run as `python -m <module> --launch <file>`
    health_path: ClassVar[str]  # answers 200 once the worker serves

    base_model: str
    weights: WeightsSource
    max_context_length: int
    work_dir: Path


class TrainerWorkerSpec(WorkerSpec):
    module: ClassVar[str] = "shapeyard.trainer.worker"
    health_path: ClassVar[str] = routes.TRAINER_HEALTH
    compute_module: ClassVar[str] = "shapeyard.trainer.compute"  # every rank of the job's world runs it
    smoke_module: ClassVar[str] = "shapeyard.trainer.smoke"  # validation's smoke step, at the same world size

    job_name: str
    trainer_mode: TrainerMode
    lora_rank: int
    max_lora_rank: int
    forward_only: bool
    recipe: TrainingRecipe
    resume_from: Path | None = None  # a training checkpoint the first model loads, weights and optimizer
    seed: int = 0

    @property
    def smoke_result(self) -> Path:
        """Where the smoke step's rank 0 writes its SmokeResult."""
        return self.work_dir / "smoke-result.json"


class Snapshot(BaseModel):
    """A sampler snapshot a trainer wrote, by the name the client knows it by."""

    identity: str
    path: Path


class DeploymentWorkerSpec(WorkerSpec):
    module: ClassVar[str] = "shapeyard.serving.worker"
    health_path: ClassVar[str] = routes.HEALTH

    deployment_name: str
    replica: int
    snapshot: Snapshot | None = None  # loaded at start, so a restarted replica serves what the others serve


class Listener(BaseModel):
    """Where a worker serves HTTP, and the token the gateway proves itself with."""

    host: str = "127.0.0.1"
    port: int
    token: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class WorldSpec(BaseModel):
    """A trainer's torch.distributed world as torch's elastic launcher starts it: `nodes` agents of
    `procs_per_node` ranks each, meeting at the c10d rendezvous (one agent alone runs standalone)."""

    nodes: int = 1
    procs_per_node: int = 1
    replicas: int = 1  # data-parallel copies of the sharded model: the mesh's replicate dimension
    rendezvous: str = ""  # host:port of the c10d rendezvous store; unused when nodes == 1
    run_id: str = "shapeyard"

    @property
    def size(self) -> int:
        return self.nodes * self.procs_per_node


class WorkerProcess(BaseModel):
    """What the launcher decides for a worker process."""

    device: str  # "cpu" or "cuda" (the launcher pins which GPUs with CUDA_VISIBLE_DEVICES)
    threads: int  # torch threads per process (per rank for a trainer)
    listener: Listener | None = None  # None for a process that serves no HTTP (validation's smoke step)
    world: WorldSpec = WorldSpec()  # a trainer's ranks
    compute: Listener | None = None  # where the trainer's HTTP process waits for its rank 0
    compute_command: list[str] = []  # what the trainer's HTTP process runs: its node's agent (or only rank)
    log_file: Path | None = None  # a warm process, started before its log was known, moves its output there


S = TypeVar("S", bound=WorkerSpec)


class WorkerLaunch(BaseModel, Generic[S]):
    spec: S
    process: WorkerProcess
