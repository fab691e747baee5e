"""The managed path: one call from a shape id to a ready training client.

    run = managed_training(base_url=..., api_key=..., base_model="accounts/fireworks/models/tiny-qwen3",
                           training_shape_id="accounts/fireworks/trainingShapes/tiny-qwen3-2k-cpu", lora_rank=0)
    run.training_client.forward_backward(...)
    run.close()

It resolves the shape to its latest validated version, creates the trainer job (or re-attaches to `job_id`,
resuming it if it stopped), waits until the job's worker is running, and creates the training client on it. With
`create_deployment=True` it also provisions a deployment on the shape's linked deployment shape, hot-loading from
the job, and waits for it: `run.weight_syncer.save_and_hotload(name)` then `run.sampler.sample(...)`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from shapeyard.client.control import ApiError, ControlClient
from shapeyard.client.sampling import DeploymentSampler, WeightSyncer
from shapeyard.client.training import ServiceClient, TrainingClient
from shapeyard.wire.control import (
    RESUMABLE_JOB_STATES,
    CreateDeploymentRequest,
    CreateTrainerJobRequest,
    DeploymentResource,
    DeploymentState,
    JobState,
    TrainerJobResource,
    TrainingConfig,
    TrainingShapeVersionResource,
)

T = TypeVar("T", TrainerJobResource, DeploymentResource)


class JobFailedError(RuntimeError):
    pass


@dataclass
class ManagedTraining:
    control: ControlClient
    profile: TrainingShapeVersionResource | None
    job: TrainerJobResource
    service: ServiceClient
    training_client: TrainingClient
    deployment: DeploymentResource | None = None
    sampler: DeploymentSampler | None = None
    weight_syncer: WeightSyncer | None = None

    @property
    def job_id(self) -> str:
        return self.job.name.rsplit("/", 1)[1]

    @property
    def max_context_length(self) -> int:
        return self.job.training_config.max_context_length or 0

    def close(self, delete_job: bool = False) -> None:
        """Deletes the deployment it created; the job too when asked."""
        if self.deployment is not None:
            self.control.delete_deployment(self.deployment.name.rsplit("/", 1)[1])
            self.sampler.close()
        if delete_job:
            self.control.delete_trainer_job(self.job_id)
        self.service.close()
        self.control.close()


def _wait(fetch: Callable[[], T], ready: str, waiting: set[str], timeout: float) -> T:
    """Poll a job or deployment until it is `ready`; any state outside `waiting` is a failure."""
    deadline = time.monotonic() + timeout
    while True:
        resource = fetch()
        if resource.state == ready:
            return resource
        if resource.state not in waiting:
            raise JobFailedError(f"{resource.name} is {resource.state.value}: {resource.status_message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{resource.name} is still {resource.state.value} after {timeout:.0f} s")
        time.sleep(0.3)


def wait_until_running(control: ControlClient, job_id: str, timeout: float = 900.0) -> TrainerJobResource:
    waiting = {JobState.CREATING, JobState.PENDING}
    return _wait(lambda: control.get_trainer_job(job_id), JobState.RUNNING, waiting, timeout)


def wait_until_serving(control: ControlClient, deployment_id: str, timeout: float = 900.0) -> DeploymentResource:
    waiting = {DeploymentState.CREATING, DeploymentState.UPDATING}
    return _wait(lambda: control.get_deployment(deployment_id), DeploymentState.READY, waiting, timeout)


def managed_training(
    *,
    base_url: str,
    api_key: str,
    base_model: str,
    training_shape_id: str | None = None,
    lora_rank: int = 0,
    learning_rate: float = 1e-5,
    display_name: str | None = None,
    replica_count: int = 1,
    job_id: str | None = None,
    max_context_length: int | None = None,
    create_deployment: bool = False,
    deployment_id: str | None = None,
    deployment_replica_count: int = 1,
    timeout: float = 900.0,
) -> ManagedTraining:
    """Without a shape, the server picks the smallest validated one for the model, mode and context."""
    control = ControlClient(base_url, api_key)
    profile = control.resolve_training_shape(training_shape_id) if training_shape_id else None
    job_id = job_id or f"run-{secrets.token_hex(4)}"
    try:
        job = control.get_trainer_job(job_id)
        if job.state in RESUMABLE_JOB_STATES:
            control.resume_trainer_job(job_id)
    except ApiError as exc:
        if exc.http_status != 404:
            raise
        request = CreateTrainerJobRequest(
            training_config=TrainingConfig(
                base_model=base_model,
                lora_rank=lora_rank,
                learning_rate=learning_rate,
                max_context_length=None if training_shape_id else max_context_length,
            ),
            display_name=display_name,
            trainer_replica_count=replica_count,
        )
        control.create_trainer_job(request, job_id=job_id, training_shape=training_shape_id or "")
    if create_deployment:
        deployment_id = deployment_id or f"{job_id}-serve"
        request = CreateDeploymentRequest(
            base_model=base_model,
            min_replica_count=deployment_replica_count,
            max_replica_count=deployment_replica_count,
            for_training=True,
            hot_load_trainer_job=f"accounts/{control.account}/rlorTrainerJobs/{job_id}",
            deployment_shape=profile.snapshot.deployment_shape_version if profile else None,
        )
        try:
            control.create_deployment(request, deployment_id)
        except ApiError as exc:
            if exc.http_status != 409:
                raise
    job = wait_until_running(control, job_id, timeout)
    service = ServiceClient(f"{base_url.rstrip('/')}/training/v1/rlorTrainerJobs/{control.account}/{job_id}", api_key)
    training = service.create_training_client(base_model, lora_rank)
    run = ManagedTraining(control, profile, job, service, training)
    if create_deployment:
        run.deployment = wait_until_serving(control, deployment_id, timeout)
        run.sampler = DeploymentSampler(base_url, api_key, run.deployment.name)
        run.weight_syncer = WeightSyncer(training, control, deployment_id)
    return run
