"""forward_backward + optim_step tokens/s through a shapeyard server versus a raw PyTorch loop.

Same model (the embedded tiny Qwen3), same batch (8 sequences x 256 tokens), same optimizer, both in one run, for
full-parameter and LoRA training. The server path is the real one: client -> control plane gateway -> worker
process; the client submits steps ahead (as the SDKs allow) and waits for the results. The raw loop is plain
PyTorch in a process of its own, as the worker's model is.

Two effects make a single comparison unreliable on a small shared machine, and the design answers both:
- the speed of one loop drifts by tens of percent over seconds, whatever runs beside it: the two loops take turns in
  short rounds, in the order raw-server, server-raw, ..., so that a drift favours neither;
- a process's speed depends on where its memory landed: the very same loop in two fresh processes differs by 5-10 %
  at times, and the difference disappears with address-space randomisation turned off (`setarch -R`). So the
  comparison is repeated over several fresh pairs of processes (a new trainer job and a new raw process each).
The figure is the ratio of total tokens/s and the median of the per-round ratios, over all pairs.

The worker's processes fix glibc's malloc thresholds so that the memory a step frees serves the next step
(`shapeyard.runtime.process.retain_freed_memory`). The raw loop does the same, so that the ratio is the cost of the
server path alone; `--plain-raw` leaves it with glibc's defaults, as a plain PyTorch loop runs.

    .venv/bin/python -m bench.trainer_throughput [--pairs 8] [--rounds 4] [--steps 8] [--only full|lora]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from shapeyard.client import AdamParams, Datum, ManagedTraining, ModelInput, managed_training
from shapeyard.control.embedded import EmbeddedServer
from shapeyard.control.settings import ServerSettings
from shapeyard.models import tiny
from shapeyard.models.loading import load_model
from shapeyard.runtime.process import retain_freed_memory

BATCH, LENGTH, WARMUP = 8, 256, 3
TINY = "accounts/fireworks/models/tiny-qwen3"


def batch(seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, tiny.VOCAB_SIZE, (BATCH, LENGTH + 1), generator=generator).tolist()


class RawLoop:
    """The same model, batch and optimizer in plain PyTorch."""

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


def run_raw_loop(connection: Connection, lora_rank: int, retain: bool) -> None:
    """The raw process: runs `count` steps whenever asked and answers their seconds; None ends it."""
    torch.set_num_threads(1)
    if retain:
        retain_freed_memory()
    loop = RawLoop(lora_rank)
    loop.steps(WARMUP)
    connection.send(None)
    while (count := connection.recv()) is not None:
        connection.send(loop.steps(count))


class RawProcess:
    """A RawLoop in a fresh process, like the worker's model; `retain`: with malloc set up as the worker's."""

    def __init__(self, lora_rank: int, retain: bool) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, theirs = context.Pipe()
        self.process = context.Process(target=run_raw_loop, args=(theirs, lora_rank, retain), daemon=True)
        self.process.start()
        theirs.close()
        self.connection.recv()  # warmed up

    def steps(self, count: int) -> float:
        self.connection.send(count)
        return self.connection.recv()

    def close(self) -> None:
        self.connection.send(None)
        self.process.join()


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


def measure(
    shape: str, lora_rank: int, steps: int, rounds: int, pairs: int, retain: bool
) -> tuple[list[float], list[float]]:
    """Seconds per round of each side, over `pairs` fresh pairs of processes."""
    raw_seconds: list[float] = []
    server_seconds: list[float] = []
    with (
        tempfile.TemporaryDirectory() as directory,
        EmbeddedServer(ServerSettings(data_dir=Path(directory), port=0, cpu_worker_slots=1)) as server,
    ):
        for _ in range(pairs):
            run = managed_training(
                base_url=server.base_url,
                api_key=server.keys.api_key,
                base_model=TINY,
                training_shape_id=f"accounts/fireworks/trainingShapes/{shape}",
                lora_rank=lora_rank,
            )
            raw_loop, server_loop = RawProcess(lora_rank, retain), ServerLoop(run)
            server_loop.steps(WARMUP)
            for round_ in range(rounds):
                if round_ % 2:
                    server_seconds.append(server_loop.steps(steps))
                    raw_seconds.append(raw_loop.steps(steps))
                else:
                    raw_seconds.append(raw_loop.steps(steps))
                    server_seconds.append(server_loop.steps(steps))
            raw_loop.close()
            run.close(delete_job=True)
    return raw_seconds, server_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="steps per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per pair of processes")
    parser.add_argument("--pairs", type=int, default=8, help="fresh pairs of processes (trainer job, raw loop)")
    parser.add_argument("--only", choices=["full", "lora"], help="measure one kind of training only")
    parser.add_argument("--plain-raw", action="store_true", help="the raw loop with glibc's default malloc thresholds")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the client's side; the worker and the raw loop run one thread each
    print(
        f"tiny Qwen3, batch {BATCH} x {LENGTH} tokens, {args.pairs} pairs of processes x {args.rounds} alternating "
        f"rounds of {args.steps} steps"
    )
    tokens = args.steps * BATCH * LENGTH
    for label, shape, rank in (("full", "tiny-qwen3-2k-cpu", 0), ("lora", "tiny-qwen3-2k-cpu-lora", 8)):
        if args.only not in (None, label):
            continue
        raw, served = measure(shape, rank, args.steps, args.rounds, args.pairs, not args.plain_raw)
        ratios = [r / s for r, s in zip(raw, served, strict=True)]
        pairs = [slice(i, i + args.rounds) for i in range(0, len(raw), args.rounds)]
        per_pair = " ".join(f"{sum(raw[p]) / sum(served[p]):.3f}" for p in pairs)
        print(
            f"{label:5s} raw {tokens * len(raw) / sum(raw):7.0f} tok/s   "
            f"server {tokens * len(served) / sum(served):7.0f} tok/s   ratio of totals {sum(raw) / sum(served):.3f}   "
            f"median ratio per round {statistics.median(ratios):.3f}   (per pair: {per_pair})"
        )


if __name__ == "__main__":
    main()
