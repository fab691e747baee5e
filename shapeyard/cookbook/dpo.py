"""Direct preference optimisation: prefer the chosen answer over the rejected one, relative to a frozen reference.

    shapeyard cookbook dpo --config dpo.yaml          or          shapeyard.cookbook.dpo.run(config)

Data: JSONL rows `{"prompt": [messages] or "text", "chosen": "answer", "rejected": "answer"}`. The reference model
(the base: a LoRA policy's own trainer with the adapter disabled, or a forward-only job for a full-parameter
policy) scores every pair once, before training; the scores are cached in `<log_dir>/reference.json`, and the
reference is released as soon as they are. Each step then runs one forward_backward_custom over `batch_size` pairs
with the loss -log sigmoid(beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)))),
averaged over the pairs, and one optim_step. Log-probabilities are summed over the answer's tokens.

Metrics go to `<log_dir>/metrics.jsonl` (loss, margin, accuracy = the share of pairs whose margin is positive);
held-out preference accuracy on `eval_data` (the share of pairs whose chosen answer the policy finds likelier)
before, every `eval_every` steps and at the end. Checkpoints every `save_every` steps; a rerun resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from transformers import AutoTokenizer

from shapeyard.client import AdamParams, Datum, TrainingClient
from shapeyard.client.training import CustomLoss
from shapeyard.cookbook.config import ReferenceSection, Section, ServerSection, TrainerSection
from shapeyard.cookbook.data import epoch_batches, read_jsonl, supervised_datum
from shapeyard.cookbook.renderers import render_chat
from shapeyard.cookbook.runs import RunDir, progress_bar, provision

SCORING_BATCH = 64  # datums per forward request while scoring


class DPOConfig(Section):
    server: ServerSection = ServerSection()
    trainer: TrainerSection
    reference: ReferenceSection = ReferenceSection()
    train_data: Path
    eval_data: Path | None = None
    eval_every: int = 0  # 0: before training and at the end only
    beta: float = Field(0.1, gt=0)
    batch_size: int = Field(16, ge=1)  # pairs per step
    steps: int | None = Field(None, ge=1)  # default: one epoch
    save_every: int = 0  # 0: only at the end
    log_dir: Path = Path("runs/dpo")
    seed: int = 0
    keep_job: bool = False


@dataclass
class Pair:
    chosen: Datum
    rejected: Datum


@dataclass
class DPOResult:
    job_id: str
    steps: int
    first_loss: float
    final_loss: float
    checkpoint: str
    evaluations: list[dict[str, float]] = field(default_factory=list)  # {"step", "preference_accuracy"}


def render_pair(tokenizer: Any, row: dict[str, Any]) -> Pair:
    prompt = [{"role": "user", "content": row["prompt"]}] if isinstance(row["prompt"], str) else row["prompt"]

    def answer(text: str) -> Datum:
        return supervised_datum(*render_chat(tokenizer, [*prompt, {"role": "assistant", "content": text}]))

    return Pair(answer(row["chosen"]), answer(row["rejected"]))


def interleaved(pairs: list[Pair]) -> list[Datum]:
    """[chosen_0, rejected_0, chosen_1, ...]: the order every request of this recipe sends pairs in."""
    return [d for pair in pairs for d in (pair.chosen, pair.rejected)]


def _cache(run_dir: RunDir) -> Path:
    return run_dir.path / "reference.json"


def _weights(datum: Datum) -> list[float]:
    return datum.loss_fn_inputs["weights"].to_list()


def sequence_logprobs(client: TrainingClient, data: list[Datum]) -> list[float]:
    """log p(answer | prompt) of each datum: its token logprobs summed over the answer (weights 1)."""
    totals = []
    for start in range(0, len(data), SCORING_BATCH):
        chunk = data[start : start + SCORING_BATCH]
        outputs = client.forward(chunk, "cross_entropy").result().loss_fn_outputs
        for datum, output in zip(chunk, outputs, strict=True):
            logprobs = output["logprobs"].to_list()
            totals.append(sum(w * lp for w, lp in zip(_weights(datum), logprobs, strict=True)))
    return totals


def cached_scores(run_dir: RunDir, key: str) -> list[list[float]] | None:
    """[chosen, rejected] reference logprobs per pair, if the log directory holds them for this data."""
    cache = _cache(run_dir)
    saved = json.loads(cache.read_text()) if cache.exists() else {}
    return saved["scores"] if saved.get("key") == key else None


def score_pairs(run_dir: RunDir, reference: TrainingClient, pairs: list[Pair], key: str) -> list[list[float]]:
    flat = sequence_logprobs(reference, interleaved(pairs))
    scores = [flat[i : i + 2] for i in range(0, len(flat), 2)]
    _cache(run_dir).write_text(json.dumps({"key": key, "scores": scores}))
    return scores


def preference_accuracy(client: TrainingClient, pairs: list[Pair]) -> float:
    flat = sequence_logprobs(client, interleaved(pairs))
    return sum(flat[i] > flat[i + 1] for i in range(0, len(flat), 2)) / len(pairs)


def dpo_loss(beta: float, reference: list[list[float]]) -> CustomLoss:
    """The custom loss over datums [chosen_0, rejected_0, chosen_1, ...] whose reference scores are `reference`."""

    def loss(data: list[Datum], logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        sums = torch.stack([torch.dot(lp, torch.tensor(_weights(d))) for d, lp in zip(data, logprobs, strict=True)])
        ref = torch.tensor(reference).flatten()
        rewards = beta * (sums - ref)
        margins = rewards[0::2] - rewards[1::2]
        value = -torch.nn.functional.logsigmoid(margins).mean()
        metrics = {
            "dpo_loss": value.item(),
            "margin": margins.mean().item(),
            "accuracy": (margins > 0).float().mean().item(),
            "chosen_reward": rewards[0::2].mean().item(),
            "rejected_reward": rewards[1::2].mean().item(),
        }
        return value, metrics

    return loss


def run(config: DPOConfig, *, show_progress: bool = True) -> DPOResult:
    run_dir = RunDir(config.log_dir)
    key = hashlib.sha256(config.train_data.read_bytes() + config.trainer.base_model.encode()).hexdigest()
    scores = cached_scores(run_dir, key)
    managed = provision(config.server, config.trainer, run_dir, reference=config.reference if scores is None else None)
    policy = managed.training_client
    tokenizer = AutoTokenizer.from_pretrained(policy.get_info().model_data.tokenizer_id)
    pairs = [render_pair(tokenizer, row) for row in read_jsonl(config.train_data)]
    held_out = [render_pair(tokenizer, row) for row in read_jsonl(config.eval_data)] if config.eval_data else []
    if scores is None:
        scores = score_pairs(run_dir, managed.reference, pairs, key)
        managed.release_reference()  # scored once: the reference's job is no longer needed
    total = config.steps or math.ceil(len(pairs) / config.batch_size)
    batch = epoch_batches(list(range(len(pairs))), config.batch_size, config.seed)

    start = run_dir.resume(policy)
    evaluations: list[dict[str, float]] = []

    def evaluate(step: int) -> None:
        if held_out:
            record = {"step": step, "preference_accuracy": preference_accuracy(policy, held_out)}
            evaluations.append(record)
            run_dir.log({"eval": record})

    if start == 0:
        evaluate(0)
    first_loss = final_loss = math.nan
    adam = AdamParams(learning_rate=config.trainer.learning_rate, weight_decay=0.0)
    with progress_bar("dpo", "loss", show=show_progress) as progress:
        task = progress.add_task("dpo", total=total, completed=start, value=math.nan)
        for step in range(start, total):
            began = time.monotonic()
            indices = batch(step)
            data = interleaved([pairs[i] for i in indices])
            result = policy.forward_backward_custom(data, dpo_loss(config.beta, [scores[i] for i in indices]))
            grad_norm = policy.optim_step(adam).result().metrics.get("grad_norm")  # the loss is already a mean
            metrics = result.result().metrics
            final_loss = metrics["dpo_loss"]
            first_loss = final_loss if math.isnan(first_loss) else first_loss
            done = step + 1
            keys = ("dpo_loss", "margin", "accuracy", "chosen_reward", "rejected_reward")
            run_dir.log(
                {
                    "step": done,
                    **{k: metrics[k] for k in keys},
                    "grad_norm": grad_norm,
                    "seconds": time.monotonic() - began,
                }
            )
            progress.update(task, advance=1, value=final_loss)
            if (config.eval_every and done % config.eval_every == 0) or done == total:
                evaluate(done)
            if config.save_every and done % config.save_every == 0 and done < total:
                run_dir.save_checkpoint(managed, done)
    checkpoint = run_dir.save_checkpoint(managed, total)
    run_dir.close()
    managed.close(delete_job=not config.keep_job)
    return DPOResult(managed.job_id, total, first_loss, final_loss, checkpoint, evaluations)
