"""Starting a trainer's ranks with torch's elastic launcher (`torch.distributed.run`, the code behind `torchrun`).

One agent per node starts that node's ranks; the agents meet at a c10d rendezvous, or, alone on one machine, run
standalone. A job of world size 1 needs no agent: its one compute process starts directly, a second sooner.
Every node runs the same command (`compute_command`). The trainer's HTTP process starts the first agent next to
itself, and the launcher starts one for each further node: on the same machine in the local launcher's test
topology, on other machines for a cluster launcher. Whichever rank is 0 connects back to the HTTP process.
"""

from __future__ import annotations

import sys
from pathlib import Path

from shapeyard.wire.worker import TrainerWorkerSpec, WorldSpec

# Seconds between the agent's checks of its ranks: how soon a dead rank fails the job.
MONITOR_SECONDS = 1


def compute_command(world: WorldSpec, launch_file: Path, module: str = TrainerWorkerSpec.compute_module) -> list[str]:
    """The command for one node: its agent, or the only process of a world of one. Every rank runs `module`."""
    program = ["-m", module, "--launch", str(launch_file)]
    if world.size == 1:
        return [sys.executable, *program]
    if world.nodes == 1:
        rendezvous = ["--standalone"]
    else:
        rendezvous = [
            f"--nnodes={world.nodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={world.rendezvous}",
            f"--rdzv-id={world.run_id}",
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rendezvous,
        f"--nproc-per-node={world.procs_per_node}",
        "--max-restarts=0",  # a dead rank fails the job; `:resume` restarts the whole world
        f"--monitor-interval={MONITOR_SECONDS}",
        "--tee=3",  # every line of every rank's output, prefixed with its rank, in the worker's log
        *program,
    ]
