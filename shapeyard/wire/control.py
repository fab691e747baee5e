"""Control-plane wire schema (camelCase JSON), shared by the server and `shapeyard.client`.

Field names follow what the official `fireworks-ai` training SDK sends and reads. Request bodies refuse unknown
fields, naming them; responses ignore unknown fields so older clients keep working.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from shapeyard.wire.base import CamelModel, StrictCamelModel
from shapeyard.wire.shapes import DeploymentShapeSnapshot, ModelSpec, TrainingShapeSnapshot, ValidationReport

# --- accounts --------------------------------------------------------------------------------------------


class AccountResource(CamelModel):
    name: str
    display_name: str = ""
    create_time: datetime | None = None


class ListAccountsResponse(CamelModel):
    accounts: list[AccountResource]
    next_page_token: str = ""


# --- models and shapes -----------------------------------------------------------------------------------


class BaseModelDetails(CamelModel):
    moe: bool
    parameter_count: int
    model_type: str


class ModelResource(CamelModel):
    name: str
    display_name: str
    base_model_details: BaseModelDetails
    spec: ModelSpec


class ListModelsResponse(CamelModel):
    models: list[ModelResource]
    next_page_token: str = ""


class TrainingShapeVersionResource(CamelModel):
    name: str
    create_time: datetime
    snapshot: TrainingShapeSnapshot
    validated: bool
    public: bool
    latest_validated: bool
    validation_report: ValidationReport | None = None


class ListTrainingShapeVersionsResponse(CamelModel):
    training_shape_versions: list[TrainingShapeVersionResource]
    next_page_token: str = ""
    total_size: int = 0


class TrainingShapeResource(CamelModel):
    name: str
    create_time: datetime
    update_time: datetime
    latest_version: TrainingShapeVersionResource
    latest_validated_version: str = ""
    version_count: int


class ListTrainingShapesResponse(CamelModel):
    training_shapes: list[TrainingShapeResource]
    next_page_token: str = ""
    total_size: int = 0


class DeploymentShapeVersionResource(CamelModel):
    name: str
    create_time: datetime
    snapshot: DeploymentShapeSnapshot
    validated: bool
    public: bool
    latest_validated: bool
    validation_report: ValidationReport | None = None


class ListDeploymentShapeVersionsResponse(CamelModel):
    deployment_shape_versions: list[DeploymentShapeVersionResource]
    next_page_token: str = ""
    total_size: int = 0


class UpdateShapeVersionRequest(StrictCamelModel):
    public: bool


class CreateTrainingShapeRequest(StrictCamelModel):
    """Admin: the first version's snapshot. An unversioned deploymentShapeVersion links its latest validated version."""

    snapshot: dict[str, Any]
    public: bool = False


class UpdateTrainingShapeRequest(StrictCamelModel):
    """Admin: snapshot fields to change; the result becomes a new version."""

    snapshot: dict[str, Any]


# --- trainer jobs ----------------------------------------------------------------------------------------


class JobState(StrEnum):
    CREATING = "JOB_STATE_CREATING"
    PENDING = "JOB_STATE_PENDING"
    RUNNING = "JOB_STATE_RUNNING"
    IDLE = "JOB_STATE_IDLE"
    COMPLETED = "JOB_STATE_COMPLETED"
    FAILED = "JOB_STATE_FAILED"
    CANCELLING = "JOB_STATE_CANCELLING"
    CANCELLED = "JOB_STATE_CANCELLED"
    PAUSED = "JOB_STATE_PAUSED"
    DELETING = "JOB_STATE_DELETING"
    DELETED = "JOB_STATE_DELETED"


# States of a job that has (or is getting) a worker.
ACTIVE_JOB_STATES = frozenset({JobState.CREATING, JobState.PENDING, JobState.RUNNING})
# States a `:resume` restarts from; the SDK's reconnect path uses the same set.
RESUMABLE_JOB_STATES = frozenset({JobState.FAILED, JobState.CANCELLED, JobState.PAUSED, JobState.COMPLETED})


class TrainingConfig(StrictCamelModel):
    base_model: str
    lora_rank: int = 0
    learning_rate: float = 1e-5
    max_context_length: int | None = None
    custom_image_tag: str | None = None
    accelerator_type: str | None = None
    accelerator_count: int | None = None
    region: str | None = None
    extra_args: list[str] | None = None
    projection_head_dim: int | None = None


class CreateTrainerJobRequest(StrictCamelModel):
    """The body of `POST /v1/accounts/{account}/rlorTrainerJobs`."""

    training_config: TrainingConfig
    service_mode: bool = True
    keep_alive: bool = False
    dataset: str = ""
    display_name: str | None = None
    trainer_replica_count: int | None = None
    node_count: int | None = None
    forward_only: bool = False
    hot_load_deployment_id: str | None = None
    use_reservation: bool | None = None
    reservation_target: str | None = None
    extra_values: dict[str, Any] | None = None
    purpose: str | None = None
    preemptible: bool | None = None
    managed_by: str | None = None
    inactivity_timeout: str | None = None
    disable_inactivity_cleanup: bool | None = None
    # Accepted only so that a request setting it gets the "owned by the training shape" answer.
    deployment_shape: str | None = None


class JobStatus(CamelModel):
    code: str
    message: str


class TrainerJobResource(CamelModel):
    name: str
    display_name: str = ""
    state: JobState
    status_message: str = ""
    status: JobStatus | None = None
    create_time: datetime
    update_time: datetime
    training_shape: str = ""
    trainer_mode: str
    training_config: TrainingConfig
    node_count: int
    trainer_replica_count: int
    forward_only: bool
    service_mode: bool = True


class ListTrainerJobsResponse(CamelModel):
    rlor_trainer_jobs: list[TrainerJobResource]
    next_page_token: str = ""
    total_size: int = 0


# --- deployments -----------------------------------------------------------------------------------------


class DeploymentState(StrEnum):
    CREATING = "CREATING"
    READY = "READY"
    UPDATING = "UPDATING"
    FAILED = "FAILED"
    DELETING = "DELETING"
    DELETED = "DELETED"


# States of a deployment whose replicas should run.
SERVING_DEPLOYMENT_STATES = frozenset({DeploymentState.CREATING, DeploymentState.READY, DeploymentState.UPDATING})


class DeploymentPlacement(StrictCamelModel):
    region: str | None = None


class CreateDeploymentRequest(StrictCamelModel):
    """The body of `POST /v1/accounts/{account}/deployments`."""

    base_model: str
    display_name: str | None = None
    description: str | None = None
    min_replica_count: int = Field(0, ge=0)
    max_replica_count: int = Field(1, ge=0)
    enable_hot_load: bool = True
    for_training: bool = False
    hot_load_bucket_type: str | None = None
    hot_load_trainer_job: str | None = None
    hot_load_transition_type: str | None = None
    deployment_shape: str | None = None
    accelerator_type: str | None = None
    accelerator_count: int | None = None
    placement: DeploymentPlacement | None = None
    extra_args: list[str] | None = None
    extra_values: dict[str, Any] | None = None
    annotations: dict[str, str] | None = None
    preemptible: bool | None = None


class UpdateDeploymentRequest(StrictCamelModel):
    """The body of `PATCH /v1/accounts/{account}/deployments/{id}`; unset fields are left alone."""

    display_name: str | None = None
    description: str | None = None
    min_replica_count: int | None = Field(None, ge=0)
    max_replica_count: int | None = Field(None, ge=0)
    hot_load_trainer_job: str | None = None
    hot_load_transition_type: str | None = None
    # Accepted only to be refused with a message: the deployment shape owns them.
    deployment_shape: str | None = None
    accelerator_type: str | None = None
    accelerator_count: int | None = None
    base_model: str | None = None


class ReplicaStatus(CamelModel):
    replica: int
    state: str
    message: str = ""


class DeploymentResource(CamelModel):
    name: str
    display_name: str = ""
    description: str = ""
    state: DeploymentState
    status_message: str = ""
    create_time: datetime
    update_time: datetime
    base_model: str
    deployment_shape: str | None = None
    accelerator_type: str
    accelerator_count: int
    min_replica_count: int
    max_replica_count: int
    enable_hot_load: bool = True
    for_training: bool = False
    hot_load_trainer_job: str = ""
    hot_load_bucket_url: str = ""
    hot_load_transition_type: str = ""
    replicas: list[ReplicaStatus] = Field(default_factory=list)


class ListDeploymentsResponse(CamelModel):
    deployments: list[DeploymentResource]
    next_page_token: str = ""
    total_size: int = 0
