"""What every recipe does around its loop (`RecipeRun`): provision the trainer (and a deployment and a reference
when asked) from the config sections, load the tokenizer, resume from the log directory, log metrics and
evaluations, save checkpoints, and release everything at the end.

The log directory holds `metrics.jsonl` (one JSON record per line, appended across resumes) and `progress.json`
(the last checkpoint: job, step, path). A rerun with the same directory resumes there, by cross-job reference, so
it may continue on a new job if its own is gone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from shapeyard.client import ApiError, ControlClient, ManagedTraining, TrainingClient, managed_training
from shapeyard.cookbook.config import DeploymentSection, ReferenceSection, RunSection, ServerSection, TrainerSection
from shapeyard.cookbook.evaluation import Evaluator
from shapeyard.wire import names
from shapeyard.wire.control import JobState


class ResumePoint(BaseModel):
    """`progress.json`: the run's last checkpoint, where a rerun resumes."""

    job_id: str
    step: int
    checkpoint: str


class RunDir:
    """A run's log directory: `metrics.jsonl` and the resume record `progress.json`."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        saved = self._progress.read_text() if self._progress.exists() else None
        self.progress = ResumePoint.model_validate_json(saved) if saved else None
        self._metrics = (path / "metrics.jsonl").open("a")

    @property
    def _progress(self) -> Path:
        return self.path / "progress.json"

    def log(self, record: dict[str, Any]) -> None:
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()

    def record_checkpoint(self, job_id: str, step: int, path: str) -> str:
        self.progress = ResumePoint(job_id=job_id, step=step, checkpoint=path)
        self._progress.write_text(self.progress.model_dump_json())
        return path

    def close(self) -> None:
        self._metrics.close()


def _live_job(server: ServerSection, job_id: str | None) -> str | None:
    """The saved run's job if it still exists; a finished run deleted it (its checkpoints stay readable)."""
    if job_id is None:
        return None
    with ControlClient(server.base_url, server.api_key) as control:
        try:
            return job_id if control.get_trainer_job(job_id).state != JobState.DELETED else None
        except ApiError as exc:
            if exc.http_status == 404:
                return None
            raise


def progress_bar(recipe: str, metric: str, *, show: bool) -> Progress:
    """A bar with the step count and the recipe's key metric (a task field named `value`)."""
    return Progress(
        TextColumn(recipe),
        BarColumn(),
        TextColumn("step {task.completed}/{task.total}"),
        TextColumn(f"{metric} {{task.fields[value]:.4f}}"),
        TimeElapsedColumn(),
        disable=not show,
    )


@dataclass
class RecipeRun:
    """A recipe's run: its managed trainer (with a deployment and a reference when asked), its tokenizer, its log
    directory, and the step it resumes from."""

    settings: RunSection
    managed: ManagedTraining
    tokenizer: PreTrainedTokenizerBase
    log: RunDir
    start: int
    evaluations: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def start_run(
        cls,
        recipe: str,
        server: ServerSection,
        trainer: TrainerSection,
        settings: RunSection,
        *,
        deployment: DeploymentSection | None = None,
        reference: ReferenceSection | None = None,
    ) -> RecipeRun:
        """Provisions the policy trainer (re-attached to the saved run's job while it exists) and loads the last
        checkpoint, weights and optimizer, if the log directory names one."""
        log = RunDir(settings.directory(recipe))
        managed = managed_training(
            base_url=server.base_url,
            api_key=server.api_key,
            base_model=trainer.base_model,
            training_shape_id=trainer.training_shape_id,
            lora_rank=trainer.lora_rank,
            learning_rate=trainer.learning_rate,
            display_name=trainer.display_name,
            replica_count=trainer.replica_count,
            job_id=trainer.job_id or _live_job(server, log.progress and log.progress.job_id),
            create_deployment=deployment is not None,
            deployment_replica_count=deployment.replica_count if deployment else 1,
            reference_required=reference is not None,
            reference_training_shape_id=reference.training_shape_id if reference else None,
            reference_job_id=reference.job_id if reference else None,
        )
        # the trainer names a local directory, so the tokenizer never comes from the network
        tokenizer = AutoTokenizer.from_pretrained(managed.training_client.get_info().model_data.tokenizer_id)
        start = 0
        if log.progress is not None:
            saved = names.cross_job_path(log.progress.job_id, log.progress.checkpoint)
            managed.training_client.load_state_with_optimizer(saved).result()
            start = log.progress.step
        return cls(settings, managed, tokenizer, log, start)

    @property
    def policy(self) -> TrainingClient:
        return self.managed.training_client

    def evaluate(self, step: int, evaluators: Mapping[str, Evaluator]) -> dict[str, float]:
        """Each evaluator's score, recorded with the step in the results and in metrics.jsonl."""
        record = {"step": step, **{key: evaluate() for key, evaluate in evaluators.items()}}
        self.evaluations.append(record)
        self.log.log({"eval": record})
        return record

    def save(self, step: int) -> str:
        """Saves `step-<step>` (weights and optimizer) on the trainer and records it for resume."""
        return self.record(step, self.policy.save_state(f"step-{step}").result().path)

    def record(self, step: int, path: str) -> str:
        return self.log.record_checkpoint(self.managed.job_id, step, path)

    def finish(self, total: int) -> str:
        """The final checkpoint; then the deployment, the reference and, unless kept, the trainer are released."""
        checkpoint = self.save(total)
        self.log.close()
        self.managed.close(delete_job=not self.settings.keep_job)
        return checkpoint
