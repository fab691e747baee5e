"""Config sections shared by the recipes. A recipe's config is one YAML (or JSON) file."""

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
    learning_rate: float = 1e-4
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


def load_config(path: Path, model: type[T]) -> T:
    text = Path(path).read_text()
    data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    return model.model_validate(data)
