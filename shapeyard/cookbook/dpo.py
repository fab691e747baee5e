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
before, every `run.eval_every` steps and at the end. Checkpoints every `run.save_every` steps; a rerun resumes.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field

from shapeyard.client import AdamParams, Datum, TrainingClient
from shapeyard.client.training import CustomLoss
from shapeyard.cookbook.config import ReferenceSection, RunSection, Section, ServerSection, TrainerSection
from shapeyard.cookbook.data import epoch_batches, read_jsonl, supervised_datum
from shapeyard.cookbook.runs import RecipeRun, progress_bar
from shapeyard.models.chat import render_chat

SCORING_BATCH = 64  # datums per forward request while scoring


class DPOConfig(Section):
    server: ServerSection = Field(default_factory=ServerSection)
    trainer: TrainerSection
    reference: ReferenceSection = Field(default_factory=ReferenceSection)
    run: RunSection = Field(default_factory=RunSection)
    train_data: Path
    eval_data: Path | None = None
    beta: float = Field(0.1, gt=0)
    batch_size: int = Field(16, ge=1)  # pairs per step


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


def _cache(log_dir: Path) -> Path:
    return log_dir / "reference.json"


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


class ReferenceScores(BaseModel):
    """`<log_dir>/reference.json`: the reference's scores of the training pairs, for the data they were made of."""

    key: str  # a digest of the training data and the base model
    scores: list[list[float]]  # [chosen, rejected] reference logprobs per pair


def cached_scores(log_dir: Path, key: str) -> list[list[float]] | None:
    """The cached reference scores, if the log directory holds them for this data."""
    cache = _cache(log_dir)
    saved = ReferenceScores.model_validate_json(cache.read_text()) if cache.exists() else None
    return saved.scores if saved is not None and saved.key == key else None


def score_pairs(log_dir: Path, reference: TrainingClient, pairs: list[Pair], key: str) -> list[list[float]]:
    flat = sequence_logprobs(reference, interleaved(pairs))
    scores = [flat[i : i + 2] for i in range(0, len(flat), 2)]
    _cache(log_dir).write_text(ReferenceScores(key=key, scores=scores).model_dump_json())
    return scores


@dataclass
class PreferenceAccuracy:
    """The share of pairs whose chosen answer the policy finds likelier than the rejected one."""

    client: TrainingClient
    pairs: list[Pair]

    def __call__(self) -> float:
        flat = sequence_logprobs(self.client, interleaved(self.pairs))
        return sum(flat[i] > flat[i + 1] for i in range(0, len(flat), 2)) / len(self.pairs)


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
    key = hashlib.sha256(config.train_data.read_bytes() + config.trainer.base_model.encode()).hexdigest()
    log_dir = config.run.directory("dpo")
    scores = cached_scores(log_dir, key)
    recipe = RecipeRun.start_run(
        "dpo", config.server, config.trainer, config.run, reference=config.reference if scores is None else None
    )
    policy, tokenizer = recipe.policy, recipe.tokenizer
    pairs = [render_pair(tokenizer, row) for row in read_jsonl(config.train_data)]
    held_out = [render_pair(tokenizer, row) for row in read_jsonl(config.eval_data)] if config.eval_data else []
    if scores is None:
        scores = score_pairs(log_dir, recipe.managed.reference, pairs, key)
        recipe.managed.release_reference()  # scored once: the reference's job is no longer needed
    total = config.run.steps or math.ceil(len(pairs) / config.batch_size)
    batch = epoch_batches(list(range(len(pairs))), config.batch_size, config.run.seed)
    evaluators = {"preference_accuracy": PreferenceAccuracy(policy, held_out)}
    if recipe.start == 0 and held_out:
        recipe.evaluate(0, evaluators)

    first_loss = final_loss = math.nan
    with progress_bar("dpo", "loss", show=show_progress) as progress:
        task = progress.add_task("dpo", total=total, completed=recipe.start, value=math.nan)
        for step in range(recipe.start, total):
            began, done = time.monotonic(), step + 1
            indices = batch(step)
            data = interleaved([pairs[i] for i in indices])
            result = policy.forward_backward_custom(data, dpo_loss(config.beta, [scores[i] for i in indices]))
            lr = config.run.learning_rate(config.trainer.learning_rate, step, total)
            adam = AdamParams(learning_rate=lr, weight_decay=0.0)
            grad_norm = policy.optim_step(adam).result().metrics.get("grad_norm")  # the loss is already a mean
            metrics = result.result().metrics
            final_loss = metrics["dpo_loss"]
            first_loss = final_loss if math.isnan(first_loss) else first_loss
            keys = ("dpo_loss", "margin", "accuracy", "chosen_reward", "rejected_reward")
            seconds = time.monotonic() - began
            recipe.log.log({"step": done, **{k: metrics[k] for k in keys}, "grad_norm": grad_norm, "seconds": seconds})
            progress.update(task, advance=1, value=final_loss)
            if held_out and config.run.evaluates_after(done, total):
                recipe.evaluate(done, evaluators)
            if config.run.saves_after(done, total):
                recipe.save(done)
    checkpoint = recipe.finish(total)
    return DPOResult(recipe.managed.job_id, total, first_loss, final_loss, checkpoint, recipe.evaluations)
