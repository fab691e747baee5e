"""Database tables. The control plane owns all state; workers never write here.

Shape and model payloads are stored as the same camelCase JSON the API returns; the columns a query filters on
(base model, mode, accelerator, context) are copied out of the snapshot when a version is written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shapeyard.wire.control import CreateDeploymentRequest, CreateTrainerJobRequest

NAME = String(255)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON}


class Account(Base):
    __tablename__ = "accounts"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(255), default="")
    create_time: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    key_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    account: Mapped[str] = mapped_column(ForeignKey("accounts.name"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(default=utcnow)


class Model(Base):
    __tablename__ = "models"
    name: Mapped[str] = mapped_column(NAME, primary_key=True)
    account: Mapped[str] = mapped_column(String(63), index=True)
    spec: Mapped[dict[str, Any]]
    create_time: Mapped[datetime] = mapped_column(default=utcnow)


class DeploymentShape(Base):
    __tablename__ = "deployment_shapes"
    name: Mapped[str] = mapped_column(NAME, primary_key=True)
    account: Mapped[str] = mapped_column(String(63), index=True)
    create_time: Mapped[datetime] = mapped_column(default=utcnow)


class DeploymentShapeVersion(Base):
    __tablename__ = "deployment_shape_versions"
    name: Mapped[str] = mapped_column(NAME, primary_key=True)
    shape: Mapped[str] = mapped_column(ForeignKey("deployment_shapes.name"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    snapshot: Mapped[dict[str, Any]]
    base_model: Mapped[str] = mapped_column(NAME, index=True)
    validated: Mapped[bool] = mapped_column(Boolean, default=False)
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    validation_report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    create_time: Mapped[datetime] = mapped_column(default=utcnow)


class TrainingShape(Base):
    __tablename__ = "training_shapes"
    name: Mapped[str] = mapped_column(NAME, primary_key=True)
    account: Mapped[str] = mapped_column(String(63), index=True)
    create_time: Mapped[datetime] = mapped_column(default=utcnow)
    update_time: Mapped[datetime] = mapped_column(default=utcnow)


class TrainingShapeVersion(Base):
    __tablename__ = "training_shape_versions"
    name: Mapped[str] = mapped_column(NAME, primary_key=True)
    shape: Mapped[str] = mapped_column(ForeignKey("training_shapes.name"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    snapshot: Mapped[dict[str, Any]]
    base_model: Mapped[str] = mapped_column(NAME, index=True)
    trainer_mode: Mapped[str] = mapped_column(String(32))
    accelerator_type: Mapped[str] = mapped_column(String(64))
    max_context_length: Mapped[int] = mapped_column(Integer)
    total_accelerators: Mapped[int] = mapped_column(Integer)
    validated: Mapped[bool] = mapped_column(Boolean, default=False)
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    validation_report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    create_time: Mapped[datetime] = mapped_column(default=utcnow)


class TrainerJob(Base):
    __tablename__ = "trainer_jobs"
    name: Mapped[str] = mapped_column(NAME, primary_key=True)
    account: Mapped[str] = mapped_column(ForeignKey("accounts.name"), index=True)
    job_id: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(32))
    status_message: Mapped[str] = mapped_column(Text, default="")
    display_name: Mapped[str] = mapped_column(String(255), default="")
    training_shape_version: Mapped[str | None] = mapped_column(NAME, nullable=True)
    base_model: Mapped[str] = mapped_column(NAME)
    trainer_mode: Mapped[str] = mapped_column(String(32))
    lora_rank: Mapped[int] = mapped_column(Integer, default=0)
    learning_rate: Mapped[float] = mapped_column(Float, default=1e-5)
    max_context_length: Mapped[int] = mapped_column(Integer)
    forward_only: Mapped[bool] = mapped_column(Boolean, default=False)
    trainer_replica_count: Mapped[int] = mapped_column(Integer, default=1)
    accelerator_type: Mapped[str] = mapped_column(String(64))
    accelerator_count: Mapped[int] = mapped_column(Integer)
    node_count: Mapped[int] = mapped_column(Integer, default=1)
    image_tag: Mapped[str] = mapped_column(String(64), default="")
    request: Mapped[dict[str, Any]]  # the CreateTrainerJobRequest it was created with
    create_time: Mapped[datetime] = mapped_column(default=utcnow)
    update_time: Mapped[datetime] = mapped_column(default=utcnow)

    def creation_request(self) -> CreateTrainerJobRequest:
        return CreateTrainerJobRequest.model_validate(self.request)


class Deployment(Base):
    __tablename__ = "deployments"
    name: Mapped[str] = mapped_column(NAME, primary_key=True)
    account: Mapped[str] = mapped_column(ForeignKey("accounts.name"), index=True)
    deployment_id: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(32))
    status_message: Mapped[str] = mapped_column(Text, default="")
    display_name: Mapped[str] = mapped_column(String(255), default="")
    base_model: Mapped[str] = mapped_column(NAME)
    deployment_shape_version: Mapped[str | None] = mapped_column(NAME, nullable=True)
    accelerator_type: Mapped[str] = mapped_column(String(64))
    accelerator_count: Mapped[int] = mapped_column(Integer)
    min_replica_count: Mapped[int] = mapped_column(Integer, default=0)
    max_replica_count: Mapped[int] = mapped_column(Integer, default=1)
    hot_load_trainer_job: Mapped[str | None] = mapped_column(NAME, nullable=True)
    # the sampler snapshot every replica serves (None: the base model); a replica that starts loads it first
    snapshot_identity: Mapped[str | None] = mapped_column(NAME, nullable=True)
    snapshot_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    request: Mapped[dict[str, Any]]  # the CreateDeploymentRequest, with the updates it received since
    create_time: Mapped[datetime] = mapped_column(default=utcnow)
    update_time: Mapped[datetime] = mapped_column(default=utcnow)

    def creation_request(self) -> CreateDeploymentRequest:
        return CreateDeploymentRequest.model_validate(self.request)
