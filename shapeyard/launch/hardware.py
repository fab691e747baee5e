"""What this machine has: host memory and CUDA devices.

GPUs are read from `nvidia-smi`, not from torch: the control plane runs no model code and does not import torch.
Workers get `CUDA_DEVICE_ORDER=PCI_BUS_ID`, so their device numbers are the ones `nvidia-smi` prints. When the
server itself runs under CUDA_VISIBLE_DEVICES, only those devices are used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import cache


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_gib: float


@dataclass(frozen=True)
class LocalHardware:
    memory_gib: float
    gpus: list[Gpu] = field(default_factory=list)

    def gpus_of(self, display_name: str) -> list[Gpu]:
        """GPUs whose device name names this accelerator (e.g. "H200" in "NVIDIA H200")."""
        return [gpu for gpu in self.gpus if display_name.split()[0].lower() in gpu.name.lower()]


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3


def _gpus() -> list[Gpu]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    query = [smi, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"]
    try:
        lines = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in lines:
        index, name, mebibytes = (part.strip() for part in line.split(","))
        gpus.append(Gpu(int(index), name, float(mebibytes) / 1024))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and all(part.strip().isdigit() for part in visible.split(",") if part.strip()):
        allowed = {int(part) for part in visible.split(",") if part.strip()}
        gpus = [gpu for gpu in gpus if gpu.index in allowed]
    return gpus


@cache
def detect() -> LocalHardware:
    return LocalHardware(_memory_gib(), _gpus())
