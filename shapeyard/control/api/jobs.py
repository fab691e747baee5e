"""Trainer jobs (`rlorTrainerJobs`): create from a shape, get, list, delete, resume."""

from __future__ import annotations

import secrets

from sqlalchemy import select

from shapeyard.control.api.pagination import paginate
from shapeyard.control.auth import require_account
from shapeyard.control.deps import CallerDep, PlaneDep, WireRouter
from shapeyard.control.lifecycle.jobs import check_launchable, find_job, launch_job, set_state
from shapeyard.store.tables import TrainerJob
from shapeyard.wire import names, routes
from shapeyard.wire.control import (
    RESUMABLE_JOB_STATES,
    CreateTrainerJobRequest,
    JobState,
    JobStatus,
    ListTrainerJobsResponse,
    TrainerJobResource,
    TrainingConfig,
)
from shapeyard.wire.errors import FailedPrecondition

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


@router.post(routes.TRAINER_JOBS)
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


@router.get(routes.TRAINER_JOB)
def get_trainer_job(account: str, job_id: str, caller: CallerDep, control: PlaneDep) -> TrainerJobResource:
    with control.db.session() as session:
        return job_resource(find_job(session, caller, account, job_id))


@router.get(routes.TRAINER_JOBS)
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


@router.delete(routes.TRAINER_JOB)
def delete_trainer_job(account: str, job_id: str, caller: CallerDep, control: PlaneDep) -> TrainerJobResource:
    """Stops the job's worker; the record stays as a JOB_STATE_DELETED tombstone (its checkpoints stay listable)."""
    with control.lifecycle, control.db.session() as session:
        job = find_job(session, caller, account, job_id)
        control.launcher.stop(job.name)
        if job.state != JobState.DELETED:
            set_state(job, JobState.DELETED, "deleted by request")
        return job_resource(job)


@router.post(routes.RESUME_TRAINER_JOB)
def resume_trainer_job(account: str, job_id: str, caller: CallerDep, control: PlaneDep) -> TrainerJobResource:
    with control.lifecycle, control.db.session() as session:
        job = find_job(session, caller, account, job_id)
        if JobState(job.state) not in RESUMABLE_JOB_STATES:
            allowed = ", ".join(sorted(state.value for state in RESUMABLE_JOB_STATES))
            raise FailedPrecondition(f"trainer job {job.name} is {job.state}; only jobs in {allowed} can resume")
        check_launchable(session, control, job)
        set_state(job, JobState.CREATING, "resuming from the latest checkpoint")
        return job_resource(job)
