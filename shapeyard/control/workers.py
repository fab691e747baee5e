"""How a trainer job maps onto a worker: its placement, its worker spec, its state changes."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from shapeyard.errors import FailedPrecondition
from shapeyard.launch.base import Placement
from shapeyard.models.loading import WeightsUnavailable, weights_path
from shapeyard.shapes.admin import SmokeRunner
from shapeyard.shapes.types import ModelSpec, TrainerMode, TrainingShapeSnapshot
from shapeyard.shapes.validation import SmokeResult
from shapeyard.store import catalog as store
from shapeyard.store.tables import TrainerJob, TrainingShapeVersion, utcnow
from shapeyard.trainer.checkpoints import CheckpointStore
from shapeyard.wire.control import JobState
from shapeyard.wire.worker import TrainerWorkerSpec

if TYPE_CHECKING:
    from shapeyard.control.app import ControlPlane

ACTIVE = (JobState.CREATING, JobState.PENDING, JobState.RUNNING)


def set_state(job: TrainerJob, state: JobState, message: str = "") -> None:
    if job.state != state.value or job.status_message != message:
        job.state, job.status_message, job.update_time = state.value, message, utcnow()


def placement(session: Session, control: ControlPlane, job: TrainerJob) -> Placement:
    memory = 0.0
    if job.training_shape_version:
        row = session.get(TrainingShapeVersion, job.training_shape_version)
        plan = (row.validation_report or {}).get("memoryPlan") if row else None
        memory = plan["totalGib"] if plan else 0.0
    return Placement(
        accelerator=control.catalog.accelerators[job.accelerator_type],
        count=job.accelerator_count,
        nodes=job.node_count,
        replicas=job.trainer_replica_count,
        memory_gib=memory,
    )


def worker_spec(session: Session, control: ControlPlane, job: TrainerJob) -> TrainerWorkerSpec:
    model = store.get_model(session, job.base_model)
    snapshot = None
    if job.training_shape_version:
        snapshot = TrainingShapeSnapshot.model_validate(
            session.get(TrainingShapeVersion, job.training_shape_version).snapshot
        )
    job_dir = control.settings.job_dir(job.account, job.job_id)
    latest = CheckpointStore(job_dir).list_training()
    return TrainerWorkerSpec(
        job_name=job.name,
        base_model=job.base_model,
        weights=model.weights,
        trainer_mode=TrainerMode(job.trainer_mode),
        lora_rank=job.lora_rank,
        max_lora_rank=snapshot.max_lora_rank if snapshot else job.lora_rank,
        forward_only=job.forward_only,
        max_context_length=job.max_context_length,
        activation_checkpointing=snapshot.activation_checkpointing if snapshot else False,
        device="cpu",
        threads=control.settings.worker_threads,
        work_dir=job_dir,
        port=0,
        token="",
        resume_from=job_dir / "checkpoints" / latest[-1] if latest else None,
    )


def smoke_runner(control: ControlPlane) -> SmokeRunner:
    """Validation's smoke step, run by the launcher where the shape's hardware and weights are on this machine."""

    def run(snapshot: TrainingShapeSnapshot, model: ModelSpec) -> SmokeResult | str:
        where = Placement(
            control.catalog.accelerators[snapshot.accelerator_type],
            snapshot.accelerator_count,
            snapshot.node_count,
            replicas=1,
            memory_gib=0.0,
        )
        try:
            control.launcher.check(where)
            weights_path(model.weights)
        except FailedPrecondition as exc:
            return exc.message
        except WeightsUnavailable as exc:
            return str(exc)
        spec = TrainerWorkerSpec(
            job_name="smoke",
            base_model=model.name,
            weights=model.weights,
            trainer_mode=snapshot.trainer_mode,
            lora_rank=snapshot.max_lora_rank,
            max_lora_rank=snapshot.max_lora_rank,
            forward_only=snapshot.trainer_mode == TrainerMode.FORWARD_ONLY,
            max_context_length=snapshot.max_supported_context_length,
            activation_checkpointing=snapshot.activation_checkpointing,
            device="cpu",
            threads=control.settings.worker_threads,
            work_dir=control.settings.data_dir / "smoke" / secrets.token_hex(4),
            port=0,
            token="",
        )
        return control.launcher.smoke(spec, where)

    return run
