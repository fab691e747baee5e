"""Models, training shapes and deployment shapes: reads for every key, admin writes.

The public catalog (account `fireworks`) is readable by every key; other accounts' shapes only by their owner.
`-` stands for "every account" / "every shape" in version listings, as the SDK and cookbook use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends
from pydantic.alias_generators import to_camel
from sqlalchemy.orm import Session

from shapeyard.control.api.pagination import paginate
from shapeyard.control.auth import require_admin
from shapeyard.control.deps import CallerDep, PlaneDep, WireRouter
from shapeyard.control.lifecycle.jobs import smoke_runner
from shapeyard.shapes import admin
from shapeyard.shapes.filters import Record, parse_filter
from shapeyard.shapes.resolve import LATEST, can_see, model_visible, resolve_training_shape, visible_versions
from shapeyard.store import catalog as store
from shapeyard.store.accounts import Caller
from shapeyard.store.catalog import VersionRow
from shapeyard.store.tables import DeploymentShapeVersion, TrainingShape, TrainingShapeVersion
from shapeyard.wire import names, routes
from shapeyard.wire.control import (
    BaseModelDetails,
    CreateTrainingShapeRequest,
    DeploymentShapeVersionResource,
    ListDeploymentShapeVersionsResponse,
    ListModelsResponse,
    ListTrainingShapesResponse,
    ListTrainingShapeVersionsResponse,
    ModelResource,
    TrainingShapeResource,
    TrainingShapeVersionResource,
    UpdateShapeVersionRequest,
    UpdateTrainingShapeRequest,
)
from shapeyard.wire.errors import InvalidArgument, NotFound
from shapeyard.wire.shapes import ModelSpec

router = WireRouter(tags=["shapes"])
VersionResource = TypeVar("VersionResource", TrainingShapeVersionResource, DeploymentShapeVersionResource)


def _with_camel(fields: dict[str, tuple[str, type]]) -> dict[str, tuple[str, type]]:
    """Accept both `snapshot.base_model` and `snapshot.baseModel` spellings."""
    camel = {".".join(to_camel(part) for part in name.split(".")): spec for name, spec in fields.items()}
    return {**fields, **camel}


_COMMON_FILTERS = {
    "snapshot.base_model": ("base_model", str),
    "snapshot.accelerator_type": ("accelerator_type", str),
    "validated": ("validated", bool),
    "public": ("public", bool),
    "latest_validated": ("latest_validated", bool),
}
TRAINING_FILTERS = _with_camel(
    {
        **_COMMON_FILTERS,
        "snapshot.trainer_mode": ("trainer_mode", str),
        "snapshot.max_supported_context_length": ("max_context_length", int),
        "snapshot.model_type": ("model_type", str),
        "snapshot.parameter_count": ("parameter_count", int),
    }
)
DEPLOYMENT_FILTERS = _with_camel(_COMMON_FILTERS)
_ORDERS: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "create_time desc": (lambda row: (row.create_time, row.name), True),
    "create_time": (lambda row: (row.create_time, row.name), False),
    "name": (lambda row: row.name, False),
    "name desc": (lambda row: row.name, True),
}


def _order(rows: list[VersionRow], order_by: str) -> list[VersionRow]:
    spec = " ".join(order_by.replace("createTime", "create_time").split()) or "create_time desc"
    if spec not in _ORDERS:
        raise InvalidArgument(f"orderBy {order_by!r} is not supported; use one of: {', '.join(_ORDERS)}")
    key, reverse = _ORDERS[spec]
    return sorted(rows, key=key, reverse=reverse)


def _scope(account: str, collection: str, shape: str) -> tuple[str | None, str | None]:
    """(account, shape name) to list; None means every one. Validates the segments."""
    if account != names.ANY:
        names.check_id("account id", account)
    if shape == names.ANY:
        return (None if account == names.ANY else account), None
    if account == names.ANY:
        raise InvalidArgument(f"listing one shape needs its account: accounts/<account>/{collection}/{shape}")
    return account, str(names.parse(names.resource_name(account, collection, shape), collection, versioned=False))


def training_version_resource(row: TrainingShapeVersion, latest: dict[str, int]) -> TrainingShapeVersionResource:
    return _version_resource(TrainingShapeVersionResource, row, store.training_snapshot(row), latest)


def deployment_version_resource(row: DeploymentShapeVersion, latest: dict[str, int]) -> DeploymentShapeVersionResource:
    return _version_resource(DeploymentShapeVersionResource, row, store.deployment_snapshot(row), latest)


def _version_resource(
    resource: type[VersionResource], row: VersionRow, snapshot: Any, latest: dict[str, int]
) -> VersionResource:
    return resource(
        name=row.name,
        create_time=row.create_time,
        snapshot=snapshot,
        validated=row.validated,
        public=row.public,
        latest_validated=latest.get(row.shape) == row.ordinal,
        validation_report=store.validation_report(row),
    )


@dataclass
class VersionQuery:
    """The query parameters of a version listing."""

    filter: str = ""
    orderBy: str = ""
    pageSize: int = 0
    pageToken: str = ""


VersionQueryDep = Annotated[VersionQuery, Depends()]


def _in_scope(
    session: Session,
    caller: Caller,
    account: str,
    collection: str,
    shape: str,
    versions: Callable[[Session, str | None], Sequence[VersionRow]],
    what: str,
) -> tuple[list[VersionRow], dict[str, int]]:
    """The versions a listing covers (one shape's, or `-`: every one) that the caller may see, with each shape's
    latest validated ordinal."""
    scope_account, scope_shape = _scope(account, collection, shape)
    rows, latest = visible_versions(versions(session, scope_shape), caller, scope_account)
    if scope_shape is not None and not rows:
        raise NotFound(f"{what} {scope_shape} not found")
    return rows, latest


def _listing(
    rows: Sequence[VersionRow],
    latest: dict[str, int],
    query: VersionQuery,
    fields: dict[str, tuple[str, type]],
    record: Callable[[VersionRow], Record],
) -> tuple[list[VersionRow], str, int]:
    """One page of the versions the filter selects, in the requested order: (page, next token, total)."""
    matches = parse_filter(query.filter, fields)

    def full_record(row: VersionRow) -> Record:
        latest_validated = latest.get(row.shape) == row.ordinal
        return {"validated": row.validated, "public": row.public, "latest_validated": latest_validated, **record(row)}

    selected = _order([row for row in rows if matches(full_record(row))], query.orderBy)
    page, token = paginate(selected, query.pageSize, query.pageToken)
    return page, token, len(selected)


# --- models --------------------------------------------------------------------------------------------


def _model_resource(spec: ModelSpec) -> ModelResource:
    details = BaseModelDetails(moe=spec.is_moe, parameter_count=spec.parameter_count, model_type=spec.model_type)
    return ModelResource(name=spec.name, display_name=spec.display_name, base_model_details=details, spec=spec)


@router.get(routes.MODELS)
def list_models(
    account: str, caller: CallerDep, control: PlaneDep, pageSize: int = 0, pageToken: str = ""
) -> ListModelsResponse:
    names.check_id("account id", account)
    with control.db.session() as session:
        specs = [
            m for m in store.list_models(session) if names.in_account(m.name, account) and model_visible(caller, m.name)
        ]
    page, token = paginate(specs, pageSize, pageToken)
    return ListModelsResponse(models=[_model_resource(m) for m in page], next_page_token=token)


@router.get(routes.MODEL)
def get_model(account: str, model: str, caller: CallerDep, control: PlaneDep) -> ModelResource:
    name = str(names.model(names.resource_name(account, names.MODELS, model), field="model"))
    with control.db.session() as session:
        spec = store.get_model(session, name)
    if spec is None or not model_visible(caller, name):
        raise NotFound(f"model {name} not found")
    return _model_resource(spec)


# --- training shapes -------------------------------------------------------------------------------------


def _shape_resource(session: Session, shape: TrainingShape, caller: Caller) -> TrainingShapeResource:
    rows, latest = visible_versions(store.training_versions(session, shape.name), caller, None)
    if not rows:
        raise NotFound(f"training shape {shape.name} not found")
    validated = [row for row in rows if latest.get(row.shape) == row.ordinal]
    return TrainingShapeResource(
        name=shape.name,
        create_time=shape.create_time,
        update_time=shape.update_time,
        latest_version=training_version_resource(rows[-1], latest),
        latest_validated_version=validated[0].name if validated else "",
        version_count=len(rows),
    )


@router.get(routes.TRAINING_SHAPES)
def list_training_shapes(
    account: str, caller: CallerDep, control: PlaneDep, pageSize: int = 0, pageToken: str = ""
) -> ListTrainingShapesResponse:
    names.check_id("account id", account)
    with control.db.session() as session:
        shapes = session.query(TrainingShape).filter(TrainingShape.account == account).order_by(TrainingShape.name)
        resources = []
        for shape in shapes:
            try:
                resources.append(_shape_resource(session, shape, caller))
            except NotFound:
                continue
    page, token = paginate(resources, pageSize, pageToken)
    return ListTrainingShapesResponse(training_shapes=page, next_page_token=token, total_size=len(resources))


@router.post(routes.TRAINING_SHAPES)
def create_training_shape(
    account: str,
    body: CreateTrainingShapeRequest,
    caller: CallerDep,
    control: PlaneDep,
    trainingShapeId: str = "",
) -> TrainingShapeResource:
    require_admin(caller)
    if not trainingShapeId:
        raise InvalidArgument("trainingShapeId is required (query parameter)")
    name = names.resource_name(account, names.TRAINING_SHAPES, trainingShapeId)
    with control.db.session() as session:
        admin.create_shape(session, name, body.snapshot, control.catalog.accelerators, public=body.public)
        return _shape_resource(session, session.get(TrainingShape, name), caller)


def _training_shape(session: Session, account: str, shape: str) -> TrainingShape:
    full = names.resource_name(account, names.TRAINING_SHAPES, shape)
    name = str(names.parse(full, names.TRAINING_SHAPES, versioned=False))
    row = session.get(TrainingShape, name)
    if row is None:
        raise NotFound(f"training shape {name} not found")
    return row


@router.get(routes.TRAINING_SHAPE)
def get_training_shape(account: str, shape: str, caller: CallerDep, control: PlaneDep) -> TrainingShapeResource:
    with control.db.session() as session:
        return _shape_resource(session, _training_shape(session, account, shape), caller)


@router.patch(routes.TRAINING_SHAPE)
def update_training_shape(
    account: str, shape: str, body: UpdateTrainingShapeRequest, caller: CallerDep, control: PlaneDep
) -> TrainingShapeResource:
    """Adds a version with the changed fields; earlier versions stay untouched."""
    require_admin(caller)
    with control.db.session() as session:
        parent = _training_shape(session, account, shape)
        admin.update_shape(session, parent.name, body.snapshot, control.catalog.accelerators)
        return _shape_resource(session, parent, caller)


@router.get(routes.TRAINING_SHAPE_VERSIONS)
def list_training_shape_versions(
    account: str, shape: str, caller: CallerDep, control: PlaneDep, query: VersionQueryDep
) -> ListTrainingShapeVersionsResponse:
    with control.db.session() as session:
        rows, latest = _in_scope(
            session, caller, account, names.TRAINING_SHAPES, shape, store.training_versions, "training shape"
        )
        models = {spec.name: spec for spec in store.list_models(session)}

    def record(row: TrainingShapeVersion) -> Record:
        model = models.get(row.base_model)
        return {
            "base_model": row.base_model,
            "trainer_mode": row.trainer_mode,
            "accelerator_type": row.accelerator_type,
            "max_context_length": row.max_context_length,
            "model_type": model.model_type if model else "",
            "parameter_count": model.parameter_count if model else 0,
        }

    page, token, total = _listing(rows, latest, query, TRAINING_FILTERS, record)
    return ListTrainingShapeVersionsResponse(
        training_shape_versions=[training_version_resource(row, latest) for row in page],
        next_page_token=token,
        total_size=total,
    )


def _training_version(session: Session, caller: Caller, account: str, shape: str, version: str) -> TrainingShapeVersion:
    ref = f"{names.resource_name(account, names.TRAINING_SHAPES, shape)}{names.VERSIONS}{version}"
    if version == LATEST:
        ref = resolve_training_shape(session, ref, caller).version
    parsed = names.parse(ref, names.TRAINING_SHAPES, versioned=True, field="training shape version")
    row = session.get(TrainingShapeVersion, str(parsed))
    if row is None or not can_see(caller, row.name, row.public):
        raise NotFound(f"training shape version {parsed} not found")
    return row


def _training_version_answer(
    session: Session, caller: Caller, row: TrainingShapeVersion
) -> TrainingShapeVersionResource:
    _, latest = visible_versions(store.training_versions(session, row.shape), caller, None)
    return training_version_resource(row, latest)


@router.get(routes.TRAINING_SHAPE_VERSION)
def get_training_shape_version(
    account: str, shape: str, version: str, caller: CallerDep, control: PlaneDep
) -> TrainingShapeVersionResource:
    """`versions/latest` answers the latest validated version."""
    with control.db.session() as session:
        row = _training_version(session, caller, account, shape, version)
        return _training_version_answer(session, caller, row)


@router.patch(routes.TRAINING_SHAPE_VERSION)
def update_training_shape_version(
    account: str,
    shape: str,
    version: str,
    body: UpdateShapeVersionRequest,
    caller: CallerDep,
    control: PlaneDep,
) -> TrainingShapeVersionResource:
    """Only visibility can change on a version; its snapshot never does."""
    require_admin(caller)
    with control.db.session() as session:
        row = _training_version(session, caller, account, shape, version)
        row.public = body.public
        return _training_version_answer(session, caller, row)


@router.post(routes.VALIDATE_TRAINING_SHAPE_VERSION)
def validate_training_shape_version(
    account: str, shape: str, version: str, caller: CallerDep, control: PlaneDep
) -> TrainingShapeVersionResource:
    """Re-runs the memory plan (and the smoke step where the hardware is here); updates the validated flag."""
    require_admin(caller)
    with control.db.session() as session:
        row = _training_version(session, caller, account, shape, version)
        admin.validate_version(session, row, control.catalog.accelerators, smoke_runner(control))
        return _training_version_answer(session, caller, row)


# --- deployment shapes -----------------------------------------------------------------------------------


@router.get(routes.DEPLOYMENT_SHAPE_VERSIONS)
def list_deployment_shape_versions(
    account: str, shape: str, caller: CallerDep, control: PlaneDep, query: VersionQueryDep
) -> ListDeploymentShapeVersionsResponse:
    with control.db.session() as session:
        rows, latest = _in_scope(
            session, caller, account, names.DEPLOYMENT_SHAPES, shape, store.deployment_versions, "deployment shape"
        )

    def record(row: DeploymentShapeVersion) -> Record:
        return {"base_model": row.base_model, "accelerator_type": store.deployment_snapshot(row).accelerator_type}

    page, token, total = _listing(rows, latest, query, DEPLOYMENT_FILTERS, record)
    return ListDeploymentShapeVersionsResponse(
        deployment_shape_versions=[deployment_version_resource(row, latest) for row in page],
        next_page_token=token,
        total_size=total,
    )


@router.get(routes.DEPLOYMENT_SHAPE_VERSION)
def get_deployment_shape_version(
    account: str, shape: str, version: str, caller: CallerDep, control: PlaneDep
) -> DeploymentShapeVersionResource:
    ref = f"{names.resource_name(account, names.DEPLOYMENT_SHAPES, shape)}{names.VERSIONS}{version}"
    parsed = names.parse(ref, names.DEPLOYMENT_SHAPES, versioned=True, field="deployment shape version")
    with control.db.session() as session:
        rows, latest = visible_versions(store.deployment_versions(session, parsed.parent), caller, None)
        if version == LATEST:
            row = next((r for r in reversed(rows) if latest.get(r.shape) == r.ordinal), None)
        else:
            row = next((r for r in rows if r.name == str(parsed)), None)
        if row is None:
            raise NotFound(f"deployment shape version {parsed} not found")
        return deployment_version_resource(row, latest)
