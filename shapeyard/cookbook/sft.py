"""Supervised fine-tuning: chat JSONL, trained on what the assistant says.

    shapeyard cookbook sft --config sft.yaml          or          shapeyard.cookbook.sft.run(config)

Each step takes `batch_size` examples, sends them as `micro_batches` forward_backward calls (gradients accumulate
on the server), then one optim_step normalised by the number of loss tokens, at the learning rate `run` schedules.
A step is submitted before the previous one's results are read, so the trainer never waits on the network. With
`run.eval_every`, the run also gets a deployment: before training, every `eval_every` steps and at the end it
hot-loads the current weights and measures exact match (greedy) and held-out loss on `eval_data` by sampling it.
A rerun with the same log directory resumes from its last checkpoint, bit for bit, on the same batches.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from shapeyard.client import AdamParams
from shapeyard.client.futures import Future
from shapeyard.cookbook.config import DeploymentSection, RunSection, Section, ServerSection, TrainerSection
from shapeyard.cookbook.data import epoch_batches, read_jsonl, supervised_datum
from shapeyard.cookbook.evaluation import DeploymentExactMatch, DeploymentHeldoutLoss, Evaluator
from shapeyard.cookbook.runs import RecipeRun, progress_bar
from shapeyard.models.chat import render_chat
from shapeyard.wire.trainer import ForwardBackwardOutput, OptimStepResponse, PathResponse


class SFTConfig(Section):
    server: ServerSection = Field(default_factory=ServerSection)
    trainer: TrainerSection
    deployment: DeploymentSection = Field(default_factory=DeploymentSection)  # only to evaluate (run.eval_every > 0)
    run: RunSection = Field(default_factory=RunSection)  # eval_every 0: no evaluation (and no deployment)
    train_data: Path
    batch_size: int = 32
    micro_batches: int = 1
    eval_data: Path | None = None  # chat JSONL; the reference answer is the last assistant message
    eval_examples: int = 200


@dataclass
class SFTResult:
    job_id: str
    steps: int
    first_loss: float
    final_loss: float
    checkpoint: str
    sampler_path: str
    evaluations: list[dict[str, float]] = field(default_factory=list)  # {"step", "exact_match", "heldout_loss"}


@dataclass
class InFlight:
    """A step submitted to the trainer whose results have not been read yet."""

    step: int  # counted from 0
    learning_rate: float
    began: float
    losses: list[Future[ForwardBackwardOutput]]
    update: Future[OptimStepResponse]
    checkpoint: Future[PathResponse] | None  # saved after this step
    snapshot: Future[PathResponse] | None  # to hot-load and evaluate after this step


def run(config: SFTConfig, *, show_progress: bool = True) -> SFTResult:
    evaluating = config.run.eval_every > 0
    if evaluating and config.eval_data is None:
        raise ValueError("run.eval_every needs eval_data")
    recipe = RecipeRun.start_run(
        "sft", config.server, config.trainer, config.run, deployment=config.deployment if evaluating else None
    )
    training, tokenizer = recipe.policy, recipe.tokenizer
    data = [supervised_datum(*render_chat(tokenizer, example["messages"])) for example in read_jsonl(config.train_data)]
    total = config.run.steps or math.ceil(len(data) / config.batch_size)
    batch = epoch_batches(data, config.batch_size, config.run.seed)

    evaluators: dict[str, Evaluator] = {}
    if evaluating:
        held_out = read_jsonl(config.eval_data)[: config.eval_examples]
        sampler = recipe.managed.sampler
        evaluators = {
            "exact_match": DeploymentExactMatch(sampler, tokenizer, held_out),
            "heldout_loss": DeploymentHeldoutLoss(sampler, tokenizer, held_out),
        }
        if recipe.start == 0:
            recipe.evaluate(0, evaluators)  # the base model, before any training

    def submit(step: int) -> InFlight:
        examples = batch(step)
        size = math.ceil(len(examples) / config.micro_batches)
        losses = [training.forward_backward(examples[i : i + size]) for i in range(0, len(examples), size)]
        lr = config.run.learning_rate(config.trainer.learning_rate, step, total)
        update = training.optim_step(AdamParams(learning_rate=lr, weight_decay=0.0), "num_loss_tokens")
        done = step + 1
        checkpoint = training.save_state(f"step-{done}") if config.run.saves_after(done, total) else None
        snapshot = None
        if evaluating and config.run.evaluates_after(done, total):
            snapshot = training.save_weights_for_sampler(f"eval-{done}")
        return InFlight(step, lr, time.monotonic(), losses, update, checkpoint, snapshot)

    first_loss = final_loss = math.nan
    with progress_bar("sft", "loss", show=show_progress) as progress:
        task = progress.add_task("sft", total=total, completed=recipe.start, value=math.nan)
        pending: InFlight | None = None
        for step in range(recipe.start, total + 1):
            submitted = submit(step) if step < total else None
            if pending is not None:
                outputs = [future.result() for future in pending.losses]
                grad_norm = pending.update.result().metrics.get("grad_norm")
                tokens = sum(out.metrics["response_tokens:sum"] for out in outputs)
                final_loss = sum(out.metrics["loss:sum"] for out in outputs) / max(tokens, 1)
                first_loss = final_loss if math.isnan(first_loss) else first_loss
                done = pending.step + 1
                recipe.log.log(
                    {
                        "step": done,
                        "loss": final_loss,
                        "tokens": tokens,
                        "learning_rate": pending.learning_rate,
                        "grad_norm": grad_norm,
                        "seconds": time.monotonic() - pending.began,
                    }
                )
                progress.update(task, advance=1, value=final_loss)
                if pending.checkpoint is not None:
                    recipe.record(done, pending.checkpoint.result().path)
                if pending.snapshot is not None:
                    recipe.managed.weight_syncer.hotload(pending.snapshot.result().path)
                    scores = recipe.evaluate(done, evaluators)
                    if show_progress:
                        progress.console.print(
                            f"step {done}: exact match {scores['exact_match']:.1%}, "
                            f"held-out loss {scores['heldout_loss']:.3f}"
                        )
            pending = submitted
    sampler_path = training.save_weights_for_sampler(f"final-{total}").result().path
    checkpoint = recipe.finish(total)
    return SFTResult(recipe.managed.job_id, total, first_loss, final_loss, checkpoint, sampler_path, recipe.evaluations)
