"""Deployments: serving replicas from a deployment shape, linked to the trainer job whose snapshots they load."""

from __future__ import annotations

from pydantic.alias_generators import to_camel
from sqlalchemy import select

from shapeyard.control.api.pagination import paginate
from shapeyard.control.auth import require_account
from shapeyard.control.deps import CallerDep, PlaneDep, WireRouter
from shapeyard.control.lifecycle.deployments import (
    find_deployment,
    replica_placement,
    replica_statuses,
    set_deployment_state,
    stop_replicas,
)
from shapeyard.shapes.resolve import hot_load_job, linked_deployment_shape, plan_deployment
from shapeyard.store.tables import Deployment, utcnow
from shapeyard.wire import names, routes
from shapeyard.wire.control import (
    CreateDeploymentRequest,
    DeploymentResource,
    DeploymentState,
    ListDeploymentsResponse,
    ReplicaStatus,
    UpdateDeploymentRequest,
)
from shapeyard.wire.errors import AlreadyExists, FailedPrecondition, InvalidArgument

router = WireRouter(tags=["deployments"])

_MUTABLE = (
    "display_name",
    "description",
    "min_replica_count",
    "max_replica_count",
    "hot_load_trainer_job",
    "hot_load_transition_type",
)
# An update mask may spell a field either way.
_MASK_ALIASES = {**{field: field for field in _MUTABLE}, **{to_camel(field): field for field in _MUTABLE}}
_OWNED = ("deployment_shape", "accelerator_type", "accelerator_count", "base_model")


def deployment_resource(row: Deployment, replicas: list[ReplicaStatus] | None = None) -> DeploymentResource:
    request = row.creation_request()
    return DeploymentResource(
        name=row.name,
        display_name=row.display_name,
        description=request.description or "",
        state=DeploymentState(row.state),
        status_message=row.status_message,
        create_time=row.create_time,
        update_time=row.update_time,
        base_model=row.base_model,
        deployment_shape=row.deployment_shape_version,
        accelerator_type=row.accelerator_type,
        accelerator_count=row.accelerator_count,
        min_replica_count=row.min_replica_count,
        max_replica_count=row.max_replica_count,
        enable_hot_load=request.enable_hot_load,
        for_training=request.for_training,
        hot_load_trainer_job=row.hot_load_trainer_job or "",
        hot_load_transition_type=request.hot_load_transition_type or "",
        replicas=replicas or [],
    )


@router.post(routes.DEPLOYMENTS)
def create_deployment(
    account: str,
    body: CreateDeploymentRequest,
    caller: CallerDep,
    control: PlaneDep,
    deploymentId: str = "",
    acceptShapelessRisk: bool = False,
) -> DeploymentResource:
    if not deploymentId:
        raise InvalidArgument("deploymentId is required (query parameter)")
    names.check_id("deploymentId", deploymentId)
    require_account(caller, account, f"account {account}")
    name = names.deployment_name(account, deploymentId)
    with control.db.session() as session:
        if session.get(Deployment, name) is not None:
            raise AlreadyExists(f"deployment {name} already exists")
        plan = plan_deployment(
            session, caller, body, control.catalog.accelerators, accept_shapeless=acceptShapelessRisk
        )
        if body.max_replica_count > 0:  # hardware this machine lacks is refused now, not left waiting
            control.launcher.check(replica_placement(control, plan.accelerator_type, plan.accelerator_count))
        row = Deployment(
            name=name,
            account=account,
            deployment_id=deploymentId,
            state=DeploymentState.CREATING.value,
            display_name=body.display_name or deploymentId,
            base_model=plan.base_model,
            deployment_shape_version=plan.deployment_shape,
            accelerator_type=plan.accelerator_type,
            accelerator_count=plan.accelerator_count,
            min_replica_count=body.min_replica_count,
            max_replica_count=body.max_replica_count,
            hot_load_trainer_job=plan.hot_load_trainer_job,
            request=body.to_json_dict(),
        )
        session.add(row)
        session.flush()
        return deployment_resource(row, replica_statuses(control, row))


@router.get(routes.DEPLOYMENT)
def get_deployment(account: str, deployment_id: str, caller: CallerDep, control: PlaneDep) -> DeploymentResource:
    with control.db.session() as session:
        row = find_deployment(session, caller, account, deployment_id)
        return deployment_resource(row, replica_statuses(control, row))


@router.get(routes.DEPLOYMENTS)
def list_deployments(
    account: str, caller: CallerDep, control: PlaneDep, pageSize: int = 0, pageToken: str = ""
) -> ListDeploymentsResponse:
    names.check_id("account id", account)
    require_account(caller, account, f"account {account}")
    with control.db.session() as session:
        query = select(Deployment).where(Deployment.account == account).order_by(Deployment.create_time)
        rows = [deployment_resource(row, replica_statuses(control, row)) for row in session.scalars(query)]
    page, token = paginate(rows, pageSize, pageToken)
    return ListDeploymentsResponse(deployments=page, next_page_token=token, total_size=len(rows))


def _mask(update_mask: str, body: UpdateDeploymentRequest) -> set[str]:
    provided = body.model_dump(exclude_unset=True)
    for field in _OWNED:
        if field in provided:
            camel = UpdateDeploymentRequest.model_fields[field].alias
            raise InvalidArgument(f"{camel} cannot change: the deployment shape owns it; create a new deployment")
    if not update_mask:
        return set(provided)
    fields = set()
    for path in filter(None, (p.strip() for p in update_mask.split(","))):
        if path not in _MASK_ALIASES:
            raise InvalidArgument(f"updateMask field {path!r} cannot be updated; updatable: {', '.join(_MUTABLE)}")
        fields.add(_MASK_ALIASES[path])
    return fields


@router.patch(routes.DEPLOYMENT)
def update_deployment(
    account: str,
    deployment_id: str,
    body: UpdateDeploymentRequest,
    caller: CallerDep,
    control: PlaneDep,
    updateMask: str = "",
) -> DeploymentResource:
    """Replica counts (scale to zero included), the linked trainer job, display fields."""
    fields = _mask(updateMask, body)
    with control.db.session() as session:
        row = find_deployment(session, caller, account, deployment_id)
        values = {field: getattr(body, field) for field in fields}
        low = values.get("min_replica_count", row.min_replica_count)
        high = values.get("max_replica_count", row.max_replica_count)
        if low is None or high is None or low > high:
            raise InvalidArgument(f"minReplicaCount ({low}) must not exceed maxReplicaCount ({high})")
        if high > 0:
            control.launcher.check(replica_placement(control, row.accelerator_type, row.accelerator_count))
        if values.get("hot_load_trainer_job"):
            job = hot_load_job(session, caller, values["hot_load_trainer_job"], row.base_model)
            linked = linked_deployment_shape(session, job)
            served = names.unversioned(row.deployment_shape_version or "")
            if linked and row.deployment_shape_version and names.unversioned(linked) != served:
                raise FailedPrecondition(
                    f"trainer job {job.name} links deployment shape {linked}; deployment {row.name} serves "
                    f"{row.deployment_shape_version}"
                )
            row.hot_load_trainer_job = job.name
        row.min_replica_count, row.max_replica_count = low, high
        if "display_name" in values and values["display_name"] is not None:
            row.display_name = values["display_name"]
        kept = {field: values[field] for field in ("description", "hot_load_transition_type") if field in values}
        row.request = row.creation_request().model_copy(update=kept).to_json_dict()
        row.update_time = utcnow()
        return deployment_resource(row)


@router.delete(routes.DEPLOYMENT)
def delete_deployment(
    account: str,
    deployment_id: str,
    caller: CallerDep,
    control: PlaneDep,
    hard: bool = False,
) -> DeploymentResource:
    """Stops the replicas. `hard=true` also removes the record, so the id can be used again."""
    with control.lifecycle, control.db.session() as session:
        row = find_deployment(session, caller, account, deployment_id)
        stop_replicas(control.launcher, row.name)
        set_deployment_state(row, DeploymentState.DELETED, "deleted by request")
        resource = deployment_resource(row)
        if hard:
            session.delete(row)
        return resource
