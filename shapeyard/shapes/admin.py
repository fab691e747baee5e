"""Admin operations on shapes: create a shape, update it (a new version), validate a version."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from shapeyard.shapes.validation import validate_training_shape
from shapeyard.store import catalog as store
from shapeyard.store.tables import DeploymentShapeVersion, TrainingShapeVersion
from shapeyard.wire import names
from shapeyard.wire.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, validation_message
from shapeyard.wire.shapes import AcceleratorSpec, ModelSpec, SmokeResult, TrainingShapeSnapshot, ValidationReport

# Runs a real step on real hardware for a shape that passed the memory plan; a string says why it could not run.
SmokeRunner = Callable[[TrainingShapeSnapshot, ModelSpec], SmokeResult | str]

# Fields that define what a shape is; changing them means a different shape, not a new version.
IDENTITY_FIELDS = ("baseModel", "trainerMode")


def validate_version(
    session: Session,
    row: TrainingShapeVersion,
    accelerators: dict[str, AcceleratorSpec],
    smoke: SmokeRunner | None = None,
) -> ValidationReport:
    snapshot = store.training_snapshot(row)
    linked = session.get(DeploymentShapeVersion, snapshot.deployment_shape_version)
    models = {model.name: model for model in store.list_models(session)}
    report = validate_training_shape(
        snapshot,
        store.deployment_snapshot(linked) if linked else None,
        models,
        accelerators,
        deployment_shape_validated=bool(linked and linked.validated),
    )
    if report.passed and smoke is not None:
        result = smoke(snapshot, models[snapshot.base_model])
        if isinstance(result, str):
            report.summary = f"{report.summary}; smoke step not run here: {result}"
        else:
            report.smoke = result
            report.passed = result.passed
            report.summary = f"{report.summary}; smoke step on {result.device}: " + (
                f"{result.peak_memory_gib:.2f} GiB peak, {result.step_seconds:.2f} s per step"
                if result.passed
                else f"failed: {result.detail}"
            )
    store.record_validation(row, report)
    return report


def _link_deployment_shape(session: Session, fields: dict[str, Any]) -> None:
    """Pin an unversioned deploymentShapeVersion to the latest validated version of that deployment shape."""
    ref = fields.get("deploymentShapeVersion")
    if not ref:
        raise InvalidArgument("deploymentShapeVersion is required: every training shape links a deployment shape")
    parsed = names.deployment_shape(ref, field="deploymentShapeVersion")
    if parsed.version is None:
        latest = store.latest_version(session, DeploymentShapeVersion, parsed.parent, validated_only=True)
        if latest is None:
            raise FailedPrecondition(f"deployment shape {parsed.parent} has no validated version to link")
        fields["deploymentShapeVersion"] = latest.name
    else:
        linked = session.get(DeploymentShapeVersion, str(parsed))
        if linked is None:
            raise NotFound(f"deployment shape version {parsed} does not exist")
        if not linked.validated:
            raise FailedPrecondition(f"deployment shape version {parsed} is not validated")


def _snapshot(fields: dict[str, Any]) -> TrainingShapeSnapshot:
    try:
        return TrainingShapeSnapshot.model_validate(fields)
    except ValidationError as exc:
        raise InvalidArgument(validation_message(exc.errors(), "training shape")) from None


def create_shape(
    session: Session,
    shape: str,
    fields: dict[str, Any],
    accelerators: dict[str, AcceleratorSpec],
    *,
    public: bool,
) -> TrainingShapeVersion:
    names.parse(shape, names.TRAINING_SHAPES, versioned=False, field="training shape")
    if store.training_shape_exists(session, shape):
        raise AlreadyExists(f"training shape {shape} already exists; update it to add a version")
    fields = dict(fields)
    _link_deployment_shape(session, fields)
    row = store.add_training_version(session, shape, _snapshot(fields), public=public)
    validate_version(session, row, accelerators)
    return row


def update_shape(
    session: Session,
    shape: str,
    changes: dict[str, Any],
    accelerators: dict[str, AcceleratorSpec],
) -> TrainingShapeVersion:
    """Make a new version from the latest one with `changes` applied; the old versions stay as they were."""
    latest = store.latest_version(session, TrainingShapeVersion, shape, validated_only=False)
    if latest is None:
        raise NotFound(f"training shape {shape} does not exist")
    current = store.training_snapshot(latest).to_json_dict()
    for field in IDENTITY_FIELDS:
        if field in changes and changes[field] != current.get(field):
            raise InvalidArgument(f"{field} of {shape} cannot change; create a new training shape instead")
    fields = {**current, **changes}
    if "deploymentShapeVersion" in changes:
        _link_deployment_shape(session, fields)
    snapshot = _snapshot(fields)
    if snapshot == store.training_snapshot(latest):
        raise InvalidArgument(f"the update changes nothing in the latest version of {shape}")
    row = store.add_training_version(session, shape, snapshot, public=latest.public)
    validate_version(session, row, accelerators)
    return row
