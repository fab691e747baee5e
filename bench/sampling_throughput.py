"""Sampling tokens/s through a shapeyard deployment versus raw `model.generate` in this process.

Same model (the embedded tiny Qwen3), same 8 chat prompts of different lengths, 64 new tokens each, temperature 1,
no top-p / top-k, both in one run. Both sides ignore the eos token, so that each produces exactly 8 x 64 tokens
(counted and checked every round). The server path is the real one: client -> control plane gateway -> deployment
worker process, which decodes with its sampling backend and returns per-token logprobs, as a trainer's rollouts want.

How the client sends the 8 prompts (`--client`):
  list     one completions request whose prompt is the list of 8 token lists: the same one batch that raw
           `generate` gets, so this is the like-for-like comparison.
  threads  8 concurrent requests of one prompt each, as `DeploymentSampler` users send them; the worker's batcher
           gathers requests that arrive within 20 ms of each other into one decode.
  both     each of the above, one line each, against the same raw rounds (the default).

The sides run in alternating rounds, so that load from elsewhere on the machine falls on both alike.

    .venv/bin/python -m bench.sampling_throughput [--rounds 9] [--client both|list|threads]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from shapeyard.client import ControlClient
from shapeyard.client.managed import wait_until_serving
from shapeyard.client.sampling import DeploymentSampler
from shapeyard.control.embedded import EmbeddedServer
from shapeyard.control.settings import ServerSettings
from shapeyard.models import tiny
from shapeyard.models.loading import load_model, load_tokenizer
from shapeyard.runtime.process import retain_freed_memory
from shapeyard.wire import routes
from shapeyard.wire.control import CreateDeploymentRequest
from shapeyard.wire.inference import CompletionRequest, CompletionResponse

PROMPTS, NEW_TOKENS = 8, 64
TINY = "accounts/fireworks/models/tiny-qwen3"
SHAPE = "accounts/fireworks/deploymentShapes/rft-tiny-qwen3-cpu"
# Operands of growing size, so that the prompts differ in length and the batch needs left padding.
OPERANDS = [(3, 4), (12, 5), (7, 308), (4096, 17), (55555, 2), (123456, 7890), (1, 2345678), (98765432, 123456)]
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}

Round = Callable[[], tuple[float, int]]  # one round: (seconds, tokens generated)


def chat_prompts() -> list[list[int]]:
    tokenizer = load_tokenizer(str(tiny.ensure_tiny_model()))
    return [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": f"{a}+{b}="}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
        for a, b in OPERANDS
    ]


class RawSampler:
    """The same prompts through `model.generate` in this process: one left-padded batch."""

    def __init__(self, prompts: list[list[int]]) -> None:
        self.model = load_model(str(tiny.ensure_tiny_model()), "cpu").eval()
        pad = self.model.generation_config.pad_token_id
        self.width = max(map(len, prompts))
        self.input_ids = torch.tensor([[pad] * (self.width - len(p)) + p for p in prompts])
        self.attention_mask = torch.tensor([[0] * (self.width - len(p)) + [1] * len(p) for p in prompts])

    def round(self) -> tuple[float, int]:
        began = time.perf_counter()
        output = self.model.generate(
            input_ids=self.input_ids,
            attention_mask=self.attention_mask,
            do_sample=True,
            max_new_tokens=NEW_TOKENS,
            eos_token_id=None,  # the tiny model emits eos after a few tokens; the engine only stops where told
            **SAMPLING,
        )
        seconds = time.perf_counter() - began
        # Without an eos nothing is padded, so every new column holds a generated token of every row.
        return seconds, output[:, self.width :].numel()


class ListClient:
    """One completions request carrying all prompts."""

    def __init__(self, base_url: str, api_key: str, deployment: str, prompts: list[list[int]]) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"X-Api-Key": api_key}, timeout=300.0)
        # The same body DeploymentSampler sends (logprobs included), only with the list prompt.
        request = CompletionRequest(model=deployment, prompt=prompts, max_tokens=NEW_TOKENS, logprobs=True, **SAMPLING)
        self.body = request.model_dump(exclude_none=True)

    def round(self) -> tuple[float, int]:
        began = time.perf_counter()
        response = self.http.post(routes.COMPLETIONS, json=self.body)
        response.raise_for_status()
        choices = CompletionResponse.model_validate_json(response.content).choices
        seconds = time.perf_counter() - began
        return seconds, sum(len(choice.raw_output.completion_token_ids) for choice in choices)


class ThreadsClient:
    """One `DeploymentSampler.sample` request per prompt, all in flight at once."""

    def __init__(self, sampler: DeploymentSampler, prompts: list[list[int]]) -> None:
        self.sampler, self.prompts = sampler, prompts
        self.pool = ThreadPoolExecutor(len(prompts))

    def round(self) -> tuple[float, int]:
        began = time.perf_counter()
        futures = [
            self.pool.submit(self.sampler.sample, prompt, n=1, max_tokens=NEW_TOKENS, **SAMPLING)
            for prompt in self.prompts
        ]
        tokens = sum(len(sequence.tokens) for future in futures for sequence in future.result())
        seconds = time.perf_counter() - began
        return seconds, tokens


def measure(clients: list[str], rounds: int) -> tuple[list[float], dict[str, list[float]]]:
    """Seconds per round of raw generate and of each client, the rounds alternating."""
    prompts = chat_prompts()
    expected = PROMPTS * NEW_TOKENS
    with (
        tempfile.TemporaryDirectory() as directory,
        EmbeddedServer(ServerSettings(data_dir=Path(directory), port=0, cpu_worker_slots=1)) as server,
        ControlClient(server.base_url, server.keys.api_key) as control,
    ):
        shape = control.deployment_shape_versions(SHAPE).deployment_shape_versions[0].name
        request = CreateDeploymentRequest(base_model=TINY, deployment_shape=shape, max_replica_count=1)
        control.create_deployment(request, "bench")
        deployment = wait_until_serving(control, "bench").name
        sampler = DeploymentSampler(server.base_url, server.keys.api_key, deployment)
        loops: dict[str, Round] = {"raw": RawSampler(prompts).round}
        if "list" in clients:
            loops["list"] = ListClient(server.base_url, server.keys.api_key, deployment, prompts).round
        if "threads" in clients:
            loops["threads"] = ThreadsClient(sampler, prompts).round
        for loop in loops.values():  # warm-up: first-call costs (allocations, connections) stay out
            loop()
        seconds: dict[str, list[float]] = {label: [] for label in loops}
        for index in range(rounds):
            for label, loop in loops.items():
                elapsed, tokens = loop()
                assert tokens == expected, f"round {index}: {label} generated {tokens} tokens, not {expected}"
                seconds[label].append(elapsed)
        sampler.close()
        control.delete_deployment("bench")
    print(f"tokens generated per round: {expected} on each side (checked every round)")
    return seconds.pop("raw"), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--client", choices=["list", "threads", "both"], default="both", help="see the docstring")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the deployment worker runs one thread too
    retain_freed_memory()  # and keeps the memory it frees, as every worker process does
    clients = ["list", "threads"] if args.client == "both" else [args.client]
    print(f"tiny Qwen3, {PROMPTS} prompts x {NEW_TOKENS} new tokens, {args.rounds} alternating rounds")
    raw_seconds, served = measure(clients, args.rounds)
    tokens = PROMPTS * NEW_TOKENS * args.rounds
    raw = tokens / sum(raw_seconds)
    for label, server_seconds in served.items():
        rate = tokens / sum(server_seconds)
        # Per-round ratios pair each server round with the raw round just before it; the median drops the
        # rounds that a burst of noise hit on one side only.
        ratio = statistics.median(r / s for r, s in zip(raw_seconds, server_seconds, strict=True))
        print(
            f"{label:7s} raw {raw:7.0f} tok/s   server {rate:7.0f} tok/s   "
            f"ratio of totals {rate / raw:.3f}   median ratio per round {ratio:.3f}"
        )


if __name__ == "__main__":
    main()
