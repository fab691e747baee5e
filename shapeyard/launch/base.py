"""The launcher interface: how the control plane starts, watches and stops worker processes.

The control plane never runs model code. It asks a launcher whether a placement can exist here at all (`check`),
whether it fits now (`has_capacity`), and then starts and watches one worker per job or deployment replica. The
launcher decides what the worker process gets (its devices, threads, port and token: `WorkerProcess`) and writes
it, with the control plane's spec, to the file the worker starts from. The local launcher runs workers as
subprocesses of the server; a cluster launcher (torchrun, Kubernetes, Slurm) implements the same methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from shapeyard.wire.shapes import AcceleratorSpec, SmokeResult
from shapeyard.wire.worker import Listener, TrainerWorkerSpec, WorkerSpec


@dataclass(frozen=True)
class Placement:
    """The devices one worker needs."""

    accelerator: AcceleratorSpec
    count: int
    nodes: int
    replicas: int
    memory_gib: float  # per device, from the shape's memory plan

    @property
    def devices(self) -> int:
        """All the devices of the job: every rank of its world."""
        return self.count * self.nodes * self.replicas

    def describe(self) -> str:
        nodes = f" x {self.nodes} nodes" if self.nodes > 1 else ""
        replicas = f" x {self.replicas} replicas" if self.replicas > 1 else ""
        return f"{self.count} x {self.accelerator.accelerator_type}{nodes}{replicas}"


class WorkerState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    EXITED = "exited"


@dataclass(frozen=True)
class WorkerStatus:
    state: WorkerState
    detail: str = ""


class Launcher(Protocol):
    def check(self, placement: Placement) -> None:
        """Raise FailedPrecondition naming what is missing if this launcher can never run the placement."""

    def has_capacity(self, placement: Placement) -> bool:
        """Whether the placement fits next to the workers already running."""

    def start(self, name: str, spec: WorkerSpec, placement: Placement) -> None: ...

    def status(self, name: str) -> WorkerStatus | None:
        """None when no worker was started under this name (or it was forgotten)."""

    def listener(self, name: str) -> Listener | None:
        """Where the worker serves, and its token; None when no worker was started under this name."""

    def running(self, prefix: str) -> list[str]:
        """The names of started workers (alive or not yet reaped) that begin with `prefix`."""

    def stop(self, name: str) -> None:
        """Stop the worker and forget it; a no-op for unknown names."""

    def capacity_message(self, placement: Placement) -> str: ...

    def smoke(self, spec: TrainerWorkerSpec, placement: Placement) -> SmokeResult | str:
        """Validation's real step on hardware that passed `check`, or why it cannot run now."""

    def close(self) -> None: ...
