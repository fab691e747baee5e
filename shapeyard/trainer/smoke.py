"""The smoke step of validation: a real step of a shape on real hardware.

    python -m shapeyard.trainer.smoke --launch <worker launch file>                         a world of one
    python -m torch.distributed.run ... -m shapeyard.trainer.smoke --launch <file>          the shape's world

Loads the model as the trainer would, at the shape's world size, runs one forward_backward on a sequence of
maxSupportedContextLength tokens per rank and one optim_step (a forward pass only for forward-only shapes), and
rank 0 prints a SmokeResult (JSON) with the largest peak memory of any rank and the step time. Runs in processes
of its own so that their peak memory is their own.
"""

from __future__ import annotations

import resource
import time

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from shapeyard.runtime.process import launch_path, read_launch, retain_freed_memory
from shapeyard.trainer.backend import AdamStep, AdapterSpec, Example, ModelKind
from shapeyard.trainer.compute import build_backend
from shapeyard.trainer.world import World, join_world
from shapeyard.wire.shapes import SmokeResult
from shapeyard.wire.worker import TrainerWorkerSpec, WorkerLaunch


def peak_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kilobytes on Linux


def smoke(launch: WorkerLaunch[TrainerWorkerSpec], world: World) -> SmokeResult:
    spec, device = launch.spec, launch.process.device
    backend = build_backend(launch, world)
    lora = AdapterSpec(rank=spec.lora_rank) if spec.lora_rank else None
    model_id, kind = backend.create_model(lora, base_only=False)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, backend.vocab_size, (spec.max_context_length + 1,), generator=generator).tolist()
    example = Example(tokens[:-1], {"target_tokens": tokens[1:]})
    began = time.perf_counter()
    trains = kind != ModelKind.FROZEN
    backend.forward(model_id, [example] * world.size, "cross_entropy", None, backward=trains)
    if trains:
        backend.optim_step(model_id, AdamStep(learning_rate=1e-6), None)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    return SmokeResult(
        device=device,
        peak_memory_gib=round(max(world.all_gather(peak_memory_gib(device))), 3),
        step_seconds=round(seconds, 3),
        tokens=spec.max_context_length,
        passed=True,
    )


@record  # a rank that dies leaves its traceback in the agent's failure summary, the end of the worker's log
def main() -> None:
    launch = read_launch(TrainerWorkerSpec, launch_path(__doc__))
    torch.set_num_threads(launch.process.threads)
    retain_freed_memory()  # as the worker's compute process does, so that the step time is the worker's
    world = join_world(launch.process.device, launch.process.world.replicas)
    try:
        result = smoke(launch, world)
    except Exception as exc:  # reported, not raised: a failed smoke step is a validation outcome
        result = SmokeResult(
            device=launch.process.device,
            peak_memory_gib=round(peak_memory_gib(launch.process.device), 3),
            step_seconds=0.0,
            tokens=launch.spec.max_context_length,
            passed=False,
            detail=f"{type(exc).__name__}: {exc}",
        )
    if world.leader:  # the launcher reads it
        launch.spec.smoke_result.write_text(result.model_dump_json())
    world.close()


if __name__ == "__main__":
    main()
