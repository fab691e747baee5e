"""How a trainer job maps onto a worker: its placement, its worker spec, its state changes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from shapeyard.launch.base import Placement
from shapeyard.shapes.types import TrainerMode, TrainingShapeSnapshot
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
        job_dir=job_dir,
        port=0,
        token="",
        resume_from=job_dir / "checkpoints" / latest[-1] if latest else None,
    )
