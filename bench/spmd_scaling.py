"""How the trainer scales from one rank to two on CPU: tokens/s and peak memory per rank, full-parameter training.

The same backend the trainer runs (`shapeyard.trainer.spmd`), on a randomly initialised Qwen3-architecture model
of about 30M parameters (large enough that the matrix products, not Python, take the time), with the same global
batch at every world size: at world size 2 each rank computes half of it and FSDP2 shards the weights, gradients
and AdamW state. One torch thread per rank, so world size 2 uses the machine's two cores.

- scaling efficiency = tokens/s at world size 2 / (2 x tokens/s at world size 1); target >= 0.8
- memory ratio = peak resident memory of one rank at world size 2 / of the one rank at world size 1; target <= 0.6

Each world runs `--steps` timed steps after one warm-up step; a step is one forward_backward and one optim_step.

    .venv/bin/python -m bench.spmd_scaling [--steps 3] [--batch 8] [--length 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONTEXT = 2048  # the recipe's as for a 2k shape: a forward pass holds up to 2,048 tokens, the whole default batch
MODEL = {
    "vocab_size": 16384,
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 8,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}


def build_model(directory: Path) -> int:
    """A random Qwen3 model (and the tiny tokenizer, which the backend loads but never uses here)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from shapeyard.models import tiny

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**MODEL))
    model.save_pretrained(directory)
    tiny.build_tokenizer().save_pretrained(directory)
    return sum(param.numel() for param in model.parameters())


def reset_peak_rss() -> None:
    """From here on VmHWM counts anew (Linux: 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    raise RuntimeError("no VmHWM in /proc/self/status")


def rank_main(args: argparse.Namespace) -> None:
    """One rank: train and report its own tokens/s and peak memory."""
    import torch

    from shapeyard.models.loading import load_model, load_tokenizer
    from shapeyard.runtime.process import release_freed_memory, retain_freed_memory
    from shapeyard.shapes.recipe import training_recipe
    from shapeyard.trainer.backend import AdamStep, BackendConfig, Example
    from shapeyard.trainer.spmd import SpmdBackend
    from shapeyard.trainer.world import join_world
    from shapeyard.wire.shapes import AcceleratorSpec, DeviceKind

    torch.set_num_threads(1)
    retain_freed_memory()  # as the compute process does
    world = join_world("cpu")
    path = str(args.model)
    config = BackendConfig(
        base_model="bench",
        model_path=path,
        device="cpu",
        max_context_length=CONTEXT,
        lora_rank=0,
        max_lora_rank=0,
        forward_only=False,
        recipe=training_recipe(AcceleratorSpec(accelerator_type="CPU", kind=DeviceKind.CPU, memory_gib=16.0), CONTEXT),
    )
    backend = SpmdBackend(config, load_model(path, "cpu"), load_tokenizer(path), world)
    model_id, _ = backend.create_model(None, base_only=False)
    release_freed_memory()  # as the compute process does once the model is loaded
    reset_peak_rss()  # training's peak: every rank reads the whole checkpoint before FSDP keeps its shards
    generator = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(args.batch):
        tokens = torch.randint(0, MODEL["vocab_size"], (args.length + 1,), generator=generator).tolist()
        batch.append(Example(tokens[:-1], {"target_tokens": tokens[1:]}))
    adam = AdamStep(learning_rate=1e-4)

    def step() -> None:
        backend.forward(model_id, batch, "cross_entropy", None, backward=True)
        backend.optim_step(model_id, adam, "num_loss_tokens")

    step()  # warm-up
    world.barrier()
    began = time.perf_counter()
    for _ in range(args.steps):
        step()
    world.barrier()
    seconds = time.perf_counter() - began
    peaks = world.all_gather(peak_rss_gib())
    if world.leader:
        tokens = args.steps * args.batch * args.length
        args.out.write_text(json.dumps({"tokens_per_second": tokens / seconds, "peak_gib": peaks}))
    world.close()


def run_world(size: int, args: argparse.Namespace, model: Path, out: Path) -> dict:
    launcher = [] if size == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={size}"]
    own = ["--rank-of", str(model), "--out", str(out)]
    settings = ["--steps", str(args.steps), "--batch", str(args.batch), "--length", str(args.length)]
    command = [sys.executable, *launcher, "-m", "bench.spmd_scaling", *own, *settings]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--rank-of", type=Path, dest="model", help=argparse.SUPPRESS)  # set for the ranks
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is not None:
        rank_main(args)
        return
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(scratch) / "model"
        parameters = build_model(model)
        one = run_world(1, args, model, Path(scratch) / "w1.json")
        two = run_world(2, args, model, Path(scratch) / "w2.json")
    efficiency = two["tokens_per_second"] / (2 * one["tokens_per_second"])
    memory = max(two["peak_gib"]) / one["peak_gib"][0]
    print(f"model: {parameters / 1e6:.1f}M parameters; batch {args.batch} x {args.length} tokens; {args.steps} steps")
    print(f"world size 1: {one['tokens_per_second']:,.0f} tokens/s, peak {one['peak_gib'][0]:.2f} GiB")
    peaks = ", ".join(f"{peak:.2f}" for peak in two["peak_gib"])
    print(f"world size 2: {two['tokens_per_second']:,.0f} tokens/s, peak per rank {peaks} GiB")
    print(f"scaling efficiency {efficiency:.2f} (target >= 0.8); memory per rank {memory:.2f}x (target <= 0.6)")


if __name__ == "__main__":
    main()
