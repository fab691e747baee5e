"""Training checkpoints on disk: trainable weights, optimizer state and what they belong to.

    <checkpoint dir>/.metadata, *.distcp    torch.distributed.checkpoint (DCP): each rank writes its own shards
                     meta.json              `shapeyard.store.layout.CheckpointMeta`

Tensors are keyed by parameter name (`weights.<name>`, `optimizer.<name>.<exp_avg|exp_avg_sq|step>`), never by
rank or position, so a checkpoint saved at one world size loads at any other: DCP reads each rank's part out of
whichever shards hold it. Tensors keep their dtype, so loading a state resumes bit for bit. A checkpoint is
written under a staging name and renamed by rank 0 once every rank has written its part.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch.distributed.checkpoint as dcp
from torch import Tensor

from shapeyard.store.layout import CheckpointMeta, write_meta
from shapeyard.trainer.world import World

# weights: name -> tensor; optimizer: name -> AdamW's per-parameter state
TrainingState = dict[str, dict[str, Tensor] | dict[str, dict[str, Tensor]]]


def save_training(target: Path, state: TrainingState, meta: CheckpointMeta, world: World) -> None:
    """A collective: every rank calls it with its part of the state (DTensors, or the same replicated tensors)."""
    staging = target.with_name(f".{target.name}.staging")
    if world.leader:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    world.barrier()
    dcp.save(state, checkpoint_id=staging)
    if world.leader:
        write_meta(staging, meta)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)


def stored_keys(directory: Path) -> set[str]:
    """The flattened keys a checkpoint holds (`weights.<name>`, `optimizer.<name>.<field>`)."""
    return set(dcp.FileSystemReader(directory).read_metadata().state_dict_metadata)


def load_training(directory: Path, state: TrainingState) -> None:
    """Fill `state`'s tensors in place from the checkpoint, each rank its own part (a collective)."""
    dcp.load(state, checkpoint_id=directory)
