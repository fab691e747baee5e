"""A trainer job's life: created from a plan, mapped onto a worker (its placement and spec), its state changes.

`launch_job` applies the resolution rules and records the job; the supervisor (`lifecycle.supervisor`) starts its
worker. A worker always starts from the job's latest training checkpoint, so `:resume` and a server restart
continue where the job left off.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shapeyard.control.auth import require_account
from shapeyard.control.state import ControlPlane
from shapeyard.launch.base import Placement
from shapeyard.shapes.admin import SmokeRunner
from shapeyard.shapes.recipe import pending, shape_recipe, training_recipe
from shapeyard.shapes.resolve import plan_trainer_job
from shapeyard.store import catalog as store
from shapeyard.store.accounts import Caller
from shapeyard.store.tables import TrainerJob, TrainingShapeVersion, utcnow
from shapeyard.store.weights import WeightsUnavailable, local_checkpoint
from shapeyard.wire import names
from shapeyard.wire.control import ACTIVE_JOB_STATES, CreateTrainerJobRequest, JobState
from shapeyard.wire.errors import AlreadyExists, FailedPrecondition, NotFound
from shapeyard.wire.shapes import ModelSpec, SmokeResult, TrainerMode, TrainingRecipe, TrainingShapeSnapshot
from shapeyard.wire.worker import TrainerWorkerSpec


def set_state(job: TrainerJob, state: JobState, message: str = "") -> None:
    if job.state != state.value or job.status_message != message:
        job.state, job.status_message, job.update_time = state.value, message, utcnow()


def find_job(session: Session, caller: Caller, account: str, job_id: str) -> TrainerJob:
    name = str(names.trainer_job(names.job_name(account, job_id)))
    require_account(caller, account, f"trainer job {name}")
    job = session.get(TrainerJob, name)
    if job is None:
        raise NotFound(f"trainer job {name} not found")
    return job


def active_jobs(session: Session, account: str, base_model: str) -> list[TrainerJob]:
    """The account's jobs of a model that have, or are getting, a worker."""
    return list(
        session.scalars(
            select(TrainerJob).where(
                TrainerJob.account == account,
                TrainerJob.base_model == base_model,
                TrainerJob.state.in_([state.value for state in ACTIVE_JOB_STATES]),
            )
        )
    )


def _shape(session: Session, job: TrainerJob) -> TrainingShapeVersion | None:
    return session.get(TrainingShapeVersion, job.training_shape_version) if job.training_shape_version else None


def job_placement(session: Session, control: ControlPlane, job: TrainerJob) -> Placement:
    shape = _shape(session, job)
    report = store.validation_report(shape) if shape else None
    return Placement(
        accelerator=control.catalog.accelerators[job.accelerator_type],
        count=job.accelerator_count,
        nodes=job.node_count,
        replicas=job.trainer_replica_count,
        memory_gib=report.memory_plan.total_gib if report and report.memory_plan else 0.0,
    )


def job_recipe(session: Session, control: ControlPlane, job: TrainerJob) -> TrainingRecipe:
    """The recipe of the job's shape version; a job without one gets its device's plain recipe."""
    shape = _shape(session, job)
    accelerator = control.catalog.accelerators[job.accelerator_type]
    if shape is None:
        return training_recipe(accelerator, job.max_context_length)
    return shape_recipe(store.training_snapshot(shape), accelerator)


def check_launchable(session: Session, control: ControlPlane, job: TrainerJob) -> None:
    """Refuse, before anything starts, a job this server cannot run: hardware the launcher lacks, or a recipe the
    trainer does not apply."""
    control.launcher.check(job_placement(session, control, job))
    missing = pending(job_recipe(session, control, job))
    if missing:
        raise FailedPrecondition(
            f"the shape's recipe needs {', '.join(missing)}, which today's trainer does not apply; its memory plan "
            "counts them, so it would not fit as this trainer runs"
        )


def trainer_spec(session: Session, control: ControlPlane, job: TrainerJob) -> TrainerWorkerSpec:
    shape = _shape(session, job)
    snapshot = store.training_snapshot(shape) if shape else None
    files = control.settings.files.job(job.account, job.job_id)
    return TrainerWorkerSpec(
        job_name=job.name,
        base_model=job.base_model,
        weights=store.get_model(session, job.base_model).weights,
        trainer_mode=TrainerMode(job.trainer_mode),
        lora_rank=job.lora_rank,
        max_lora_rank=snapshot.max_lora_rank if snapshot else job.lora_rank,
        forward_only=job.forward_only,
        max_context_length=job.max_context_length,
        recipe=job_recipe(session, control, job),
        work_dir=files.root,
        resume_from=files.latest_training(),
    )


def launch_job(
    session: Session,
    control: ControlPlane,
    caller: Caller,
    account: str,
    job_id: str,
    body: CreateTrainerJobRequest,
    *,
    training_shape: str | None,
    skip_validations: bool = False,
) -> TrainerJob:
    """Apply the resolution rules, check the launcher can ever run the placement, and record the job; the
    supervisor starts its worker."""
    name = names.job_name(account, names.check_id("rlorTrainerJobId", job_id))
    if session.get(TrainerJob, name) is not None:
        raise AlreadyExists(f"trainer job {name} already exists")
    plan = plan_trainer_job(
        session,
        caller,
        body,
        control.catalog.accelerators,
        training_shape=training_shape,
        skip_validations=skip_validations,
    )
    job = TrainerJob(
        name=name,
        account=account,
        job_id=job_id,
        state=JobState.CREATING.value,
        display_name=body.display_name or job_id,
        training_shape_version=plan.shape.version if plan.shape else None,
        base_model=plan.base_model,
        trainer_mode=plan.trainer_mode.value,
        lora_rank=plan.lora_rank,
        learning_rate=body.training_config.learning_rate,
        max_context_length=plan.max_context_length,
        forward_only=plan.forward_only,
        trainer_replica_count=body.trainer_replica_count or 1,
        accelerator_type=plan.accelerator_type,
        accelerator_count=plan.accelerator_count,
        node_count=plan.node_count,
        image_tag=plan.image_tag,
        request=body.to_json_dict(),
    )
    check_launchable(session, control, job)
    session.add(job)
    session.flush()
    return job


def smoke_runner(control: ControlPlane) -> SmokeRunner:
    """Validation's smoke step, run by the launcher where the shape's hardware and weights are on this machine."""

    def run(snapshot: TrainingShapeSnapshot, model: ModelSpec) -> SmokeResult | str:
        accelerator = control.catalog.accelerators[snapshot.accelerator_type]
        recipe = shape_recipe(snapshot, accelerator)
        where = Placement(
            accelerator,
            snapshot.accelerator_count,
            snapshot.node_count,
            replicas=1,
            memory_gib=0.0,
        )
        try:
            control.launcher.check(where)
            if model.weights.embedded is None:  # an embedded model is built by the process that loads it
                local_checkpoint(model.weights)
        except FailedPrecondition as exc:
            return exc.message
        except WeightsUnavailable as exc:
            return str(exc)
        if pending(recipe):
            return f"today's trainer does not apply {', '.join(pending(recipe))}"
        spec = TrainerWorkerSpec(
            job_name="smoke",
            base_model=model.name,
            weights=model.weights,
            trainer_mode=snapshot.trainer_mode,
            lora_rank=snapshot.max_lora_rank,
            max_lora_rank=snapshot.max_lora_rank,
            forward_only=snapshot.trainer_mode == TrainerMode.FORWARD_ONLY,
            max_context_length=snapshot.max_supported_context_length,
            recipe=recipe,
            work_dir=control.settings.files.new_smoke_dir(),
        )
        return control.launcher.smoke(spec, where)

    return run
