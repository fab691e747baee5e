"""Resolution rules: from what a launch request says to the exact shape version it runs on.

- A bare shape name resolves to its latest validated version; a pinned version only if it is validated.
- The shape owns the infrastructure (accelerator type and count, node count, image tag, context length, linked
  deployment shape); a request that sets any of them is refused, naming the field.
- base_model must be the shape's model; lora_rank must fit the shape's mode.
- With no shape, the smallest validated shape for the model and mode whose context covers the request is chosen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from shapeyard.store import catalog as store
from shapeyard.store.accounts import Caller
from shapeyard.store.catalog import VersionRow
from shapeyard.store.tables import TrainerJob, TrainingShapeVersion
from shapeyard.wire import names
from shapeyard.wire.control import CreateDeploymentRequest, CreateTrainerJobRequest
from shapeyard.wire.errors import FailedPrecondition, InvalidArgument, NotFound
from shapeyard.wire.shapes import AcceleratorSpec, DeploymentShapeSnapshot, TrainerMode, TrainingShapeSnapshot

LATEST = "latest"
DISPLAY_NAME_LIMIT = 64
MAX_INACTIVITY_SECONDS = 3 * 60 * 60


@dataclass(frozen=True)
class ResolvedShape:
    version: str
    snapshot: TrainingShapeSnapshot

    @property
    def shape(self) -> str:
        return names.unversioned(self.version)


@dataclass(frozen=True)
class JobPlan:
    """Everything a trainer job runs with, after the rules above have been applied."""

    shape: ResolvedShape | None  # None only on the admin-only manual path
    base_model: str
    trainer_mode: TrainerMode
    lora_rank: int
    forward_only: bool
    max_context_length: int
    accelerator_type: str
    accelerator_count: int
    node_count: int
    image_tag: str


def can_see(caller: Caller, name: str, public: bool) -> bool:
    return public or caller.is_admin or names.in_account(name, caller.account)


def model_visible(caller: Caller, name: str) -> bool:
    """Models of the public catalog account are visible to every key."""
    return can_see(caller, name, public=names.in_account(name, names.PUBLIC_ACCOUNT))


def visible_versions(
    rows: Iterable[VersionRow], caller: Caller, account: str | None
) -> tuple[list[VersionRow], dict[str, int]]:
    """The versions the caller may see (of `account` only, unless None), and each shape's latest validated ordinal
    among them."""
    visible = [row for row in rows if can_see(caller, row.name, row.public)]
    if account is not None:
        visible = [row for row in visible if names.in_account(row.name, account)]
    return visible, store.latest_validated_ordinals(visible)


def _describe(row: TrainingShapeVersion) -> str:
    return f"base_model={row.base_model} trainer_mode={row.trainer_mode}"


def resolve_training_shape(
    session: Session, ref: str, caller: Caller, *, allow_unvalidated: bool = False
) -> ResolvedShape:
    parsed = names.training_shape(ref)
    versions = [row for row in store.training_versions(session, parsed.parent) if can_see(caller, row.name, row.public)]
    if not versions:
        raise NotFound(f"training shape {parsed.parent} not found")
    if parsed.version in (None, LATEST):
        validated = [row for row in versions if row.validated]
        if not validated:
            raise FailedPrecondition(
                f"no validated training shape exists for training_shape={parsed.parent} {_describe(versions[-1])}"
            )
        row = validated[-1]
    else:
        row = next((row for row in versions if row.name == str(parsed)), None)
        if row is None:
            raise NotFound(f"training shape version {parsed} not found")
        if not row.validated and not allow_unvalidated:
            raise FailedPrecondition(
                f"no validated training shape exists for training_shape={parsed} {_describe(row)}: "
                f"this version is not validated; pass the bare name {parsed.parent} to use the latest validated one"
            )
    return ResolvedShape(row.name, store.training_snapshot(row))


def expected_modes(lora_rank: int, forward_only: bool) -> tuple[TrainerMode, ...]:
    """Modes that can host a job, most specific first. A frozen reference may also run on a LoRA shape."""
    if forward_only:
        return (TrainerMode.FORWARD_ONLY, TrainerMode.LORA_TRAINER)
    return (TrainerMode.LORA_TRAINER,) if lora_rank > 0 else (TrainerMode.POLICY_TRAINER,)


def auto_select(
    session: Session,
    caller: Caller,
    base_model: str,
    modes: tuple[TrainerMode, ...],
    min_context: int,
    image_tag: str | None = None,
) -> ResolvedShape:
    """The smallest validated shape for the model whose context covers `min_context`: first by mode preference,
    then by context, then by accelerator count."""
    rows = session.scalars(select(TrainingShapeVersion).where(TrainingShapeVersion.base_model == base_model))
    rows = [row for row in rows if can_see(caller, row.name, row.public)]
    latest = store.latest_validated_ordinals(rows)
    candidates = [
        row
        for row in rows
        if latest.get(row.shape) == row.ordinal
        and row.trainer_mode in modes
        and row.max_context_length >= min_context
        and (not image_tag or store.training_snapshot(row).trainer_image_tag == image_tag)
    ]
    if not candidates:
        raise FailedPrecondition(
            f"No validated training shape matched base_model={base_model}, "
            f"mode={'|'.join(modes)}, max_seq_len={min_context or 'any'}"
            + (f", image_tag={image_tag}" if image_tag else "")
            + ". Provide an explicit training shape."
        )
    best = min(
        candidates,
        key=lambda row: (
            modes.index(TrainerMode(row.trainer_mode)),
            row.max_context_length,
            row.total_accelerators,
            row.name,
        ),
    )
    return ResolvedShape(best.name, store.training_snapshot(best))


def _check_scalars(request: CreateTrainerJobRequest) -> None:
    config = request.training_config
    if not math.isfinite(config.learning_rate) or config.learning_rate <= 0:
        raise InvalidArgument(f"trainingConfig.learningRate must be a positive number, got {config.learning_rate}")
    if config.lora_rank < 0:
        raise InvalidArgument(f"trainingConfig.loraRank must be 0 (full-parameter) or positive, got {config.lora_rank}")
    if request.display_name and len(request.display_name) >= DISPLAY_NAME_LIMIT:
        raise InvalidArgument(f"displayName must be shorter than {DISPLAY_NAME_LIMIT} characters")
    if request.trainer_replica_count is not None and request.trainer_replica_count < 1:
        raise InvalidArgument(f"trainerReplicaCount must be at least 1, got {request.trainer_replica_count}")
    if request.inactivity_timeout is not None:
        text = request.inactivity_timeout
        seconds = float(text[:-1]) if text.endswith("s") and text[:-1].replace(".", "", 1).isdigit() else -1
        if not 0 < seconds <= MAX_INACTIVITY_SECONDS:
            raise InvalidArgument(f"inactivityTimeout must look like '1800s' and be at most 10800s, got {text!r}")


def _owned_fields(request: CreateTrainerJobRequest, snapshot: TrainingShapeSnapshot | None) -> list[tuple[str, object]]:
    """(field, the shape's value) for every shape-owned field the request sets."""
    config = request.training_config
    owned = [
        ("trainingConfig.acceleratorType", config.accelerator_type, snapshot and snapshot.accelerator_type),
        (
            "trainingConfig.acceleratorCount",
            config.accelerator_count,
            snapshot and snapshot.accelerator_count,
        ),
        ("nodeCount", request.node_count, snapshot and snapshot.node_count),
        ("deploymentShape", request.deployment_shape, snapshot and snapshot.deployment_shape_version),
    ]
    if snapshot is not None:  # on the auto-selection path these two are selectors, not overrides
        owned += [
            (
                "trainingConfig.maxContextLength",
                config.max_context_length,
                snapshot.max_supported_context_length,
            ),
            ("trainingConfig.customImageTag", config.custom_image_tag, snapshot.trainer_image_tag),
        ]
    return [(field, shape_value) for field, value, shape_value in owned if value is not None]


def _check_model_and_rank(request: CreateTrainerJobRequest, resolved: ResolvedShape) -> tuple[TrainerMode, bool]:
    """Returns the job's mode and whether it is forward-only."""
    snapshot, config = resolved.snapshot, request.training_config
    if config.base_model != snapshot.base_model:
        raise FailedPrecondition(
            f"trainingConfig.baseModel {config.base_model} does not match training shape {resolved.shape}, "
            f"which is validated for {snapshot.base_model} only"
        )
    mode, rank = snapshot.trainer_mode, config.lora_rank
    forward_only = request.forward_only or mode == TrainerMode.FORWARD_ONLY
    if forward_only and mode not in expected_modes(rank, True):
        raise FailedPrecondition(
            f"forwardOnly jobs need a FORWARD_ONLY or LORA_TRAINER shape; {resolved.shape} is {mode}"
        )
    if mode == TrainerMode.LORA_TRAINER:
        low = 0 if forward_only else 1
        if not low <= rank <= snapshot.max_lora_rank:
            raise FailedPrecondition(
                f"trainingConfig.loraRank must be between {low} and {snapshot.max_lora_rank} for LORA_TRAINER "
                f"shape {resolved.shape}, got {rank}"
            )
    elif rank != 0:
        raise FailedPrecondition(
            f"trainingConfig.loraRank must be 0 for {mode} shape {resolved.shape} (full weights, no adapter), "
            f"got {rank}; use a LORA_TRAINER shape for LoRA"
        )
    return mode, forward_only


def plan_trainer_job(
    session: Session,
    caller: Caller,
    request: CreateTrainerJobRequest,
    accelerators: dict[str, AcceleratorSpec],
    *,
    training_shape: str | None,
    skip_validations: bool,
) -> JobPlan:
    _check_scalars(request)
    config = request.training_config
    names.model(config.base_model, field="trainingConfig.baseModel")
    if skip_validations and not caller.is_admin:
        raise InvalidArgument("skipValidations=true requires an admin API key; launch from a validated training shape")

    if training_shape:
        resolved = resolve_training_shape(session, training_shape, caller, allow_unvalidated=skip_validations)
        if owned := _owned_fields(request, resolved.snapshot):
            field, shape_value = owned[0]
            raise InvalidArgument(
                f"{field} is owned by training shape {resolved.shape} (it uses {shape_value}); "
                "remove it from the request"
            )
    elif not skip_validations:
        if owned := _owned_fields(request, None):
            raise InvalidArgument(
                f"{owned[0][0]} cannot be set when the training shape is selected automatically: the selected "
                "shape owns it. Remove it, or name a training shape"
            )
        modes = expected_modes(config.lora_rank, request.forward_only)
        resolved = auto_select(
            session, caller, config.base_model, modes, config.max_context_length or 0, config.custom_image_tag
        )
    else:
        return _manual_plan(session, request, accelerators)

    mode, forward_only = _check_model_and_rank(request, resolved)
    snapshot = resolved.snapshot
    return JobPlan(
        shape=resolved,
        base_model=snapshot.base_model,
        trainer_mode=mode,
        lora_rank=config.lora_rank,
        forward_only=forward_only,
        max_context_length=snapshot.max_supported_context_length,
        accelerator_type=snapshot.accelerator_type,
        accelerator_count=snapshot.accelerator_count,
        node_count=snapshot.node_count,
        image_tag=snapshot.trainer_image_tag,
    )


def _manual_plan(
    session: Session, request: CreateTrainerJobRequest, accelerators: dict[str, AcceleratorSpec]
) -> JobPlan:
    """Admin-only: explicit infrastructure, no shape. Still refuses what cannot run at all."""
    config = request.training_config
    model = store.get_model(session, config.base_model)
    if model is None:
        raise NotFound(f"base model {config.base_model} not found")
    accelerator = config.accelerator_type or "CPU"
    if accelerator not in accelerators:
        raise InvalidArgument(
            f"trainingConfig.acceleratorType {accelerator} is unknown; known: {', '.join(sorted(accelerators))}"
        )
    mode = expected_modes(config.lora_rank, request.forward_only)[0]
    return JobPlan(
        shape=None,
        base_model=config.base_model,
        trainer_mode=mode,
        lora_rank=config.lora_rank,
        forward_only=mode == TrainerMode.FORWARD_ONLY,
        max_context_length=config.max_context_length or model.max_position_embeddings,
        accelerator_type=accelerator,
        accelerator_count=config.accelerator_count or 1,
        node_count=request.node_count or 1,
        image_tag=config.custom_image_tag or "",
    )


# --- deployments ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentPlan:
    deployment_shape: str | None  # versioned; None only for an explicitly shapeless deployment
    base_model: str
    accelerator_type: str
    accelerator_count: int
    hot_load_trainer_job: str | None


def resolve_deployment_shape(session: Session, ref: str, caller: Caller) -> tuple[str, DeploymentShapeSnapshot]:
    parsed = names.deployment_shape(ref)
    versions = [
        row for row in store.deployment_versions(session, parsed.parent) if can_see(caller, row.name, row.public)
    ]
    if not versions:
        raise NotFound(f"deployment shape {parsed.parent} not found")
    if parsed.version in (None, LATEST):
        validated = [row for row in versions if row.validated]
        if not validated:
            raise FailedPrecondition(f"deployment shape {parsed.parent} has no validated version")
        row = validated[-1]
    else:
        row = next((row for row in versions if row.name == str(parsed)), None)
        if row is None:
            raise NotFound(f"deployment shape version {parsed} not found")
        if not row.validated:
            raise FailedPrecondition(f"deployment shape version {parsed} is not validated")
    return row.name, store.deployment_snapshot(row)


def linked_deployment_shape(session: Session, job: TrainerJob) -> str | None:
    """The deployment-shape version pinned by the training shape a job runs on."""
    if not job.training_shape_version:
        return None
    row = session.get(TrainingShapeVersion, job.training_shape_version)
    return store.training_snapshot(row).deployment_shape_version if row else None


def hot_load_job(session: Session, caller: Caller, ref: str, base_model: str) -> TrainerJob:
    parsed = names.trainer_job(ref, field="hotLoadTrainerJob")
    job = session.get(TrainerJob, str(parsed))
    if job is None or not can_see(caller, job.name, public=False):
        raise NotFound(f"hotLoadTrainerJob {parsed} not found")
    if job.base_model != base_model:
        raise FailedPrecondition(
            f"hotLoadTrainerJob {parsed} trains {job.base_model}; this deployment serves {base_model}"
        )
    return job


def plan_deployment(
    session: Session,
    caller: Caller,
    request: CreateDeploymentRequest,
    accelerators: dict[str, AcceleratorSpec],
    *,
    accept_shapeless: bool,
) -> DeploymentPlan:
    base_model = str(names.model(request.base_model, field="baseModel"))
    if store.get_model(session, base_model) is None or not model_visible(caller, base_model):
        raise NotFound(f"baseModel {base_model} not found")
    if request.min_replica_count > request.max_replica_count:
        raise InvalidArgument(
            f"minReplicaCount ({request.min_replica_count}) must not exceed maxReplicaCount "
            f"({request.max_replica_count})"
        )
    job = (
        hot_load_job(session, caller, request.hot_load_trainer_job, base_model)
        if request.hot_load_trainer_job
        else None
    )
    linked = linked_deployment_shape(session, job) if job else None

    if request.deployment_shape or linked:
        version, snapshot = resolve_deployment_shape(session, request.deployment_shape or linked, caller)
        owned = {
            "acceleratorType": (request.accelerator_type, snapshot.accelerator_type),
            "acceleratorCount": (request.accelerator_count, snapshot.accelerator_count),
        }
        for field, (value, shape_value) in owned.items():
            if value is not None:
                raise InvalidArgument(
                    f"{field} is owned by deployment shape {version} (it uses {shape_value}); "
                    "remove it from the request"
                )
        if snapshot.base_model != base_model:
            raise FailedPrecondition(f"deployment shape {version} serves {snapshot.base_model}, not {base_model}")
        if linked and version != linked:
            raise FailedPrecondition(
                f"deploymentShape {version} conflicts with the deployment shape {linked} linked by the training "
                f"shape of {job.name}; omit deploymentShape or pass {linked}"
            )
        return DeploymentPlan(
            version, base_model, snapshot.accelerator_type, snapshot.accelerator_count, job and job.name
        )

    if not accept_shapeless:
        raise InvalidArgument(
            "deploymentShape is required: pass the deployment shape linked by your training shape (or "
            "hotLoadTrainerJob, which implies it); a shapeless deployment needs acceptShapelessRisk=true"
        )
    accelerator = request.accelerator_type or "CPU"
    if accelerator not in accelerators:
        raise InvalidArgument(f"acceleratorType {accelerator} is unknown; known: {', '.join(sorted(accelerators))}")
    return DeploymentPlan(None, base_model, accelerator, request.accelerator_count or 1, job and job.name)
