"""The trainer's torch.distributed world: which rank this process is, its device, its mesh, and the collectives the
backend needs.

One trainer job is one world of `trainerReplicaCount x nodeCount x acceleratorCount` ranks, started by torch's
elastic launcher (`shapeyard.launch.torchrun`). Its DeviceMesh has two dimensions, `replicate` (the replicas)
and `fsdp` (the devices of one replica): FSDP2 shards the model over `fsdp`, and the replicas' shard gradients are
summed over `replicate` (HSDP, from the two pieces). Every rank is data-parallel, so a batch is split over all of
them.

At world size 1 there is no process group and every collective is the identity: the same backend code runs a
single process exactly as before, without FSDP's hooks.
"""

from __future__ import annotations

import contextlib
import datetime
import heapq
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

# A rank waits this long in a collective for the others; longer than any step, shorter than forever.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: str  # "cpu" or "cuda:<local rank>"
    mesh: DeviceMesh | None = None  # the `fsdp` dimension FSDP shards over; None at world size 1
    replicate: dist.ProcessGroup | None = None  # the ranks holding the same shards, one per replica; None for one

    @property
    def leader(self) -> bool:
        """Rank 0: the one that talks to the worker's HTTP process and writes what only one rank writes."""
        return self.rank == 0

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order."""
        if self.size == 1:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def all_finite(self, value: Tensor) -> bool:
        """Whether `value` is finite on every rank (one agreed answer, so that all ranks take the same branch)."""
        flag = torch.isfinite(value).all().to(torch.float32)
        if self.size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag)

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Finish the gradients' sum over all ranks where FSDP's reduce-scatter did not: sharded parameters' shards
        over the replicas, and whole parameters (LoRA adapters, created after the model was sharded, so not FSDP's)
        over every rank."""
        if self.size == 1:
            return
        for param in params:
            if isinstance(param, DTensor):
                if self.replicate is not None and param.grad is not None:
                    dist.all_reduce(param.grad.to_local(), group=self.replicate)
                continue
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad)

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def shard(self, model: torch.nn.Module, blocks: Sequence[torch.nn.Module], compute_dtype: torch.dtype) -> None:
        """FSDP2 over the `fsdp` dimension, on each transformer block and at the root (embeddings, final norm, head).
        Gradients are summed, not averaged: the losses are sums, so the sharded gradient is the single-process one.
        What a rank gathers is cast to `compute_dtype`; the shards (the master copy) keep theirs, and gradients are
        reduced in it."""
        if self.mesh is None:
            return
        master = next(model.parameters()).dtype
        policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=master)
        for block in blocks:
            fully_shard(block, mesh=self.mesh, mp_policy=policy)
        fully_shard(model, mesh=self.mesh, mp_policy=policy)
        for module in [*blocks, model]:
            assert isinstance(module, FSDPModule)
            module.set_gradient_divide_factor(1.0)
            # gloo has no pre-multiplied sum; plain sums work on every backend
            module.set_force_sum_reduction_for_comms(True)

    def close(self) -> None:
        """Leave the world together: a rank that tears its process group down while a peer still uses it can
        abort the peer. Peers that are gone already leave nobody to wait for."""
        if not dist.is_initialized():
            return
        with contextlib.suppress(RuntimeError):
            dist.barrier()
        dist.destroy_process_group()


def join_world(device: str, replicas: int = 1) -> World:
    """The world torch's elastic launcher started this process in (its environment: RANK, WORLD_SIZE, ...), or a
    world of one when it was started alone."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(rank=0, size=1, device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if size % replicas:
        raise ValueError(f"a world of {size} ranks cannot hold {replicas} equal replicas")
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    # peft sizes a LoRA layer on a sharded weight by its mesh's names: only a mesh named "fsdp" (or unnamed) gets
    # the whole projection's shape, any other is taken for tensor parallelism. So FSDP gets the 1-D `fsdp` mesh
    # and the replicas are summed apart, rather than handing fully_shard the 2-D mesh.
    mesh = init_device_mesh(device.split(":")[0], (replicas, size // replicas), mesh_dim_names=("replicate", "fsdp"))
    replicate = mesh.get_group("replicate") if replicas > 1 else None
    return World(rank=rank, size=size, device=device, mesh=mesh["fsdp"], replicate=replicate)


def partition(lengths: Sequence[int], parts: int) -> list[list[int]]:
    """Indices of `lengths` in `parts` groups of nearly equal token sums (longest first onto the lightest group),
    each in ascending order. Deterministic, so every rank computes the same split without talking."""
    groups: list[list[int]] = [[] for _ in range(parts)]
    heap = [(0, part) for part in range(parts)]
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        load, part = heapq.heappop(heap)
        groups[part].append(index)
        heapq.heappush(heap, (load + lengths[index], part))
    return [sorted(group) for group in groups]


def full(value: Tensor) -> Tensor:
    """A DTensor's whole value (a collective: every rank calls it); a plain tensor as it is."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def local(value: Tensor) -> Tensor:
    """The part of a tensor this rank holds: its shard of a DTensor, or the tensor itself."""
    return value.to_local() if isinstance(value, DTensor) else value
