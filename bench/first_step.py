"""Time from a client's first call to a trained first step, at world size 1 and 2.

A fresh embedded server for every measurement (its own start is not counted; the tiny model is built before),
with one warm trainer worker (started ahead, its modules imported; `shapeyard serve --warm-workers`) or none
(cold: every process of the job starts after the call). The clock starts at the client's first call and stops
when the first optim_step's result is in:

- tinker, world size 1: `create_lora_training_client` at the server root (which starts a job for the model), one
  forward_backward, one optim_step;
- fireworks, world size 1 and 2: `TrainerJobManager.create_and_wait` on `tiny-qwen3-2k-cpu-lora` or
  `tiny-qwen3-2k-cpu-x2-lora`, a training client, one forward_backward, one optim_step.

Cold, most of it is starting processes and importing torch, transformers and peft in them; a warm worker has done
that before the call. Target (issue 13): <= 3 s at world size 1. World size 2 always starts cold (torch's elastic
launcher starts its ranks).

    .venv/bin/python -m bench.first_step [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from shapeyard.control.embedded import EmbeddedServer
from shapeyard.control.settings import ServerSettings
from shapeyard.models import tiny

TINY = "accounts/fireworks/models/tiny-qwen3"
SHAPES = "accounts/fireworks/trainingShapes"
TOKENS = [(3 * i + 1) % 90 + 5 for i in range(20)]
API_KEY, TINKER_KEY = "fw_bench", "tml-bench"
WARM_UP_SECONDS = 10  # before the clock starts, with a warm worker: its imports take about 3 s here


def tinker_first_step(base_url: str) -> None:
    import tinker

    service = tinker.ServiceClient(base_url=base_url, api_key=TINKER_KEY)
    training = service.create_lora_training_client(base_model="tiny-qwen3", rank=8)
    datum = tinker.Datum(
        model_input=tinker.ModelInput.from_ints(TOKENS[:-1]), loss_fn_inputs={"target_tokens": TOKENS[1:]}
    )
    training.forward_backward([datum], "cross_entropy").result()
    training.optim_step(tinker.AdamParams(learning_rate=1e-3)).result()


def fireworks_first_step(shape: str) -> Callable[[str], None]:
    def run(base_url: str) -> None:
        from fireworks.training.sdk import (
            AdamParams,
            Datum,
            FiretitanServiceClient,
            ModelInput,
            TrainerJobConfig,
            TrainerJobManager,
        )

        jobs = TrainerJobManager(api_key=API_KEY, base_url=base_url)
        profile = jobs.resolve_training_profile(f"{SHAPES}/{shape}")
        config = TrainerJobConfig(base_model=TINY, lora_rank=8, training_shape_ref=profile.training_shape)
        endpoint = jobs.create_and_wait(config, poll_interval_s=0.1)
        training = FiretitanServiceClient(base_url=endpoint.base_url, api_key=API_KEY).create_training_client(
            base_model=TINY, lora_rank=8
        )
        datum = Datum(model_input=ModelInput.from_ints(TOKENS[:-1]), loss_fn_inputs={"target_tokens": TOKENS[1:]})
        training.forward_backward([datum], "cross_entropy").result()
        training.optim_step(AdamParams(learning_rate=1e-3)).result()

    return run


def measure(first_step: Callable[[str], None], warm: int) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        settings = ServerSettings(
            data_dir=Path(scratch),
            port=0,
            api_key=API_KEY,
            tinker_api_key=TINKER_KEY,
            cpu_worker_slots=2,
            warm_workers=warm,
        )
        with EmbeddedServer(settings) as server:
            time.sleep(WARM_UP_SECONDS if warm else 0)  # a warm worker imports its modules meanwhile
            began = time.perf_counter()
            first_step(server.base_url)
            return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tiny.ensure_tiny_model()
    cases = {
        "tinker, world size 1, warm worker": (tinker_first_step, 1),
        "fireworks, world size 1, warm worker": (fireworks_first_step("tiny-qwen3-2k-cpu-lora"), 1),
        "tinker, world size 1, cold": (tinker_first_step, 0),
        "fireworks, world size 1, cold": (fireworks_first_step("tiny-qwen3-2k-cpu-lora"), 0),
        "fireworks, world size 2": (fireworks_first_step("tiny-qwen3-2k-cpu-x2-lora"), 0),
    }
    for name, (first_step, warm) in cases.items():
        seconds = [measure(first_step, warm) for _ in range(args.repeats)]
        listed = " ".join(f"{value:.2f}" for value in seconds)
        print(f"{name}: median {statistics.median(seconds):.2f} s ({listed})")


if __name__ == "__main__":
    main()
