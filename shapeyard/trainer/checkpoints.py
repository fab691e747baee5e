"""Checkpoints on disk, under the job's directory in the server's data dir.

    <job dir>/checkpoints/<name>/weights.safetensors    trainable weights (all of them, or the adapter)
                                 optimizer.safetensors  AdamW moments and step counts (when saved with state)
                                 meta.json              kind, rank, step, optimizer hyper-parameters
    <job dir>/sampler/<name>/                           an HF directory (full weights) or a PEFT adapter
                                                         directory, loadable by plain transformers / peft

Tensors are stored exactly (no dtype change), so loading a state resumes bit for bit.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from shapeyard.errors import InvalidArgument, NotFound

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str) -> str:
    if not NAME_RE.match(name or "") or ".." in name:
        raise InvalidArgument(
            f"checkpoint name {name!r} is invalid: use 1-128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors = {
        f"state.{index}.{key}": value.detach().clone().contiguous()
        for index, entry in state["state"].items()
        for key, value in entry.items()
    }
    return tensors, state["param_groups"]


def unflatten_optimizer(tensors: dict[str, torch.Tensor], param_groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, field = key.split(".", 2)
        state.setdefault(int(index), {})[field] = value
    return {"state": state, "param_groups": param_groups}


class CheckpointStore:
    """A job's checkpoints. References a client may send back: a bare name (this job), or another job of the same
    account as `cross_job://<job>/<name>` or `tinker://<job>/weights/<name>`."""

    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.training_root = job_dir / "checkpoints"
        self.sampler_root = job_dir / "sampler"

    def resolve(self, reference: str, kind: str = "checkpoints") -> Path:
        job_dir, name = self.job_dir, reference
        for prefix in ("cross_job://", "tinker://"):
            if reference.startswith(prefix):
                parts = reference.removeprefix(prefix).split("/")
                if len(parts) == 3 and parts[1] in ("weights", "sampler_weights"):
                    parts = [parts[0], parts[2]]
                if len(parts) != 2:
                    raise InvalidArgument(
                        f"checkpoint reference {reference!r} is malformed; expected {prefix}<job>/<name>"
                    )
                job_dir, name = self.job_dir.parent / check_name(parts[0]), parts[1]
        return job_dir / kind / check_name(name)

    @staticmethod
    def new_name(requested: str | None, prefix: str) -> str:
        return (
            check_name(requested) if requested else f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        )

    def training_dir(self, name: str) -> Path:
        return self.training_root / check_name(name)

    def sampler_dir(self, name: str) -> Path:
        return self.sampler_root / check_name(name)

    def save_training(
        self,
        name: str,
        weights: dict[str, torch.Tensor],
        optimizer: dict[str, Any] | None,
        meta: dict[str, Any],
    ) -> Path:
        target = self.training_dir(name)
        staging = target.with_name(f".{target.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        save_file({k: v.detach().contiguous() for k, v in weights.items()}, staging / "weights.safetensors")
        if optimizer is not None:
            tensors, groups = flatten_optimizer(optimizer)
            save_file(tensors, staging / "optimizer.safetensors")
            meta = {**meta, "param_groups": groups}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return target

    def load_training(self, directory: Path, with_optimizer: bool) -> tuple[dict, dict | None, dict[str, Any]]:
        if not (directory / "meta.json").exists():
            raise NotFound(f"checkpoint {directory.name} not found")
        meta = json.loads((directory / "meta.json").read_text())
        weights = load_file(directory / "weights.safetensors")
        optimizer = None
        if with_optimizer:
            if not (directory / "optimizer.safetensors").exists():
                raise InvalidArgument(f"checkpoint {directory.name} has no optimizer state; load it without optimizer")
            optimizer = unflatten_optimizer(load_file(directory / "optimizer.safetensors"), meta["param_groups"])
        return weights, optimizer, meta

    def list_training(self) -> list[str]:
        if not self.training_root.exists():
            return []
        found = [p for p in self.training_root.iterdir() if (p / "meta.json").exists()]
        return [p.name for p in sorted(found, key=lambda p: (p / "meta.json").stat().st_mtime_ns)]
