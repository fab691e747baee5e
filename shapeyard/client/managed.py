"""The managed path: one call from a shape id to a ready training client.

    run = managed_training(base_url=..., api_key=..., base_model="accounts/fireworks/models/tiny-qwen3",
                           training_shape_id="accounts/fireworks/trainingShapes/tiny-qwen3-2k-cpu", lora_rank=0)
    run.training_client.forward_backward(...)
    run.close()

It resolves the shape to its latest validated version, creates the trainer job (or re-attaches to `job_id`,
resuming it if it stopped), waits until the job's worker is running, and creates the training client on it. With
`create_deployment=True` it also provisions a deployment on the shape's linked deployment shape, hot-loading from
the job, and waits for it: `run.weight_syncer.save_and_hotload(name)` then `run.sampler.sample(...)`.

With `reference_required=True` (a KL penalty, DPO) it also provides `run.reference`, a frozen client of the base
model, the way the Fireworks SDK does: a LoRA policy shares its own trainer (the adapter disabled, no extra
hardware); a full-parameter policy, or an explicit `reference_training_shape_id` / `reference_job_id`, gets a
separate forward-only job, created alongside the policy and its deployment and deleted on close (unless it was
given by id).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from shapeyard.client.control import ControlClient
from shapeyard.client.http import ApiError
from shapeyard.client.sampling import DeploymentSampler, WeightSyncer
from shapeyard.client.training import ServiceClient, TrainingClient
from shapeyard.wire import names, routes
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
from shapeyard.wire.shapes import TrainerMode

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
    reference: TrainingClient | None = None
    reference_job_id: str | None = None  # a separate reference job, deleted on close when owned
    owns_reference: bool = False
    _reference_service: ServiceClient | None = None

    @property
    def job_id(self) -> str:
        return names.short(self.job.name)

    @property
    def max_context_length(self) -> int:
        return self.job.training_config.max_context_length or 0

    def release_reference(self) -> None:
        """Frees the reference once it is no longer needed (DPO, after caching its logprobs)."""
        if self._reference_service is not None:
            self._reference_service.close()
            if self.owns_reference:
                self.control.delete_trainer_job(self.reference_job_id)
            self._reference_service = None
        self.reference = None

    def close(self, delete_job: bool = False) -> None:
        """Deletes the deployment and the reference job it created; the policy's job too when asked."""
        self.release_reference()
        if self.deployment is not None:
            self.control.delete_deployment(names.short(self.deployment.name))
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


def _gateway(base_url: str, account: str, job_id: str) -> str:
    return base_url.rstrip("/") + routes.TRAINER_GATEWAY.format(account=account, job_id=job_id)


def _ensure_job(control: ControlClient, job_id: str, request: CreateTrainerJobRequest, shape: str | None) -> bool:
    """Creates the job, or re-attaches to it (resuming it if it stopped). True when it was created here."""
    try:
        job = control.get_trainer_job(job_id)
    except ApiError as exc:
        if exc.http_status != 404:
            raise
        control.create_trainer_job(request, job_id=job_id, training_shape=shape or "")
        return True
    if job.state in RESUMABLE_JOB_STATES:
        control.resume_trainer_job(job_id)
    return False


def _reference_rank(lora_rank: int, reference_training_shape_id: str | None) -> int:
    """An explicit reference shape for a LoRA policy loads the adapter's rank; otherwise the base is frozen as is."""
    return lora_rank if reference_training_shape_id and lora_rank > 0 else 0


def check_reference_shape(control: ControlClient, shape_id: str, rank: int) -> None:
    """A reference runs forward only: on a LoRA trainer shape, or (rank 0) a forward-only one."""
    allowed = {TrainerMode.LORA_TRAINER} if rank > 0 else {TrainerMode.LORA_TRAINER, TrainerMode.FORWARD_ONLY}
    mode = control.resolve_training_shape(shape_id).snapshot.trainer_mode
    if mode not in allowed:
        raise ValueError(
            f"reference_training_shape_id={shape_id!r} resolves to trainer_mode='{mode}', but this run requires "
            f"trainer_mode in {{{', '.join(sorted(allowed))}}} (lora_rank={rank}, forward_only=True). Use a training "
            "shape validated for the reference trainer mode."
        )


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
    reference_required: bool = False,
    reference_training_shape_id: str | None = None,
    reference_job_id: str | None = None,
    timeout: float = 900.0,
) -> ManagedTraining:
    """Without a shape, the server picks the smallest validated one for the model, mode and context."""
    control = ControlClient(base_url, api_key)
    profile = control.resolve_training_shape(training_shape_id) if training_shape_id else None
    separate_reference = reference_required and (
        lora_rank == 0 or reference_training_shape_id is not None or reference_job_id is not None
    )
    reference_rank = _reference_rank(lora_rank, reference_training_shape_id)
    if separate_reference and reference_training_shape_id and not reference_job_id:
        check_reference_shape(control, reference_training_shape_id, reference_rank)  # before anything is created

    job_id = job_id or f"run-{secrets.token_hex(4)}"
    config = TrainingConfig(
        base_model=base_model,
        lora_rank=lora_rank,
        learning_rate=learning_rate,
        max_context_length=None if training_shape_id else max_context_length,
    )
    request = CreateTrainerJobRequest(
        training_config=config, display_name=display_name, trainer_replica_count=replica_count
    )
    _ensure_job(control, job_id, request, training_shape_id)
    owns_reference = False
    if separate_reference:
        # Created before waiting on anything, so that policy, reference and deployment start together.
        reference_job_id = reference_job_id or f"{job_id}-reference-{secrets.token_hex(3)}"
        reference_request = CreateTrainerJobRequest(
            training_config=config.model_copy(update={"lora_rank": reference_rank}),
            display_name=f"{display_name or job_id} (reference)",
            forward_only=True,
        )
        owns_reference = _ensure_job(control, reference_job_id, reference_request, reference_training_shape_id)
    if create_deployment:
        deployment_id = deployment_id or f"{job_id}-serve"
        deployment_request = CreateDeploymentRequest(
            base_model=base_model,
            min_replica_count=deployment_replica_count,
            max_replica_count=deployment_replica_count,
            for_training=True,
            hot_load_trainer_job=names.job_name(control.account, job_id),
            deployment_shape=profile.snapshot.deployment_shape_version if profile else None,
        )
        try:
            control.create_deployment(deployment_request, deployment_id)
        except ApiError as exc:
            if exc.http_status != 409:
                raise
    try:
        job = wait_until_running(control, job_id, timeout)
        service = ServiceClient(_gateway(base_url, control.account, job_id), api_key)
        training = service.create_training_client(base_model, lora_rank)
        run = ManagedTraining(control, profile, job, service, training)
        if reference_required and not separate_reference:
            run.reference = service.create_training_client(base_model, base_only=True)
        elif separate_reference:
            wait_until_running(control, reference_job_id, timeout)
            run.reference_job_id, run.owns_reference = reference_job_id, owns_reference
            run._reference_service = ServiceClient(_gateway(base_url, control.account, reference_job_id), api_key)
            run.reference = run._reference_service.create_training_client(base_model, reference_rank)
        if create_deployment:
            run.deployment = wait_until_serving(control, deployment_id, timeout)
            run.sampler = DeploymentSampler(base_url, api_key, run.deployment.name)
            run.weight_syncer = WeightSyncer(training, control, deployment_id)
    except BaseException:
        if owns_reference:  # no ManagedTraining was returned, so nobody else can delete it
            control.delete_trainer_job(reference_job_id)
        raise
    return run
