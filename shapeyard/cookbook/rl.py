"""GRPO-style reinforcement learning from a verifiable reward.

    shapeyard cookbook rl --config rl.yaml          or          shapeyard.cookbook.rl.run(config, reward=...)

Each step samples `group_size` completions of each of `groups_per_step` prompts from the run's deployment and scores
them with the reward (default: 1 for the reference answer, exactly, else 0). A completion's advantage is its reward
minus its group's mean; groups whose rewards are all equal teach nothing and are dropped. With `kl_beta > 0` the
reference model (the base) scores the same tokens, and each token's advantage moves by kl_beta * (mean log-ratio -
its log-ratio to the reference), which pulls the policy back toward the reference where it strays most. Then one
forward_backward with the chosen loss and one optim_step, normalised by the number of loss tokens. Every
`sync_every` steps the new weights are hot-loaded into the deployment; in between, samples come from older
weights, and the losses' importance ratio accounts for it.

Metrics go to `<log_dir>/metrics.jsonl`: reward, the server's loss metrics (KL to the sampler, importance ratio,
clip fractions), the KL to the reference, timings; held-out greedy accuracy on `eval_data` before, every
`eval_every` steps and at the end. Checkpoints every `save_every` steps; a rerun with the same log_dir resumes.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any, Literal

from pydantic import Field
from transformers import AutoTokenizer

from shapeyard.client import AdamParams, Datum, ManagedTraining, ModelInput
from shapeyard.client.sampling import SampledSequence
from shapeyard.cookbook.config import DeploymentSection, ReferenceSection, Section, ServerSection, TrainerSection
from shapeyard.cookbook.data import read_jsonl
from shapeyard.cookbook.evaluation import deployment_exact_match
from shapeyard.cookbook.renderers import render_prompt
from shapeyard.cookbook.runs import RunDir, progress_bar, provision

Row = dict[str, Any]
Reward = Callable[[str, Row], float]  # (completion text, data row) -> reward


def exact_match(text: str, row: Row) -> float:
    """1 when the completion is the reference answer (the row's last message), else 0."""
    return float(text.strip() == row["messages"][-1]["content"].strip())


class RLConfig(Section):
    server: ServerSection = ServerSection()
    trainer: TrainerSection
    deployment: DeploymentSection = DeploymentSection()
    reference: ReferenceSection = ReferenceSection()  # provisioned only when kl_beta > 0
    train_data: Path  # chat JSONL: the prompt messages, then the reference answer as the last message
    eval_data: Path | None = None
    eval_examples: int = 200
    eval_every: int = 0  # 0: before training and at the end only
    loss: Literal["importance_sampling", "ppo", "cispo", "dapo", "gspo"] = "importance_sampling"
    loss_config: dict[str, float] = {}
    kl_beta: float = Field(0.0, ge=0)
    steps: int = Field(50, ge=1)
    groups_per_step: int = Field(16, ge=1)
    group_size: int = Field(8, ge=2)  # advantages compare completions of one prompt
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, gt=0)
    sync_every: int = Field(1, ge=1)
    save_every: int = 0  # 0: only at the end
    init_from_checkpoint: str | None = None  # weights to start from, e.g. "cross_job://<job>/<checkpoint>" of SFT
    log_dir: Path = Path("runs/rl")
    seed: int = 0
    keep_job: bool = False


@dataclass
class Rollout:
    prompt: list[int]
    completion: SampledSequence
    reward: float


@dataclass
class RLResult:
    job_id: str
    steps: int
    rewards: list[float]  # mean reward of each step run here
    checkpoint: str
    evaluations: list[dict[str, float]] = field(default_factory=list)  # {"step", "accuracy"}


def sample_groups(
    run: ManagedTraining, tokenizer: Any, rows: list[Row], config: RLConfig, reward: Reward, seed: int
) -> list[list[Rollout]]:
    """`group_size` completions of each row's prompt, in one request, each scored."""
    prompts = [render_prompt(tokenizer, row["messages"][:-1]) for row in rows]
    sampled = run.sampler.sample_batch(
        prompts,
        n=config.group_size,
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        seed=seed,
        stop_token_ids=[tokenizer.eos_token_id],
    )
    size = config.group_size
    return [
        [Rollout(prompt, s, reward(s.text, row)) for s in sampled[i * size : (i + 1) * size]]
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


def reference_kl(run: ManagedTraining, batch: list[tuple[Rollout, list[float]]], kl_beta: float) -> float:
    """Shifts each token's advantage by kl_beta * (mean - its sampler-to-reference log-ratio); returns the mean."""
    data = []
    for rollout, _ in batch:
        model_input, targets, _ = scored_sequence(rollout)
        data.append(Datum(model_input=model_input, loss_fn_inputs={"target_tokens": targets}))
    outputs = run.reference.forward(data, "cross_entropy").result().loss_fn_outputs
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


def run(config: RLConfig, *, reward: Reward = exact_match, show_progress: bool = True) -> RLResult:
    run_dir = RunDir(config.log_dir)
    reference = config.reference if config.kl_beta > 0 else None
    managed = provision(config.server, config.trainer, run_dir, deployment=config.deployment, reference=reference)
    policy = managed.training_client
    tokenizer = AutoTokenizer.from_pretrained(policy.get_info().model_data.tokenizer_id)
    rows = read_jsonl(config.train_data)
    held_out = read_jsonl(config.eval_data)[: config.eval_examples] if config.eval_data else []

    start = run_dir.resume(policy)
    if start == 0 and config.init_from_checkpoint:
        policy.load_state(config.init_from_checkpoint).result()
    managed.weight_syncer.save_and_hotload(f"rl-{start}")  # the deployment samples the policy's weights
    evaluations: list[dict[str, float]] = []

    def evaluate(step: int) -> None:
        if held_out:
            record = {"step": step, "accuracy": deployment_exact_match(managed.sampler, tokenizer, held_out)}
            evaluations.append(record)
            run_dir.log({"eval": record})

    if start == 0:
        evaluate(0)
    rewards: list[float] = []
    adam = AdamParams(learning_rate=config.trainer.learning_rate, weight_decay=0.0)
    with progress_bar("rl", "reward", show=show_progress) as progress:
        task = progress.add_task("rl", total=config.steps, completed=start, value=math.nan)
        for step in range(start, config.steps):
            began, done, last = time.monotonic(), step + 1, step + 1 == config.steps
            step_seed = config.seed * 1_000_003 + step
            chosen = random.Random(step_seed).sample(rows, min(config.groups_per_step, len(rows)))
            groups = sample_groups(managed, tokenizer, chosen, config, reward, step_seed)
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
                    record["kl_reference"] = reference_kl(managed, batch, config.kl_beta)
                data = [policy_datum(rollout, advantages) for rollout, advantages in batch]
                trained = policy.forward_backward(data, config.loss, config.loss_config or None)
                stepped = policy.optim_step(adam, "num_loss_tokens")
                record.update({f"train/{key}": value for key, value in trained.result().metrics.items()})
                record["grad_norm"] = stepped.result().metrics.get("grad_norm")
            evaluating = bool(held_out) and (last or (bool(config.eval_every) and done % config.eval_every == 0))
            if evaluating or last or done % config.sync_every == 0:
                managed.weight_syncer.save_and_hotload(f"rl-{done}")
            if evaluating:
                evaluate(done)
            if config.save_every and done % config.save_every == 0 and not last:
                run_dir.save_checkpoint(managed, done)
            record.update(sample_seconds=sampled_at - began, seconds=time.monotonic() - began)
            run_dir.log(record)
            rewards.append(record["reward"])
            progress.update(task, advance=1, value=record["reward"])
    checkpoint = run_dir.save_checkpoint(managed, config.steps)
    run_dir.close()
    managed.close(delete_job=not config.keep_job)
    return RLResult(managed.job_id, config.steps, rewards, checkpoint, evaluations)
