"""The DPO recipe through a real server: a full-parameter policy against a forward-only reference job, released
once its scores are cached, learns the bundled flip preferences; a rerun resumes without scoring again."""

from __future__ import annotations

import json
import math
from pathlib import Path

from shapeyard.cookbook import dpo
from shapeyard.cookbook.config import ServerSection, TrainerSection
from shapeyard.cookbook.data import write_jsonl
from shapeyard.cookbook.tasks import digits
from shapeyard.wire.control import JobState
from tests.helpers import (
    FULL_SHAPE,
    TINY,
    RunningServer,
    metrics,
    recipe_config,
    reference_jobs,
    run_cli_recipe,
    with_run,
)


def test_dpo_learns_the_preferences_and_resumes_from_its_cached_reference(
    training_server: RunningServer, tmp_path: Path
):
    train, test = digits.flip_preference_splits()
    settings = recipe_config(
        dpo.DPOConfig,
        server=ServerSection(base_url=training_server.base_url, api_key=training_server.api_key),
        trainer=TrainerSection(training_shape_id=FULL_SHAPE, base_model=TINY, learning_rate=5e-4),
        train_data=write_jsonl(train, tmp_path / "train.jsonl"),
        eval_data=write_jsonl(test, tmp_path / "test.jsonl"),
        steps=16,
        save_every=8,
        keep_job=True,
        log_dir=tmp_path / "run",
    )
    first = dpo.run(settings, show_progress=False)
    before, after = first.evaluations[0]["preference_accuracy"], first.evaluations[-1]["preference_accuracy"]
    assert before < 0.6 and after > 0.9, first.evaluations
    assert first.final_loss < 0.6 * first.first_loss
    steps = [m for m in metrics(settings.run.log_dir) if "step" in m]
    assert abs(steps[0]["dpo_loss"] - math.log(2)) < 1e-4  # the policy starts as the reference: margin 0
    assert steps[-1]["margin"] > 0 and steps[-1]["accuracy"] > 0.9
    # the reference scored every pair once, then its job was deleted
    cached = json.loads((settings.run.log_dir / "reference.json").read_text())
    assert len(cached["scores"]) == len(train)
    (reference,) = reference_jobs(training_server, first.job_id)
    assert reference["forwardOnly"] and reference["state"] == JobState.DELETED

    again = dpo.run(with_run(settings, steps=20, keep_job=False), show_progress=False)
    assert again.job_id == first.job_id
    assert len(reference_jobs(training_server, first.job_id)) == 1  # the cached scores were enough
    assert [m["step"] for m in metrics(settings.run.log_dir) if "step" in m] == list(range(1, 21))


def test_the_cli_runs_the_dpo_recipe_with_a_lora_policy(training_server: RunningServer, tmp_path: Path):
    held_out = str(tmp_path / "data" / "test.jsonl")
    output = run_cli_recipe(training_server, tmp_path, "dpo", "flip-preferences", eval_data=held_out, steps=3)
    assert "3 steps" in output and "held-out preference accuracy" in output
    assert len([m for m in metrics(tmp_path / "run") if "step" in m]) == 3
