"""Inference and hot-load on the control plane: requests for a deployment reach its replicas.

    POST /inference/v1/completions, /v1/completions, /v1/chat/completions   `model` names the deployment
    POST /hot_load/v1/models/hot_load      load a snapshot of the deployment's trainer job on every replica
    GET  /hot_load/v1/models/hot_load      per-replica status (header `fireworks-deployment` names the deployment)

Completions go round-robin to the replicas that answer, streamed through as the replica sends them.

Full-parameter weight sync sends a `base` snapshot, then `delta`s, each naming the snapshot it was made against.
Trainers here write every snapshot in full, so a delta loads like a base; its chain is still checked, so that a client
that lost track of what the deployment serves fails here as it would on a deployment that applies real deltas.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpcore
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from shapeyard.control.deps import CallerDep, PlaneDep
from shapeyard.control.gateways.workers import call_worker, content_type, open_worker_stream, post_json
from shapeyard.control.lifecycle.deployments import desired_replicas, find_deployment, ready_replicas
from shapeyard.control.state import ControlPlane
from shapeyard.store.accounts import Caller
from shapeyard.store.layout import is_sampler_snapshot
from shapeyard.store.tables import Deployment
from shapeyard.wire import names, routes
from shapeyard.wire.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from shapeyard.wire.inference import HotLoadRequest, HotLoadStatus, LoadingState, ReplicaHotLoad, ReplicaHotLoadStatus

router = APIRouter(tags=["inference"])


def _deployment_id(caller: Caller, model: str, field: str) -> tuple[str, str]:
    """`accounts/<a>/deployments/<d>`, or a bare deployment id of the caller's account."""
    if not names.is_full(model):
        return caller.account, names.check_id(field, model)
    parsed = names.deployment(model, field=field)
    return parsed.account, parsed.id


def _serving_row(control: ControlPlane, caller: Caller, model: str, field: str) -> Deployment:
    account, deployment_id = _deployment_id(caller, model, field)
    with control.db.session() as session:
        row = find_deployment(session, caller, account, deployment_id)
        session.expunge(row)
        return row


async def _relay_completion(request: Request, caller: Caller, control: ControlPlane, path: str) -> Response:
    body = await request.body()
    try:
        model = json.loads(body).get("model")
    except (json.JSONDecodeError, AttributeError):
        raise InvalidArgument("the request body must be a JSON object") from None
    if not isinstance(model, str) or not model:
        raise InvalidArgument("model is required: the deployment, as accounts/<account>/deployments/<id>")
    row = await run_in_threadpool(_serving_row, control, caller, model, "model")
    replicas = ready_replicas(control, row)
    if not replicas:
        raise Unavailable(f"deployment {row.name} has no replica ready ({row.state}: {row.status_message})")
    index, listener = replicas[next(control.completion_turns) % len(replicas)]
    try:
        response = await open_worker_stream(control.worker_http, listener, path, body)
    except httpcore.ConnectError:  # it died since the supervisor last looked; it is being restarted
        raise Unavailable(f"replica {index} of {row.name} is restarting; retry shortly") from None

    async def stream() -> AsyncIterator[bytes]:
        try:
            async for chunk in response.stream:
                yield chunk
        finally:
            await response.aclose()

    return StreamingResponse(stream(), status_code=response.status, media_type=content_type(response))


def _completion_route(path: str, operation: str) -> None:
    async def relay(request: Request, caller: CallerDep, control: PlaneDep) -> Response:
        return await _relay_completion(request, caller, control, path)

    router.add_api_route(path, relay, methods=["POST"], operation_id=operation, response_class=StreamingResponse)


_completion_route(routes.COMPLETIONS, "inference_completions")
_completion_route(routes.OPENAI_COMPLETIONS, "openai_completions")
_completion_route(routes.CHAT_COMPLETIONS, "openai_chat_completions")


def _hot_load_target(request: Request, caller: Caller, control: ControlPlane) -> Deployment:
    header = request.headers.get(routes.DEPLOYMENT_HEADER, "")
    if not header:
        raise InvalidArgument(
            f"the {routes.DEPLOYMENT_HEADER} header must name the deployment (accounts/<a>/deployments/<d>)"
        )
    return _serving_row(control, caller, header, routes.DEPLOYMENT_HEADER)


def _snapshot_path(control: ControlPlane, row: Deployment, identity: str) -> Path:
    if not row.hot_load_trainer_job:
        raise FailedPrecondition(f"deployment {row.name} has no hotLoadTrainerJob to load snapshots from")
    job = names.trainer_job(row.hot_load_trainer_job)
    path = control.settings.files.job(job.account, job.id).resolve(identity, "sampler")
    if not is_sampler_snapshot(path):
        raise NotFound(
            f"snapshot {identity!r} not found: trainer job {row.hot_load_trainer_job} has written no sampler "
            f"snapshot of that name (save_weights_for_sampler writes them); {row.name} keeps serving "
            f"{row.snapshot_identity or 'the base model'}"
        )
    return path


def _check_delta_chain(row: Deployment, body: HotLoadRequest) -> None:
    delta = body.incremental_snapshot_metadata
    if delta is not None and delta.previous_snapshot_identity != row.snapshot_identity:
        raise FailedPrecondition(
            f"snapshot {body.identity!r} is a delta on {delta.previous_snapshot_identity!r}, but {row.name} serves "
            f"{row.snapshot_identity or 'the base model'}; hot-load a base snapshot (no incremental_snapshot_metadata) "
            "to start a new chain"
        )


@router.post(routes.HOT_LOAD)
async def hot_load(body: HotLoadRequest, request: Request, caller: CallerDep, control: PlaneDep) -> HotLoadStatus:
    row = await run_in_threadpool(_hot_load_target, request, caller, control)
    _check_delta_chain(row, body)
    path = _snapshot_path(control, row, body.identity)
    await run_in_threadpool(_remember, control, row.name, body.identity, path)
    payload = ReplicaHotLoad(identity=body.identity, path=str(path))
    for _, listener in ready_replicas(control, row):
        await post_json(control.worker_http, listener, routes.REPLICA_HOT_LOAD, payload)
    row.snapshot_identity = body.identity
    return await _status(control, row)


def _remember(control: ControlPlane, name: str, identity: str | None, path: Path | None) -> None:
    """The snapshot the deployment serves: replicas that start later (restarts, scale-up) load it first."""
    with control.db.session() as session:
        stored = session.get(Deployment, name)
        stored.snapshot_identity, stored.snapshot_path = identity, str(path) if path else None


async def _status(control: ControlPlane, row: Deployment) -> HotLoadStatus:
    """Every replica's status, the ones still behind first: the SDK reads only the first entry, so the deployment
    counts as loaded only once every replica is."""
    answered = {}
    for index, listener in ready_replicas(control, row):
        status, _, content = await call_worker(control.worker_http, listener, "GET", routes.REPLICA_HOT_LOAD)
        if status == 200:
            answered[index] = ReplicaHotLoadStatus.model_validate_json(content)
    replicas = [
        answered.get(index)
        or ReplicaHotLoadStatus(
            replica=index,
            readiness=False,
            loading_state=LoadingState(stage="loading", target_snapshot_identity=row.snapshot_identity),
        )
        for index in range(desired_replicas(row))
    ]
    failed = [
        replica
        for replica in answered.values()
        if replica.loading_state.stage == "error"
        and replica.loading_state.target_snapshot_identity == row.snapshot_identity
    ]
    if failed:  # what failed to load must not be what restarted replicas load: back to what is served
        served = failed[0].current_snapshot_identity
        path = _snapshot_path(control, row, served) if served else None
        await run_in_threadpool(_remember, control, row.name, served, path)

    def order(replica: ReplicaHotLoadStatus) -> int:
        if replica.loading_state.stage == "error":
            return 0
        caught_up = replica.readiness and replica.current_snapshot_identity == row.snapshot_identity
        return 2 if caught_up else 1

    return HotLoadStatus(replicas=sorted(replicas, key=order))


@router.get(routes.HOT_LOAD)
async def hot_load_status(request: Request, caller: CallerDep, control: PlaneDep) -> HotLoadStatus:
    row = await run_in_threadpool(_hot_load_target, request, caller, control)
    return await _status(control, row)
