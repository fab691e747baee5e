"""Supervised fine-tuning: chat JSONL, trained on what the assistant says.

    shapeyard cookbook sft --config sft.yaml          or          shapeyard.cookbook.sft.run(config)

Each step takes `batch_size` examples, sends them as `micro_batches` forward_backward calls (gradients accumulate
on the server), then one optim_step normalised by the number of loss tokens. Metrics go to `<log_dir>/metrics.jsonl`;
every `save_every` steps a checkpoint (weights and optimizer) is saved, and a rerun with the same log_dir resumes
from the last one, bit for bit, on the same batches: on the same trainer job if it is still there, else on a new one.
With `eval_every`, the run also gets a deployment: before training, every `eval_every` steps and at the end it
hot-loads the current weights and measures exact match (greedy) and held-out loss on `eval_data` by sampling it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from shapeyard.client import AdamParams, ManagedTraining
from shapeyard.cookbook.config import DeploymentSection, Section, ServerSection, TrainerSection
from shapeyard.cookbook.data import epoch_batches, read_jsonl, supervised_datum
from shapeyard.cookbook.evaluation import deployment_exact_match, deployment_heldout_loss
from shapeyard.cookbook.renderers import render_chat
from shapeyard.cookbook.runs import RunDir, progress_bar, provision


class SFTConfig(Section):
    server: ServerSection = ServerSection()
    trainer: TrainerSection
    deployment: DeploymentSection = DeploymentSection()  # used only to evaluate (eval_every > 0)
    train_data: Path
    batch_size: int = 32
    micro_batches: int = 1
    steps: int | None = None  # default: one epoch
    warmup_steps: int = 0
    final_learning_rate_fraction: float = 1.0  # linear decay to this fraction of the learning rate
    save_every: int = 0  # 0: only at the end
    log_dir: Path = Path("runs/sft")
    seed: int = 0
    keep_job: bool = False  # keep the trainer running after the run (its checkpoints and snapshots stay either way)
    eval_every: int = 0  # 0: no evaluation (and no deployment)
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


def learning_rate(config: SFTConfig, step: int, total: int) -> float:
    base = config.trainer.learning_rate
    if step < config.warmup_steps:
        return base * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(total - config.warmup_steps, 1)
    return base * (1 - (1 - config.final_learning_rate_fraction) * progress)


class Evaluator:
    """Hot-loads a sampler snapshot into the run's deployment and scores held-out examples by sampling it."""

    def __init__(self, config: SFTConfig, managed: ManagedTraining, tokenizer: Any, log: Callable[[dict], None]):
        if config.eval_data is None:
            raise ValueError("eval_every needs eval_data")
        self.examples = read_jsonl(config.eval_data)[: config.eval_examples]
        self.managed, self.tokenizer, self.log = managed, tokenizer, log
        self.results: list[dict[str, float]] = []

    def __call__(self, step: int, snapshot: str | None) -> dict[str, float]:
        if snapshot is not None:
            self.managed.weight_syncer.hotload(snapshot)
        sampler = self.managed.sampler
        record = {
            "step": step,
            "exact_match": deployment_exact_match(sampler, self.tokenizer, self.examples),
            "heldout_loss": deployment_heldout_loss(sampler, self.tokenizer, self.examples),
        }
        self.results.append(record)
        self.log({"eval": record})
        return record


def run(config: SFTConfig, *, show_progress: bool = True) -> SFTResult:
    run_dir = RunDir(config.log_dir)
    deployment = config.deployment if config.eval_every > 0 else None
    managed = provision(config.server, config.trainer, run_dir, deployment=deployment)
    training = managed.training_client
    tokenizer = AutoTokenizer.from_pretrained(training.get_info().model_data.tokenizer_id)
    data = [supervised_datum(*render_chat(tokenizer, example["messages"])) for example in read_jsonl(config.train_data)]
    total = config.steps or math.ceil(len(data) / config.batch_size)
    batch = epoch_batches(data, config.batch_size, config.seed)

    start = run_dir.resume(training)

    evaluate = Evaluator(config, managed, tokenizer, run_dir.log) if config.eval_every else None
    if evaluate is not None and start == 0:
        evaluate(0, None)  # the base model, before any training
    first_loss = final_loss = math.nan
    with progress_bar("sft", "loss", show=show_progress) as progress:
        task = progress.add_task("sft", total=total, completed=start, value=math.nan)
        pending: tuple[int, float, float, list, Any, Any, Any] | None = None
        for step in range(start, total + 1):
            # Submit this step before reading the last one's results, so the trainer never waits on the network.
            submitted = None
            if step < total:
                examples = batch(step)
                size = math.ceil(len(examples) / config.micro_batches)
                futures = [
                    training.forward_backward(examples[i : i + size], "cross_entropy")
                    for i in range(0, len(examples), size)
                ]
                lr = learning_rate(config, step, total)
                optim = training.optim_step(AdamParams(learning_rate=lr, weight_decay=0.0), "num_loss_tokens")
                due = config.save_every and (step + 1) % config.save_every == 0 and step + 1 < total
                saving = training.save_state(f"step-{step + 1}") if due else None  # ordered after this step's update
                evaluating = (config.eval_every and (step + 1) % config.eval_every == 0) or step + 1 == total
                snapshot = training.save_weights_for_sampler(f"eval-{step + 1}") if evaluate and evaluating else None
                submitted = (step, lr, time.monotonic(), futures, optim, saving, snapshot)
            if pending is not None:
                done, lr_done, began, futures_done, optim_done, saving_done, snapshot_done = pending
                outputs = [future.result() for future in futures_done]
                grad_norm = optim_done.result().metrics.get("grad_norm")
                tokens = sum(out.metrics["response_tokens:sum"] for out in outputs)
                final_loss = sum(out.metrics["loss:sum"] for out in outputs) / max(tokens, 1)
                first_loss = final_loss if math.isnan(first_loss) else first_loss
                record = {
                    "step": done + 1,
                    "loss": final_loss,
                    "tokens": tokens,
                    "learning_rate": lr_done,
                    "grad_norm": grad_norm,
                    "seconds": time.monotonic() - began,
                }
                run_dir.log(record)
                progress.update(task, advance=1, value=final_loss)
                if saving_done is not None:
                    run_dir.record_checkpoint(managed.job_id, done + 1, saving_done.result().path)
                if snapshot_done is not None:
                    scores = evaluate(done + 1, snapshot_done.result().path)
                    if show_progress:
                        progress.console.print(
                            f"step {done + 1}: exact match {scores['exact_match']:.1%}, "
                            f"held-out loss {scores['heldout_loss']:.3f}"
                        )
            pending = submitted
    checkpoint = run_dir.save_checkpoint(managed, total)
    run_dir.close()
    sampler = training.save_weights_for_sampler(f"final-{total}").result().path
    managed.close(delete_job=not config.keep_job)
    evaluations = evaluate.results if evaluate else []
    return SFTResult(managed.job_id, total, first_loss, final_loss, checkpoint, sampler, evaluations)
