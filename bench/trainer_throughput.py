"""forward_backward + optim_step tokens/s through a shapeyard server versus a raw in-process PyTorch loop.

Same model (the embedded tiny Qwen3), same batch (8 sequences x 256 tokens), same optimizer, both in one run, for
full-parameter and LoRA training. The server path is the real one: client -> control plane gateway -> worker
process; the client submits steps ahead (as the SDKs allow) and waits for the results.

On a shared machine the speed of one loop drifts by tens of percent over seconds, whatever runs beside it. So the
two loops take turns in short rounds, in the order raw-server, server-raw, ... (a drift then favours neither), and
the figure is reported both as the ratio of total tokens/s and as the median of the per-round ratios.

    .venv/bin/python -m bench.trainer_throughput [--steps 8] [--rounds 16] [--only full|lora]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from shapeyard.client import AdamParams, Datum, ManagedTraining, ModelInput, managed_training
from shapeyard.config import ServerSettings
from shapeyard.models import tiny
from shapeyard.models.loading import load_model
from shapeyard.server import EmbeddedServer

BATCH, LENGTH, WARMUP = 8, 256, 3
TINY = "accounts/fireworks/models/tiny-qwen3"


def batch(seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, tiny.VOCAB_SIZE, (BATCH, LENGTH + 1), generator=generator).tolist()


class RawLoop:
    """The same model, batch and optimizer in plain PyTorch in this process."""

    def __init__(self, lora_rank: int) -> None:
        torch.manual_seed(0)
        self.model = load_model(str(tiny.ensure_tiny_model()), "cpu")
        if lora_rank:
            targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
            self.model = get_peft_model(self.model, LoraConfig(r=lora_rank, lora_alpha=32, target_modules=targets))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=1e-4, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0, foreach=False
        )
        self.tokens = torch.tensor(batch(0))

    def steps(self, count: int) -> float:
        """Seconds for `count` steps."""
        began = time.perf_counter()
        for _ in range(count):
            logits = self.model(input_ids=self.tokens[:, :-1], use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), self.tokens[:, 1:].flatten(), reduction="sum"
            )
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - began


class ServerLoop:
    """The same through a shapeyard server: client -> gateway -> worker, steps submitted ahead."""

    def __init__(self, run: ManagedTraining) -> None:
        self.training = run.training_client
        self.data = [
            Datum(model_input=ModelInput.from_ints(row[:-1]), loss_fn_inputs={"target_tokens": row[1:]})
            for row in batch(0)
        ]
        self.adam = AdamParams(learning_rate=1e-4)

    def steps(self, count: int) -> float:
        began = time.perf_counter()
        futures = []
        for _ in range(count):
            futures.append(self.training.forward_backward(self.data, "cross_entropy"))
            futures.append(self.training.optim_step(self.adam))
        for future in futures:
            future.result()
        return time.perf_counter() - began


def measure(shape: str, lora_rank: int, steps: int, rounds: int) -> tuple[float, float, float]:
    """Tokens/s of both loops and the median of the per-round ratios (which discards rounds that a burst of noise
    hit on one side only)."""
    with (
        tempfile.TemporaryDirectory() as directory,
        EmbeddedServer(ServerSettings(data_dir=Path(directory), port=0, cpu_worker_slots=1)) as server,
    ):
        run = managed_training(
            base_url=server.base_url,
            api_key=server.keys.api_key,
            base_model=TINY,
            training_shape_id=f"accounts/fireworks/trainingShapes/{shape}",
            lora_rank=lora_rank,
        )
        raw_loop, server_loop = RawLoop(lora_rank), ServerLoop(run)
        raw_loop.steps(WARMUP)
        server_loop.steps(WARMUP)
        raw_seconds, server_seconds = [], []
        for round_ in range(rounds):
            if round_ % 2:
                server_seconds.append(server_loop.steps(steps))
                raw_seconds.append(raw_loop.steps(steps))
            else:
                raw_seconds.append(raw_loop.steps(steps))
                server_seconds.append(server_loop.steps(steps))
        run.close(delete_job=True)
    tokens = steps * BATCH * LENGTH
    ratios = [raw / served for raw, served in zip(raw_seconds, server_seconds, strict=True)]
    return tokens * rounds / sum(raw_seconds), tokens * rounds / sum(server_seconds), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="steps per round")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--only", choices=["full", "lora"], help="measure one kind of training only")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the worker runs one thread too
    print(f"tiny Qwen3, batch {BATCH} x {LENGTH} tokens, {args.rounds} alternating rounds of {args.steps} steps")
    for label, shape, rank in (("full", "tiny-qwen3-2k-cpu", 0), ("lora", "tiny-qwen3-2k-cpu-lora", 8)):
        if args.only not in (None, label):
            continue
        raw, served, ratio = measure(shape, rank, args.steps, args.rounds)
        print(
            f"{label:5s} raw {raw:7.0f} tok/s   server {served:7.0f} tok/s   "
            f"ratio of totals {served / raw:.3f}   median ratio per round {ratio:.3f}"
        )


if __name__ == "__main__":
    main()
