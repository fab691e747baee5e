"""Models, training shapes and deployment shapes in the database.

Versions are append-only: a new snapshot becomes a new row with the next ordinal; a row's snapshot never
changes afterwards. Only the validation outcome of a version is written later. "Latest validated" is not
stored: it is the validated version with the highest ordinal of its shape, computed when read.
"""

from __future__ import annotations

import hashlib
import json
from base64 import b32encode
from collections.abc import Iterable
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shapeyard.store.tables import (
    DeploymentShape,
    DeploymentShapeVersion,
    Model,
    TrainingShape,
    TrainingShapeVersion,
    utcnow,
)
from shapeyard.wire import names
from shapeyard.wire.base import CamelModel
from shapeyard.wire.shapes import DeploymentShapeSnapshot, ModelSpec, TrainingShapeSnapshot, ValidationReport

VersionRow = TypeVar("VersionRow", TrainingShapeVersion, DeploymentShapeVersion)


def put_model(session: Session, spec: ModelSpec) -> None:
    account = names.model(spec.name).account
    row = session.get(Model, spec.name)
    if row is None:
        session.add(Model(name=spec.name, account=account, spec=spec.to_json_dict()))
    else:
        row.spec = spec.to_json_dict()


def get_model(session: Session, name: str) -> ModelSpec | None:
    row = session.get(Model, name)
    return ModelSpec.model_validate(row.spec) if row else None


def list_models(session: Session) -> list[ModelSpec]:
    return [ModelSpec.model_validate(row.spec) for row in session.scalars(select(Model).order_by(Model.name))]


def _versions(session: Session, table: type[VersionRow], shape: str | None) -> list[VersionRow]:
    query = select(table).order_by(table.shape, table.ordinal)
    if shape is not None:
        query = query.where(table.shape == shape)
    return list(session.scalars(query))


def training_versions(session: Session, shape: str | None = None) -> list[TrainingShapeVersion]:
    return _versions(session, TrainingShapeVersion, shape)


def deployment_versions(session: Session, shape: str | None = None) -> list[DeploymentShapeVersion]:
    return _versions(session, DeploymentShapeVersion, shape)


def latest_validated_ordinals(rows: Iterable[VersionRow]) -> dict[str, int]:
    latest: dict[str, int] = {}
    for row in rows:
        if row.validated and row.ordinal > latest.get(row.shape, 0):
            latest[row.shape] = row.ordinal
    return latest


def latest_version(session: Session, table: type[VersionRow], shape: str, *, validated_only: bool) -> VersionRow | None:
    query = select(table).where(table.shape == shape).order_by(table.ordinal.desc()).limit(1)
    if validated_only:
        query = query.where(table.validated.is_(True))
    return session.scalars(query).first()


def training_shape_exists(session: Session, shape: str) -> bool:
    return session.get(TrainingShape, shape) is not None


def _next_ordinal(session: Session, table: type[VersionRow], shape: str) -> int:
    return (session.scalar(select(func.max(table.ordinal)).where(table.shape == shape)) or 0) + 1


def new_version_id(shape_name: str, ordinal: int, snapshot: CamelModel) -> str:
    """Eight lowercase characters derived from the shape, its version number and the content.

    Deterministic, so loading the same catalog into two fresh databases yields the same version names.
    """
    payload = json.dumps([shape_name, ordinal, snapshot.to_json_dict()], sort_keys=True)
    return b32encode(hashlib.sha256(payload.encode()).digest()).decode().lower()[:8]


def add_training_version(
    session: Session, shape: str, snapshot: TrainingShapeSnapshot, *, public: bool
) -> TrainingShapeVersion:
    """Append a version (creating the shape on first use)."""
    parent = session.get(TrainingShape, shape)
    if parent is None:
        parent = TrainingShape(name=shape, account=names.training_shape(shape).account)
        session.add(parent)
        session.flush()
    parent.update_time = utcnow()
    ordinal = _next_ordinal(session, TrainingShapeVersion, shape)
    row = TrainingShapeVersion(
        name=f"{shape}{names.VERSIONS}{new_version_id(shape, ordinal, snapshot)}",
        shape=shape,
        ordinal=ordinal,
        snapshot=snapshot.to_json_dict(),
        base_model=snapshot.base_model,
        trainer_mode=snapshot.trainer_mode.value,
        accelerator_type=snapshot.accelerator_type,
        max_context_length=snapshot.max_supported_context_length,
        total_accelerators=snapshot.total_accelerators,
        public=public,
    )
    session.add(row)
    session.flush()
    return row


def add_deployment_version(
    session: Session, shape: str, snapshot: DeploymentShapeSnapshot, *, public: bool
) -> DeploymentShapeVersion:
    if session.get(DeploymentShape, shape) is None:
        session.add(DeploymentShape(name=shape, account=names.deployment_shape(shape).account))
        session.flush()
    ordinal = _next_ordinal(session, DeploymentShapeVersion, shape)
    row = DeploymentShapeVersion(
        name=f"{shape}{names.VERSIONS}{new_version_id(shape, ordinal, snapshot)}",
        shape=shape,
        ordinal=ordinal,
        snapshot=snapshot.to_json_dict(),
        base_model=snapshot.base_model,
        public=public,
    )
    session.add(row)
    session.flush()
    return row


def record_validation(row: TrainingShapeVersion | DeploymentShapeVersion, report: ValidationReport) -> None:
    row.validated = report.passed
    row.validation_report = report.to_json_dict()


def training_snapshot(row: TrainingShapeVersion) -> TrainingShapeSnapshot:
    return TrainingShapeSnapshot.model_validate(row.snapshot)


def deployment_snapshot(row: DeploymentShapeVersion) -> DeploymentShapeSnapshot:
    return DeploymentShapeSnapshot.model_validate(row.snapshot)


def validation_report(row: TrainingShapeVersion | DeploymentShapeVersion) -> ValidationReport | None:
    return ValidationReport.model_validate(row.validation_report) if row.validation_report else None
