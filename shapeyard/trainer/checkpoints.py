"""Training checkpoints on disk: trainable weights, optimizer state and what they belong to.

    <checkpoint dir>/weights.safetensors    trainable weights (all of them, or the adapter)
                     optimizer.safetensors  AdamW moments and step counts (when saved with state)
                     meta.json              `shapeyard.store.layout.CheckpointMeta`

Where checkpoints live is `shapeyard.store.layout`'s business. Tensors are stored exactly (no dtype change), so
loading a state resumes bit for bit; a checkpoint is written under a staging name and renamed when complete.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from shapeyard.store.layout import CheckpointMeta, read_meta, write_meta
from shapeyard.wire.errors import InvalidArgument


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


def save_training(
    target: Path, weights: dict[str, torch.Tensor], optimizer: dict[str, Any] | None, meta: CheckpointMeta
) -> None:
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in weights.items()}, staging / "weights.safetensors")
    if optimizer is not None:
        tensors, groups = flatten_optimizer(optimizer)
        save_file(tensors, staging / "optimizer.safetensors")
        meta = meta.model_copy(update={"param_groups": groups})
    write_meta(staging, meta)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def load_training(
    directory: Path, with_optimizer: bool
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, CheckpointMeta]:
    meta = read_meta(directory)
    weights = load_file(directory / "weights.safetensors")
    optimizer = None
    if with_optimizer:
        if not (directory / "optimizer.safetensors").exists() or meta.param_groups is None:
            raise InvalidArgument(f"checkpoint {directory.name} has no optimizer state; load it without optimizer")
        optimizer = unflatten_optimizer(load_file(directory / "optimizer.safetensors"), meta.param_groups)
    return weights, optimizer, meta
