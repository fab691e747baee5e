"""What this machine has: CPU cores, host memory, CUDA devices."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_gib: float


@dataclass(frozen=True)
class LocalHardware:
    cpu_cores: int
    memory_gib: float
    gpus: list[Gpu] = field(default_factory=list)

    def gpus_of(self, display_name: str) -> list[Gpu]:
        """GPUs whose device name names this accelerator (e.g. "H200" in "NVIDIA H200")."""
        return [gpu for gpu in self.gpus if display_name.split()[0].lower() in gpu.name.lower()]


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3


@cache
def detect() -> LocalHardware:
    import torch

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append(Gpu(index, props.name, props.total_memory / 1024**3))
    return LocalHardware(os.cpu_count() or 1, _memory_gib(), gpus)
