"""Where a server keeps its files: one data dir, laid out as below. Torch-free: the control plane resolves these
paths without running model code, and the workers write and read them.

    <data dir>/shapeyard.db                                     the SQLite database (unless a URL names another)
              /bootstrap-keys.json                              the bootstrap account's keys, owner-readable only
              /jobs/<account>/<job>/checkpoints/<name>/         a training checkpoint (see `CheckpointMeta`)
                                   /sampler/<name>/             a sampler snapshot: an HF directory (full weights)
                                                                or a PEFT adapter directory
                                   /worker.log                  the worker's output
              /deployments/<account>/<deployment>/replica-<i>/  a deployment replica's working directory
              /smoke/<random>/                                  one smoke step of validation

A job's checkpoints are named by the client (`wire.names.checkpoint_ref`); another job's are reached through the
account's directory, so a reference never leaves the account.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from shapeyard.wire.errors import NotFound
from shapeyard.wire.names import check_checkpoint_name, checkpoint_ref

CheckpointKind = Literal["checkpoints", "sampler"]
META = "meta.json"


class CheckpointMeta(BaseModel):
    """`meta.json` of a training checkpoint: what it holds, so that only a matching model loads it."""

    kind: Literal["full", "lora"]
    rank: int
    steps: int
    base_model: str
    loss_tokens: int = 0
    loss_sequences: int = 0
    optimizer: bool = False  # saved with the optimizer's state


class JobFiles:
    """A job's checkpoints and sampler snapshots."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.training_root = root / "checkpoints"
        self.sampler_root = root / "sampler"

    def resolve(self, reference: str, kind: CheckpointKind = "checkpoints") -> Path:
        """The directory a client's checkpoint reference names: this job's, or another job's of the account."""
        ref = checkpoint_ref(reference)
        job_root = self.root if ref.job is None else self.root.parent / ref.job
        return job_root / kind / ref.name

    @staticmethod
    def new_name(requested: str | None, prefix: str) -> str:
        if requested:
            return check_checkpoint_name(requested)
        return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"

    def training_dir(self, name: str) -> Path:
        return self.training_root / check_checkpoint_name(name)

    def sampler_dir(self, name: str) -> Path:
        return self.sampler_root / check_checkpoint_name(name)

    def list_training(self) -> list[str]:
        """Complete training checkpoints, oldest first."""
        if not self.training_root.exists():
            return []
        found = [path for path in self.training_root.iterdir() if (path / META).exists()]
        return [path.name for path in sorted(found, key=lambda path: (path / META).stat().st_mtime_ns)]

    def latest_training(self) -> Path | None:
        names = self.list_training()
        return self.training_dir(names[-1]) if names else None


def read_meta(directory: Path) -> CheckpointMeta:
    if not (directory / META).exists():
        raise NotFound(f"checkpoint {directory.name} not found")
    return CheckpointMeta.model_validate_json((directory / META).read_text())


def write_meta(directory: Path, meta: CheckpointMeta) -> None:
    (directory / META).write_text(meta.model_dump_json(indent=2, exclude_none=True))


def is_sampler_snapshot(directory: Path) -> bool:
    return (directory / "config.json").exists() or (directory / "adapter_config.json").exists()


class DataDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def database(self) -> Path:
        return self.root / "shapeyard.db"

    @property
    def bootstrap_keys(self) -> Path:
        return self.root / "bootstrap-keys.json"

    def job(self, account: str, job_id: str) -> JobFiles:
        return JobFiles(self.root / "jobs" / account / job_id)

    def replica(self, account: str, deployment_id: str, index: int) -> Path:
        return self.root / "deployments" / account / deployment_id / f"replica-{index}"

    def new_smoke_dir(self) -> Path:
        return self.root / "smoke" / secrets.token_hex(4)
