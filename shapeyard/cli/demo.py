"""`make demo` (`shapeyard demo`): full-parameter SFT of the embedded tiny model on two-digit addition, on a CPU
training shape.

An in-process shapeyard server; the shape resolved by id to its latest validated version; the SFT recipe through
the real trainer worker, with a deployment on the shape's linked deployment shape; held-out loss and exact-match
accuracy (greedy) measured by sampling that deployment: before training, and after hot-loading the trained weights.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from shapeyard.client import ControlClient
from shapeyard.control.embedded import EmbeddedServer
from shapeyard.control.settings import ServerSettings
from shapeyard.cookbook import sft
from shapeyard.cookbook.config import RunSection, ServerSection, TrainerSection
from shapeyard.cookbook.data import write_jsonl
from shapeyard.cookbook.tasks import digits
from shapeyard.models import tiny
from shapeyard.wire import names

console = Console()
SHAPE = names.public(names.TRAINING_SHAPES, "tiny-qwen3-2k-cpu")
MODEL = names.public(names.MODELS, "tiny-qwen3")
# Measured on a 2-core machine: 95 % held-out accuracy in about two minutes of training.
RECIPE = {"learning_rate": 5e-3, "steps": 400, "batch_size": 64, "warmup_steps": 10, "final_fraction": 0.1}


def main() -> None:
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="shapeyard-demo-"))
    train, test = digits.addition_splits()
    write_jsonl(train, work / "addition-train.jsonl")
    write_jsonl(test, work / "addition-test.jsonl")
    tiny.ensure_tiny_model()

    with EmbeddedServer(ServerSettings(data_dir=work / "server", port=0)) as server:
        console.rule(f"shapeyard server at {server.base_url}")
        with ControlClient(server.base_url, server.keys.api_key) as control:
            version = control.resolve_training_shape(SHAPE)
        snap = version.snapshot
        console.print(
            f"{SHAPE}\n  -> {version.name}: {snap.trainer_mode}, {snap.accelerator_count} x "
            f"{snap.accelerator_type}, context {snap.max_supported_context_length}"
        )
        console.print(f"  {version.validation_report.summary}")
        console.print(f"task: two-digit addition as chat, {len(train)} training / {len(test)} held-out problems")

        config = sft.SFTConfig(
            server=ServerSection(base_url=server.base_url, api_key=server.keys.api_key),
            trainer=TrainerSection(
                training_shape_id=SHAPE,
                base_model=MODEL,
                learning_rate=RECIPE["learning_rate"],
                display_name="demo: addition SFT",
            ),
            run=RunSection(
                log_dir=work / "run",
                steps=RECIPE["steps"],
                warmup_steps=RECIPE["warmup_steps"],
                final_learning_rate_fraction=RECIPE["final_fraction"],
                eval_every=RECIPE["steps"],  # before training and at the end
            ),
            train_data=work / "addition-train.jsonl",
            batch_size=RECIPE["batch_size"],
            eval_data=work / "addition-test.jsonl",
        )
        result = sft.run(config)
    before, after = result.evaluations[0], result.evaluations[-1]

    table = Table("", "before", "after", title="two-digit addition, held-out problems, sampled from the deployment")
    table.add_row("loss per answer token", f"{before['heldout_loss']:.3f}", f"{after['heldout_loss']:.3f}")
    table.add_row("exact-match accuracy (greedy)", f"{before['exact_match']:.1%}", f"{after['exact_match']:.1%}")
    console.print(table)
    console.print(
        f"training loss {result.first_loss:.3f} -> {result.final_loss:.3f} over {result.steps} steps; "
        f"metrics in {config.run.directory('sft') / 'metrics.jsonl'}"
    )
    console.print(f"demo ran in {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
