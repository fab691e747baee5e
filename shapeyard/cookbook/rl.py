"""GRPO-style reinforcement learning from a verifiable reward.

    shapeyard cookbook rl --config rl.yaml          or          shapeyard.cookbook.rl.run(config, task=...)

Each step samples `group_size` completions of each of `groups_per_step` prompts from the run's deployment and scores
them with the task's reward (`shapeyard.cookbook.tasks.base.RLTask`; default: 1 for the reference answer, exactly,
else 0). A completion's advantage is its reward minus its group's mean; groups whose rewards are all equal teach
nothing and are dropped. With `kl_beta > 0` the reference model (the base) scores the same tokens, and each token's
advantage moves by kl_beta * (mean log-ratio - its log-ratio to the reference), which pulls the policy back toward
the reference where it strays most. Then one forward_backward with the chosen loss and one optim_step, normalised
by the number of loss tokens. Every `sync_every` steps the new weights are hot-loaded into the deployment; in
between, samples come from older weights, and the losses' importance ratio accounts for it.

Metrics go to `<log_dir>/metrics.jsonl`: reward, the server's loss metrics (KL to the sampler, importance ratio,
clip fractions), the KL to the reference, timings; held-out greedy accuracy on `eval_data` before, every
`run.eval_every` steps and at the end. Checkpoints every `run.save_every` steps; a rerun with the same log_dir
resumes.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any, Literal

from pydantic import Field

from shapeyard.client import AdamParams, Datum, ModelInput
from shapeyard.client.sampling import Completion
from shapeyard.cookbook.config import (
    DeploymentSection,
    ReferenceSection,
    RunSection,
    Section,
    ServerSection,
    TrainerSection,
)
from shapeyard.cookbook.data import read_jsonl
from shapeyard.cookbook.evaluation import DeploymentExactMatch
from shapeyard.cookbook.runs import RecipeRun, progress_bar
from shapeyard.cookbook.tasks.base import ExactAnswer, RLTask, Row
from shapeyard.models.chat import render_prompt

DEFAULT_STEPS = 50


class RLConfig(Section):
    server: ServerSection = Field(default_factory=ServerSection)
    trainer: TrainerSection
    deployment: DeploymentSection = Field(default_factory=DeploymentSection)
    reference: ReferenceSection = Field(default_factory=ReferenceSection)  # provisioned only when kl_beta > 0
    run: RunSection = Field(default_factory=RunSection)  # steps default: 50
    train_data: Path  # JSONL rows the task makes prompts of (the default task: chat, the answer last)
    eval_data: Path | None = None  # chat JSONL: greedy accuracy against the last message
    eval_examples: int = 200
    loss: Literal["importance_sampling", "ppo", "cispo", "dapo", "gspo"] = "importance_sampling"
    loss_config: dict[str, float] = {}
    kl_beta: float = Field(0.0, ge=0)
    groups_per_step: int = Field(16, ge=1)
    group_size: int = Field(8, ge=2)  # advantages compare completions of one prompt
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, gt=0)
    sync_every: int = Field(1, ge=1)
    init_from_checkpoint: str | None = None  # weights to start from, e.g. "cross_job://<job>/<checkpoint>" of SFT


@dataclass
class Rollout:
    prompt: list[int]
    completion: Completion
    reward: float


@dataclass
class RLResult:
    job_id: str
    steps: int
    rewards: list[float]  # mean reward of each step run here
    checkpoint: str
    evaluations: list[dict[str, float]] = field(default_factory=list)  # {"step", "accuracy"}


def sample_groups(recipe: RecipeRun, rows: list[Row], task: RLTask, config: RLConfig, seed: int) -> list[list[Rollout]]:
    """`group_size` completions of each row's prompt, in one request, each scored."""
    tokenizer = recipe.tokenizer
    prompts = [render_prompt(tokenizer, task.prompt(row)) for row in rows]
    sampled = recipe.managed.sampler.sample_batch(
        prompts,
        n=config.group_size,
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        seed=seed,
        stop_token_ids=[tokenizer.eos_token_id],
    )
    size = config.group_size
    return [
        [Rollout(prompt, s, task.reward(s.text, row)) for s in sampled[i * size : (i + 1) * size]]
        for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True))
    ]


def token_advantages(groups: list[list[Rollout]]) -> list[tuple[Rollout, list[float]]]:
    """Reward minus the group mean, on every completion token; groups with equal rewards are dropped."""
    kept = []
    for group in groups:
        mean = fmean(r.reward for r in group)
        if any(r.reward != mean for r in group):
            kept += [(r, [r.reward - mean] * len(r.completion.tokens)) for r in group]
    return kept


def scored_sequence(rollout: Rollout) -> tuple[ModelInput, list[int], int]:
    """Model input, targets, and the number of prompt positions (which carry no loss)."""
    tokens = rollout.prompt + rollout.completion.tokens
    return ModelInput.from_ints(tokens[:-1]), tokens[1:], len(rollout.prompt) - 1


def reference_kl(recipe: RecipeRun, batch: list[tuple[Rollout, list[float]]], kl_beta: float) -> float:
    """Shifts each token's advantage by kl_beta * (mean - its sampler-to-reference log-ratio); returns the mean."""
    data = []
    for rollout, _ in batch:
        model_input, targets, _ = scored_sequence(rollout)
        data.append(Datum(model_input=model_input, loss_fn_inputs={"target_tokens": targets}))
    outputs = recipe.managed.reference.forward(data, "cross_entropy").result().loss_fn_outputs
    ratios = []
    for (rollout, _), output in zip(batch, outputs, strict=True):
        reference = output["logprobs"].to_list()[-len(rollout.completion.tokens) :]
        ratios.append([q - p for q, p in zip(rollout.completion.logprobs, reference, strict=True)])
    mean = fmean(value for row in ratios for value in row)
    for (_, advantages), row in zip(batch, ratios, strict=True):
        advantages[:] = [a + kl_beta * (mean - value) for a, value in zip(advantages, row, strict=True)]
    return mean


def policy_datum(rollout: Rollout, advantages: list[float]) -> Datum:
    model_input, targets, prompt_positions = scored_sequence(rollout)
    zeros = [0.0] * prompt_positions
    return Datum(
        model_input=model_input,
        loss_fn_inputs={
            "target_tokens": targets,
            "logprobs": zeros + rollout.completion.logprobs,
            "advantages": zeros + advantages,
        },
    )


def run(config: RLConfig, *, task: RLTask | None = None, show_progress: bool = True) -> RLResult:
    task = task or ExactAnswer()
    recipe = RecipeRun.start_run(
        "rl",
        config.server,
        config.trainer,
        config.run,
        deployment=config.deployment,
        reference=config.reference if config.kl_beta > 0 else None,
    )
    policy, total = recipe.policy, config.run.steps or DEFAULT_STEPS
    rows = read_jsonl(config.train_data)
    held_out = read_jsonl(config.eval_data)[: config.eval_examples] if config.eval_data else []
    evaluators = {"accuracy": DeploymentExactMatch(recipe.managed.sampler, recipe.tokenizer, held_out)}
    if recipe.start == 0 and config.init_from_checkpoint:
        policy.load_state(config.init_from_checkpoint).result()
    recipe.managed.weight_syncer.save_and_hotload(f"rl-{recipe.start}")  # the deployment samples the policy's weights
    if recipe.start == 0 and held_out:
        recipe.evaluate(0, evaluators)

    rewards: list[float] = []
    with progress_bar("rl", "reward", show=show_progress) as progress:
        bar = progress.add_task("rl", total=total, completed=recipe.start, value=math.nan)
        for step in range(recipe.start, total):
            began, done = time.monotonic(), step + 1
            step_seed = config.run.seed * 1_000_003 + step
            chosen = random.Random(step_seed).sample(rows, min(config.groups_per_step, len(rows)))
            groups = sample_groups(recipe, chosen, task, config, step_seed)
            sampled_at = time.monotonic()
            batch = token_advantages(groups)
            record: dict[str, Any] = {
                "step": done,
                "reward": fmean(r.reward for group in groups for r in group),
                "groups_kept": len(batch) // config.group_size,
                "completion_tokens": sum(len(r.completion.tokens) for group in groups for r in group),
            }
            if batch:
                if config.kl_beta > 0:
                    record["kl_reference"] = reference_kl(recipe, batch, config.kl_beta)
                data = [policy_datum(rollout, advantages) for rollout, advantages in batch]
                trained = policy.forward_backward(data, config.loss, config.loss_config or None)
                lr = config.run.learning_rate(config.trainer.learning_rate, step, total)
                stepped = policy.optim_step(AdamParams(learning_rate=lr, weight_decay=0.0), "num_loss_tokens")
                record.update({f"train/{key}": value for key, value in trained.result().metrics.items()})
                record["grad_norm"] = stepped.result().metrics.get("grad_norm")
            evaluating = bool(held_out) and config.run.evaluates_after(done, total)
            if evaluating or done == total or done % config.sync_every == 0:
                recipe.managed.weight_syncer.save_and_hotload(f"rl-{done}")
            if evaluating:
                recipe.evaluate(done, evaluators)
            if config.run.saves_after(done, total):
                recipe.save(done)
            record.update(sample_seconds=sampled_at - began, seconds=time.monotonic() - began)
            recipe.log.log(record)
            rewards.append(record["reward"])
            progress.update(bar, advance=1, value=record["reward"])
    checkpoint = recipe.finish(total)
    return RLResult(recipe.managed.job_id, total, rewards, checkpoint, recipe.evaluations)
