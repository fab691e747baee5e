"""Trainer jobs (`rlorTrainerJobs`): create from a shape, get, list, delete, resume."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from shapeyard.control.auth import require_account
from shapeyard.control.deps import CallerDep, PlaneDep, WireRouter
from shapeyard.control.pagination import paginate
from shapeyard.control.workers import placement, set_state
from shapeyard.errors import AlreadyExists, FailedPrecondition, NotFound
from shapeyard.shapes.resolve import plan_trainer_job
from shapeyard.store.accounts import Caller
from shapeyard.store.tables import TrainerJob
from shapeyard.wire import names
from shapeyard.wire.control import (
    RESUMABLE_JOB_STATES,
    CreateTrainerJobRequest,
    JobState,
    JobStatus,
    ListTrainerJobsResponse,
    TrainerJobResource,
    TrainingConfig,
)

if TYPE_CHECKING:
    from shapeyard.control.app import ControlPlane

router = WireRouter(tags=["trainer jobs"])


def job_resource(job: TrainerJob) -> TrainerJobResource:
    failed = job.state == JobState.FAILED
    return TrainerJobResource(
        name=job.name,
        display_name=job.display_name,
        state=JobState(job.state),
        status_message=job.status_message,
        status=JobStatus(code="FAILED_PRECONDITION", message=job.status_message) if failed else None,
        create_time=job.create_time,
        update_time=job.update_time,
        training_shape=job.training_shape_version or "",
        trainer_mode=job.trainer_mode,
        training_config=TrainingConfig(
            base_model=job.base_model,
            lora_rank=job.lora_rank,
            learning_rate=job.learning_rate,
            max_context_length=job.max_context_length,
            accelerator_type=job.accelerator_type,
            accelerator_count=job.accelerator_count,
            custom_image_tag=job.image_tag or None,
        ),
        node_count=job.node_count,
        trainer_replica_count=job.trainer_replica_count,
        forward_only=job.forward_only,
    )


def get_job(session: Session, caller: Caller, account: str, job_id: str) -> TrainerJob:
    name = str(names.trainer_job(names.job_name(account, job_id)))
    require_account(caller, account, f"trainer job {name}")
    job = session.get(TrainerJob, name)
    if job is None:
        raise NotFound(f"trainer job {name} not found")
    return job


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
    control.launcher.check(placement(session, control, job))
    session.add(job)
    session.flush()
    return job


@router.post("/v1/accounts/{account}/rlorTrainerJobs")
def create_trainer_job(
    account: str,
    body: CreateTrainerJobRequest,
    caller: CallerDep,
    control: PlaneDep,
    trainingShape: str = "",
    rlorTrainerJobId: str = "",
    skipValidations: bool = False,
) -> TrainerJobResource:
    """Shape path (`trainingShape`), auto-selection (no shape), or the admin-only manual path (`skipValidations`)."""
    require_account(caller, account, f"account {account}")
    with control.db.session() as session:
        job = launch_job(
            session,
            control,
            caller,
            account,
            rlorTrainerJobId or f"job-{secrets.token_hex(4)}",
            body,
            training_shape=trainingShape or None,
            skip_validations=skipValidations,
        )
        return job_resource(job)


@router.get("/v1/accounts/{account}/rlorTrainerJobs/{job_id}")
def get_trainer_job(account: str, job_id: str, caller: CallerDep, control: PlaneDep) -> TrainerJobResource:
    with control.db.session() as session:
        return job_resource(get_job(session, caller, account, job_id))


@router.get("/v1/accounts/{account}/rlorTrainerJobs")
def list_trainer_jobs(
    account: str,
    caller: CallerDep,
    control: PlaneDep,
    pageSize: int = 0,
    pageToken: str = "",
    showDeleted: bool = False,
) -> ListTrainerJobsResponse:
    names.check_id("account id", account)
    require_account(caller, account, f"account {account}")
    with control.db.session() as session:
        query = select(TrainerJob).where(TrainerJob.account == account).order_by(TrainerJob.create_time)
        if not showDeleted:
            query = query.where(TrainerJob.state != JobState.DELETED.value)
        jobs = [job_resource(job) for job in session.scalars(query)]
    page, token = paginate(jobs, pageSize, pageToken)
    return ListTrainerJobsResponse(rlor_trainer_jobs=page, next_page_token=token, total_size=len(jobs))


@router.delete("/v1/accounts/{account}/rlorTrainerJobs/{job_id}")
def delete_trainer_job(account: str, job_id: str, caller: CallerDep, control: PlaneDep) -> TrainerJobResource:
    """Stops the job's worker; the record stays as a JOB_STATE_DELETED tombstone (its checkpoints stay listable)."""
    with control.lifecycle, control.db.session() as session:
        job = get_job(session, caller, account, job_id)
        control.launcher.stop(job.name)
        if job.state != JobState.DELETED:
            set_state(job, JobState.DELETED, "deleted by request")
        return job_resource(job)


@router.post("/v1/accounts/{account}/rlorTrainerJobs/{job_id}:resume")
def resume_trainer_job(account: str, job_id: str, caller: CallerDep, control: PlaneDep) -> TrainerJobResource:
    with control.lifecycle, control.db.session() as session:
        job = get_job(session, caller, account, job_id)
        if JobState(job.state) not in RESUMABLE_JOB_STATES:
            allowed = ", ".join(sorted(state.value for state in RESUMABLE_JOB_STATES))
            raise FailedPrecondition(f"trainer job {job.name} is {job.state}; only jobs in {allowed} can resume")
        control.launcher.check(placement(session, control, job))
        set_state(job, JobState.CREATING, "resuming from the latest checkpoint")
        return job_resource(job)
