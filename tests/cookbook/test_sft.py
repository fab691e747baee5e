"""The SFT recipe through a real server: LoRA and full-parameter runs learn; a resumed run continues bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from shapeyard.cli import app
from shapeyard.cookbook import sft
from shapeyard.cookbook.config import ServerSection, TrainerSection
from shapeyard.cookbook.data import write_jsonl
from shapeyard.cookbook.tasks import digits
from shapeyard.models import tiny
from tests.helpers import (
    FULL_SHAPE,
    LORA_SHAPE,
    TINY,
    RunningServer,
    exact_match,
    load_snapshot,
    metrics,
    recipe_config,
    snapshot_tokenizer,
    with_run,
)


def config(server: RunningServer, tmp_path: Path, data: Path, **fields) -> sft.SFTConfig:
    trainer = {"training_shape_id": FULL_SHAPE, "base_model": TINY, "learning_rate": 5e-3, **fields.pop("trainer", {})}
    return recipe_config(
        sft.SFTConfig,
        server=ServerSection(base_url=server.base_url, api_key=server.api_key),
        trainer=TrainerSection(**trainer),
        train_data=data,
        log_dir=tmp_path / "run",
        **fields,
    )


def test_lora_sft_learns_a_new_digit_task_and_evaluates_on_its_deployment(
    training_server: RunningServer, tmp_path: Path
):
    train, test = digits.flip_splits(test_size=100)
    data = write_jsonl(train, tmp_path / "train.jsonl")
    held_out = write_jsonl(test, tmp_path / "test.jsonl")
    base = tiny.ensure_tiny_model()
    tokenizer = snapshot_tokenizer(base)
    before = exact_match(load_snapshot(base), tokenizer, test)
    settings = config(
        training_server,
        tmp_path,
        data,
        batch_size=32,
        steps=90,
        warmup_steps=5,
        final_learning_rate_fraction=0.1,
        eval_every=45,
        eval_data=held_out,
        trainer={
            "training_shape_id": LORA_SHAPE,
            "lora_rank": 16,
            "learning_rate": 1.5e-2,
        },
    )
    result = sft.run(settings, show_progress=False)
    snapshot = training_server.job_files(result.job_id).sampler_dir(result.sampler_path)
    assert (snapshot / "adapter_config.json").exists()  # a PEFT directory
    after = exact_match(load_snapshot(snapshot), tokenizer, test)
    assert before < 0.1 and after > 0.9, (before, after, result)
    assert result.final_loss < 0.3 * result.first_loss
    # sampled from the deployment after each hot-load: the same greedy answers as the snapshot in-process
    assert [e["step"] for e in result.evaluations] == [0, 45, 90]
    assert result.evaluations[0]["exact_match"] == before and result.evaluations[-1]["exact_match"] == after
    assert result.evaluations[-1]["heldout_loss"] < result.evaluations[0]["heldout_loss"]
    logged = [m["eval"] for m in metrics(settings.run.log_dir) if "eval" in m]
    assert logged == result.evaluations


def test_full_parameter_sft_learns_and_a_resumed_run_continues_bit_for_bit(training_server, tmp_path: Path):
    train, _ = digits.addition_splits()
    data = write_jsonl(train, tmp_path / "train.jsonl")
    straight = config(training_server, tmp_path / "a", data, batch_size=32, steps=24)
    sft.run(straight, show_progress=False)
    reference = metrics(straight.run.log_dir)
    assert [m["step"] for m in reference] == list(range(1, 25))
    assert reference[-1]["loss"] < 0.7 * reference[0]["loss"]

    # stopped at 12 with its trainer kept: the rerun re-attaches to it
    kept = config(training_server, tmp_path / "b", data, batch_size=32, steps=12, save_every=6, keep_job=True)
    first = sft.run(kept, show_progress=False)
    progress = json.loads((kept.run.log_dir / "progress.json").read_text())
    assert progress == {"job_id": first.job_id, "step": 12, "checkpoint": "step-12"}
    resumed = sft.run(with_run(kept, steps=18, keep_job=False), show_progress=False)
    assert resumed.job_id == first.job_id
    # finished at 18, so its trainer was deleted: the rerun continues on a new job from the old job's checkpoint
    again = sft.run(with_run(kept, steps=24, keep_job=False), show_progress=False)
    assert again.job_id != first.job_id
    continued = metrics(kept.run.log_dir)
    assert [m["step"] for m in continued] == list(range(1, 25))
    assert [m["loss"] for m in continued] == [m["loss"] for m in reference]  # bit for bit


def test_the_cli_runs_the_recipe_from_a_config_file(training_server: RunningServer, tmp_path: Path):
    runner = CliRunner()
    written = runner.invoke(app, ["cookbook", "task", "addition", "--out", str(tmp_path / "data")])
    assert written.exit_code == 0 and "7900 examples" in written.output
    config_file = tmp_path / "sft.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "trainer": {"training_shape_id": FULL_SHAPE, "base_model": TINY, "learning_rate": 1e-3},
                "train_data": str(tmp_path / "data" / "train.jsonl"),
                "batch_size": 8,
                "run": {"steps": 3, "log_dir": str(tmp_path / "run")},
            }
        )
    )
    result = runner.invoke(
        app,
        [
            "--base-url",
            training_server.base_url,
            "--api-key",
            training_server.api_key,
            "cookbook",
            "sft",
            "--config",
            str(config_file),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "3 steps" in result.output and len(metrics(tmp_path / "run")) == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"trainer": {"base_model": TINY}, "train_data": "x", "batch_sise": 3}))
    refused = runner.invoke(app, ["cookbook", "sft", "--config", str(bad)])
    assert refused.exit_code == 2 and "batch_sise" in refused.output
