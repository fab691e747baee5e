"""One trainer run at some world size, for the equivalence tests (`test_spmd.py`); every rank runs this file.

    python tests/trainer/spmd_program.py --out run.pt [--save-at 5 --save-dir d | --resume-from d]
    python -m torch.distributed.run --standalone --nproc-per-node N tests/trainer/spmd_program.py ...

For a full-parameter and a LoRA model: ten steps, each a forward_backward then an optim_step, alternating
cross-entropy on a ragged batch of five sequences and PPO on a batch of three (so that at world size 4 one rank
has no data and runs empty passes). Rank 0 saves the per-token logprobs and loss of every step, the gradients of
the first step, the weights after the last and how far they moved, all gathered whole.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from shapeyard.models import tiny
from shapeyard.models.loading import load_model, load_tokenizer
from shapeyard.shapes.recipe import training_recipe
from shapeyard.trainer.backend import AdamStep, AdapterSpec, BackendConfig, Example
from shapeyard.trainer.spmd import SpmdBackend
from shapeyard.trainer.world import full, join_world
from shapeyard.wire.shapes import AcceleratorSpec, DeviceKind

STEPS = 10
CPU = AcceleratorSpec(accelerator_type="CPU", kind=DeviceKind.CPU, memory_gib=16.0)
# Adam with a large eps is nearly linear in the gradients, so float noise of a different summation order stays
# noise instead of being normalised up to a full step.
ADAM = AdamStep(learning_rate=1e-3, eps=1e-2, weight_decay=0.01, grad_clip_norm=50.0)


def batches() -> tuple[list[Example], list[Example]]:
    generator = torch.Generator().manual_seed(7)

    def sequence(length: int) -> tuple[list[int], list[int]]:
        tokens = torch.randint(3, 99, (length + 1,), generator=generator).tolist()
        return tokens[:-1], tokens[1:]

    ragged = []
    for length in (9, 4, 12, 6, 7):
        tokens, targets = sequence(length)
        weights = [0.0] * 2 + [1.0] * (length - 2)
        ragged.append(Example(tokens, {"target_tokens": targets, "weights": weights}))
    policy = []
    for length in (8, 5, 10):
        tokens, targets = sequence(length)
        logprobs = (-torch.rand(length, generator=generator) * 4 - 1).tolist()
        advantages = (torch.rand(length, generator=generator) * 2 - 1).tolist()
        policy.append(Example(tokens, {"target_tokens": targets, "logprobs": logprobs, "advantages": advantages}))
    return ragged, policy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--save-at", type=int, default=0, help="save a checkpoint after this many steps")
    parser.add_argument("--save-dir", type=Path)
    parser.add_argument("--resume-from", type=Path, help="a checkpoint directory per mode: <dir>/<mode>")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--loss-chunk", type=int, default=0, help="tokens per chunk of the loss's logits")
    args = parser.parse_args()
    chunk = {"loss_chunk_tokens": args.loss_chunk} if args.loss_chunk else {}
    torch.set_num_threads(1)
    world = join_world("cpu", args.replicas)
    path = str(tiny.ensure_tiny_model())
    ragged, policy = batches()
    results: dict[str, dict] = {}
    for mode, rank in (("full", 0), ("lora", 4)):
        config = BackendConfig(
            base_model="tiny",
            model_path=path,
            device="cpu",
            max_context_length=2048,
            lora_rank=rank,
            max_lora_rank=64,
            forward_only=False,
            recipe=training_recipe(CPU, 2048).model_copy(update=chunk),
        )
        backend = SpmdBackend(config, load_model(path, "cpu"), load_tokenizer(path), world)
        model_id, _ = backend.create_model(AdapterSpec(rank=rank, seed=3) if rank else None, base_only=False)
        slot = backend.slot(model_id)
        first = 0
        if args.resume_from:
            backend.load_state(model_id, args.resume_from / mode, with_optimizer=True)
            first = slot.steps
        record: dict = {"logprobs": {}, "loss": {}}
        start = {name: full(param.detach()).clone() for name, param in backend._named_params(slot).items()}
        for step in range(first, STEPS):
            batch, loss_fn = (ragged, "cross_entropy") if step % 2 == 0 else (policy, "ppo")
            result = backend.forward(model_id, batch, loss_fn, None, backward=True)
            record["logprobs"][step] = result.logprobs
            record["loss"][step] = result.metrics["loss:sum"]
            if step == 0:
                names = backend._named_params(slot)
                record["grads"] = {name: full(param.grad).clone() for name, param in names.items()}
            backend.optim_step(model_id, ADAM, "num_loss_tokens")
            if args.save_dir and step + 1 == args.save_at:
                backend.save_state(model_id, args.save_dir / mode)
        record["weights"] = {name: full(param.detach()).clone() for name, param in backend._named_params(slot).items()}
        record["moved"] = max(float((record["weights"][name] - start[name]).abs().max()) for name in start)
        results[mode] = record
    if world.leader:
        torch.save(results, args.out)
    world.close()


if __name__ == "__main__":
    main()
