"""What every recipe does around its loop: provision the run from its config sections, keep its log directory
(metrics.jsonl and the resume record progress.json), and show progress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from shapeyard.client import ManagedTraining, TrainingClient, managed_training
from shapeyard.client.control import ApiError, ControlClient
from shapeyard.cookbook.config import DeploymentSection, ReferenceSection, ServerSection, TrainerSection
from shapeyard.wire.control import JobState


class RunDir:
    """`metrics.jsonl` gets one JSON record per line, appended across resumes; `progress.json` names the last
    checkpoint (job, step, path, and what else the recipe needs to continue)."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.progress: dict[str, Any] = json.loads(self._progress.read_text()) if self._progress.exists() else {}
        self._metrics = (path / "metrics.jsonl").open("a")

    @property
    def _progress(self) -> Path:
        return self.path / "progress.json"

    def log(self, record: dict[str, Any]) -> None:
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()

    def record_checkpoint(self, job_id: str, step: int, path: str) -> str:
        self.progress = {"job_id": job_id, "step": step, "checkpoint": path}
        self._progress.write_text(json.dumps(self.progress))
        return path

    def save_checkpoint(self, run: ManagedTraining, step: int) -> str:
        """Saves `step-<step>` (weights and optimizer) on the run's trainer and records it for resume."""
        return self.record_checkpoint(run.job_id, step, run.training_client.save_state(f"step-{step}").result().path)

    def resume(self, training: TrainingClient) -> int:
        """Loads the last checkpoint, weights and optimizer, and returns its step (0: nothing to resume). By
        cross-job reference: the run may continue on a new job if its own is gone."""
        if not self.progress.get("checkpoint"):
            return 0
        training.load_state_with_optimizer(
            f"cross_job://{self.progress['job_id']}/{self.progress['checkpoint']}"
        ).result()
        return self.progress["step"]

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


def provision(
    server: ServerSection,
    trainer: TrainerSection,
    run_dir: RunDir,
    *,
    deployment: DeploymentSection | None = None,
    reference: ReferenceSection | None = None,
) -> ManagedTraining:
    """The policy trainer (re-attached to the saved run's job while it exists), plus a deployment and a reference
    when the recipe asks for them."""
    return managed_training(
        base_url=server.base_url,
        api_key=server.api_key,
        base_model=trainer.base_model,
        training_shape_id=trainer.training_shape_id,
        lora_rank=trainer.lora_rank,
        learning_rate=trainer.learning_rate,
        display_name=trainer.display_name,
        replica_count=trainer.replica_count,
        job_id=trainer.job_id or _live_job(server, run_dir.progress.get("job_id")),
        create_deployment=deployment is not None,
        deployment_replica_count=deployment.replica_count if deployment else 1,
        reference_required=reference is not None,
        reference_training_shape_id=reference.training_shape_id if reference else None,
        reference_job_id=reference.job_id if reference else None,
    )


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
