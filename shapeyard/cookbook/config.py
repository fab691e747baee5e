"""Config sections shared by the recipes. A recipe's config is one YAML (or JSON) file:

    server:      where the shapeyard server is (default: SHAPEYARD_BASE_URL / SHAPEYARD_API_KEY)
    trainer:     the policy's model, shape, LoRA rank and peak learning rate
    deployment:  the rollout or evaluation deployment (RL; SFT when it evaluates)
    reference:   the frozen reference model (RL with a KL penalty; DPO)
    run:         the loop: log directory, seed, steps, save and evaluation cadence, learning-rate schedule
    ...          the recipe's own fields (data, batch sizes, loss settings)

Unknown fields are refused, naming them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T", bound=BaseModel)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSection(Section):
    """Where the shapeyard server is; both default to SHAPEYARD_BASE_URL / SHAPEYARD_API_KEY."""

    base_url: str = Field(default_factory=lambda: os.environ.get("SHAPEYARD_BASE_URL", "http://127.0.0.1:8000"))
    api_key: str = Field(default_factory=lambda: os.environ.get("SHAPEYARD_API_KEY", ""))


class TrainerSection(Section):
    training_shape_id: str | None = None  # none: the server picks the smallest validated shape for the model
    base_model: str
    lora_rank: int = 0
    learning_rate: float = 1e-4  # the peak: `run` schedules it
    display_name: str | None = None
    replica_count: int = 1
    job_id: str | None = None  # re-attach to (or resume) this job instead of creating one


class DeploymentSection(Section):
    """The rollout deployment, on the training shape's linked deployment shape."""

    replica_count: int = 1


class ReferenceSection(Section):
    """The frozen reference model. Left empty, a LoRA policy shares its trainer (adapter disabled) and a
    full-parameter policy gets a forward-only job; name a shape or an existing job to choose."""

    training_shape_id: str | None = None
    job_id: str | None = None


class RunSection(Section):
    """The training loop around the recipe's steps."""

    log_dir: Path | None = None  # metrics.jsonl and progress.json (None: runs/<recipe>); a rerun resumes from it
    seed: int = 0  # data order and sampling seeds
    steps: int | None = Field(None, ge=1)  # None: one pass over train_data (SFT, DPO), 50 steps (RL)
    save_every: int = Field(0, ge=0)  # a checkpoint (weights and optimizer) every this many steps; 0: at the end only
    eval_every: int = Field(0, ge=0)  # also evaluate every this many steps (always before training and at the end)
    keep_job: bool = False  # keep the trainer running afterwards (its checkpoints and snapshots stay either way)
    warmup_steps: int = Field(0, ge=0)  # the learning rate rises linearly to the trainer's peak over these steps
    final_learning_rate_fraction: float = Field(1.0, ge=0, le=1)  # then decays linearly to this fraction of it

    def directory(self, recipe: str) -> Path:
        return self.log_dir or Path("runs") / recipe

    def learning_rate(self, peak: float, step: int, total: int) -> float:
        """The scheduled learning rate of step `step` (counted from 0) of `total`."""
        if step < self.warmup_steps:
            return peak * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(total - self.warmup_steps, 1)
        return peak * (1 - (1 - self.final_learning_rate_fraction) * progress)

    def saves_after(self, done: int, total: int) -> bool:
        """A checkpoint after step `done` (counted from 1); the last step's is the recipe's final save."""
        return self.save_every > 0 and done % self.save_every == 0 and done < total

    def evaluates_after(self, done: int, total: int) -> bool:
        return done == total or (self.eval_every > 0 and done % self.eval_every == 0)


def load_config(path: Path, model: type[T]) -> T:
    text = Path(path).read_text()
    data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    return model.model_validate(data)
