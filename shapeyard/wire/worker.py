"""What the control plane tells a worker process it launches: one JSON file, written by the launcher."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel

from shapeyard.shapes.types import TrainerMode, WeightsSource

# The gateway proves to a worker that a request passed the control plane's authentication.
WORKER_TOKEN_HEADER = "X-Shapeyard-Worker-Token"


class WorkerSpec(BaseModel):
    """What every worker needs: the model, where it runs, where it writes, how the gateway reaches it."""

    module: ClassVar[str]  # the worker's entry point, run as `python -m <module> --spec <file>`
    health_path: ClassVar[str]  # answers 200 once the worker serves

    base_model: str
    weights: WeightsSource
    max_context_length: int
    device: str  # "cpu" or "cuda"
    threads: int
    work_dir: Path
    host: str = "127.0.0.1"
    port: int
    token: str


class TrainerWorkerSpec(WorkerSpec):
    module: ClassVar[str] = "shapeyard.trainer.worker"
    health_path: ClassVar[str] = "/api/v1/healthz"

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
    health_path: ClassVar[str] = "/healthz"

    deployment_name: str
    replica: int
    snapshot: Snapshot | None = None  # loaded at start, so a restarted replica serves what the others serve
