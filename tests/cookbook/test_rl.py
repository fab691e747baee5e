"""The RL recipe through a real server: a LoRA policy sampled from its deployment, with a KL penalty against the
base (the policy's own trainer, adapter disabled), raises the reward on the bundled reverse task; a full-parameter
run with an off-policy loss and a forward-only reference resumes from its checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from statistics import fmean

import pytest
import yaml
from typer.testing import CliRunner

from shapeyard.cli import app
from shapeyard.cookbook import rl
from shapeyard.cookbook.config import ServerSection, TrainerSection
from shapeyard.cookbook.data import write_jsonl
from shapeyard.cookbook.tasks import digits
from shapeyard.wire.control import JobState
from tests.helpers import (
    FULL_SHAPE,
    LORA_SHAPE,
    TINY,
    RunningServer,
    metrics,
    recipe_config,
    reference_jobs,
    run_cli_recipe,
    run_server,
    with_run,
)


@pytest.fixture(scope="module")
def rl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Three CPU slots: a full-parameter policy, its reference job and the rollout deployment."""
    with run_server(tmp_path_factory.mktemp("rl"), cpu_slots=3) as running:
        yield running


def task(tmp_path: Path) -> tuple[Path, Path]:
    train, test = digits.reverse_splits()
    return write_jsonl(train, tmp_path / "train.jsonl"), write_jsonl(test, tmp_path / "test.jsonl")


def config(server: RunningServer, log_dir: Path, train: Path, trainer: dict, **fields) -> rl.RLConfig:
    return recipe_config(
        rl.RLConfig,
        server=ServerSection(base_url=server.base_url, api_key=server.api_key),
        trainer=TrainerSection(base_model=TINY, **trainer),
        train_data=train,
        log_dir=log_dir,
        max_tokens=8,
        **fields,
    )


def test_rl_with_a_kl_penalty_raises_the_reward(rl_server: RunningServer, tmp_path: Path):
    train, test = task(tmp_path)
    lora = {"training_shape_id": LORA_SHAPE, "lora_rank": 8, "learning_rate": 2e-3}
    settings = config(
        rl_server, tmp_path / "run", train, lora, eval_data=test, steps=20, groups_per_step=48, kl_beta=0.01
    )
    result = rl.run(settings, show_progress=False)

    first, last = fmean(result.rewards[:5]), fmean(result.rewards[-5:])
    assert last > first + 0.08, result.rewards
    before, after = result.evaluations[0], result.evaluations[-1]
    assert (before["step"], after["step"]) == (0, 20)
    assert after["accuracy"] > before["accuracy"] + 0.08, result.evaluations
    steps = [m for m in metrics(settings.run.log_dir) if "step" in m]
    assert [m["step"] for m in steps] == list(range(1, 21))
    for record in steps:
        # on-policy: the deployment sampled the very weights the trainer scores
        assert abs(record["train/kl_sampler_k1:mean"]) < 1e-3 and abs(record["train/ratio:mean"] - 1) < 1e-3
        assert 0 < record["groups_kept"] <= 48
    # a new adapter leaves the base as it is; training moves the policy away from it
    assert abs(steps[0]["kl_reference"]) < 1e-4 and steps[-1]["kl_reference"] > 0.05
    assert not reference_jobs(rl_server, result.job_id)  # the LoRA policy's own trainer was the reference


def test_an_off_policy_full_parameter_run_with_a_reference_job_resumes(rl_server, tmp_path: Path):
    train, _ = task(tmp_path)
    full = {"training_shape_id": FULL_SHAPE, "learning_rate": 3e-4}
    settings = config(
        rl_server,
        tmp_path / "run",
        train,
        full,
        loss="dapo",
        kl_beta=0.01,
        sync_every=2,  # every other step samples from the previous weights
        groups_per_step=8,
        steps=4,
        save_every=2,
        keep_job=True,
    )
    first = rl.run(settings, show_progress=False)
    resumed = rl.run(with_run(settings, steps=6, keep_job=False), show_progress=False)
    assert resumed.job_id == first.job_id and len(resumed.rewards) == 2
    steps = [m for m in metrics(settings.run.log_dir) if "step" in m]
    assert [m["step"] for m in steps] == list(range(1, 7))
    stale = [m for m in steps if m["step"] in (2, 4) and "train/ratio:mean" in m]
    assert stale and all(abs(m["train/ratio:mean"] - 1) > 1e-6 for m in stale)  # the importance ratio is live
    assert all("train/clip_low_frac:mean" in m and "train/dual_clip_frac:mean" in m for m in stale)
    references = reference_jobs(rl_server, first.job_id)
    assert len(references) == 2 and all(job["forwardOnly"] for job in references)  # one per run, each cleaned up
    assert all(job["state"] == JobState.DELETED for job in references)


def test_the_cli_runs_the_rl_recipe(rl_server: RunningServer, tmp_path: Path):
    output = run_cli_recipe(rl_server, tmp_path, "rl", "reverse", steps=2, groups_per_step=4)
    assert "2 steps, mean reward" in output and len(metrics(tmp_path / "run")) == 2


def test_bad_recipe_configs_are_refused_naming_the_field(tmp_path: Path):
    runner = CliRunner()
    trainer = {"base_model": TINY}
    for recipe, fields, named in [
        ("rl", {"group_size": 1}, "group_size"),
        ("rl", {"loss": "grpo"}, "'importance_sampling', 'ppo', 'cispo', 'dapo' or 'gspo'"),
        ("dpo", {"beta": 0}, "beta"),
    ]:
        config_file = tmp_path / f"{recipe}.yaml"
        config_file.write_text(yaml.safe_dump({"trainer": trainer, "train_data": "data.jsonl", **fields}))
        result = runner.invoke(app, ["--api-key", "fw_x", "cookbook", recipe, "--config", str(config_file)])
        assert result.exit_code == 2 and named in result.output, result.output
