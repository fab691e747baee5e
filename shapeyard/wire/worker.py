"""What a worker process is told when it starts: one JSON file the launcher writes (`WorkerLaunch`).

It joins two decisions: the control plane's (`WorkerSpec`: the model, the job or deployment, where it writes) and
the launcher's (`WorkerProcess`: the device, threads, and where the worker listens).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from pydantic import BaseModel

from shapeyard.wire import routes
from shapeyard.wire.shapes import TrainerMode, WeightsSource


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

    job_name: str
    trainer_mode: TrainerMode
    lora_rank: int
    max_lora_rank: int
    forward_only: bool
    activation_checkpointing: bool
    resume_from: Path | None = None  # a training checkpoint the first model loads, weights and optimizer
    seed: int = 0


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


class WorkerProcess(BaseModel):
    """What the launcher decides for a worker process."""

    device: str  # "cpu" or "cuda" (the launcher pins which GPUs with CUDA_VISIBLE_DEVICES)
    threads: int  # torch threads
    listener: Listener | None = None  # None for a process that serves no HTTP (validation's smoke step)


S = TypeVar("S", bound=WorkerSpec)


class WorkerLaunch(BaseModel, Generic[S]):
    spec: S
    process: WorkerProcess
