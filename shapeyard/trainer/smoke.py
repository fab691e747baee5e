"""The smoke step of validation: a real step of a shape on real hardware.

    python -m shapeyard.trainer.smoke --spec <worker spec file>

Loads the model as the trainer would, runs one forward_backward on a sequence of maxSupportedContextLength tokens
and one optim_step (a forward pass only for forward-only shapes), and prints a SmokeResult (JSON) with the peak
memory and the step time. Runs in its own process so that its peak memory is its own.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

from shapeyard.launch.child import retain_freed_memory
from shapeyard.shapes.validation import SmokeResult
from shapeyard.trainer.backend import ModelKind
from shapeyard.trainer.compute import build_service
from shapeyard.wire.trainer import AdamParams, Datum, LoraConfig, ModelInput
from shapeyard.wire.worker import TrainerWorkerSpec


def peak_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kilobytes on Linux


def smoke(spec: TrainerWorkerSpec) -> SmokeResult:
    backend = build_service(spec).backend
    lora = LoraConfig(rank=spec.lora_rank) if spec.lora_rank else None
    model_id, slot = backend.create_model(lora, base_only=False)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, backend.vocab_size, (spec.max_context_length + 1,), generator=generator).tolist()
    datum = Datum(model_input=ModelInput.from_ints(tokens[:-1]), loss_fn_inputs={"target_tokens": tokens[1:]})
    began = time.perf_counter()
    trains = slot.kind != ModelKind.FROZEN
    backend.forward(model_id, [datum], "cross_entropy", None, backward=trains)
    if trains:
        backend.optim_step(model_id, AdamParams(learning_rate=1e-6), None)
    if spec.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    return SmokeResult(
        device=spec.device,
        peak_memory_gib=round(peak_memory_gib(spec.device), 3),
        step_seconds=round(seconds, 3),
        tokens=spec.max_context_length,
        passed=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True)
    spec = TrainerWorkerSpec.model_validate_json(Path(parser.parse_args().spec).read_text())
    torch.set_num_threads(spec.threads)
    retain_freed_memory()  # as the worker's compute process does, so that the step time is the worker's
    try:
        result = smoke(spec)
    except Exception as exc:  # reported, not raised: a failed smoke step is a validation outcome
        result = SmokeResult(
            device=spec.device,
            peak_memory_gib=round(peak_memory_gib(spec.device), 3),
            step_seconds=0.0,
            tokens=spec.max_context_length,
            passed=False,
            detail=f"{type(exc).__name__}: {exc}",
        )
    sys.stdout.write(result.model_dump_json() + "\n")


if __name__ == "__main__":
    main()
