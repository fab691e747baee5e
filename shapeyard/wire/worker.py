"""What the control plane tells a worker process it launches: one JSON file, written by the launcher."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from shapeyard.shapes.types import TrainerMode, WeightsSource

# The gateway proves to a worker that a request passed the control plane's authentication.
WORKER_TOKEN_HEADER = "X-Shapeyard-Worker-Token"


class TrainerWorkerSpec(BaseModel):
    job_name: str
    base_model: str
    weights: WeightsSource
    trainer_mode: TrainerMode
    lora_rank: int
    max_lora_rank: int
    forward_only: bool
    max_context_length: int
    activation_checkpointing: bool
    device: str  # "cpu" or "cuda"
    threads: int
    job_dir: Path
    host: str = "127.0.0.1"
    port: int
    token: str
    resume_from: Path | None = None  # a training checkpoint the first model loads, weights and optimizer
    seed: int = 0
