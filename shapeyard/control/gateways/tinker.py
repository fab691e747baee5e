"""The tinker entry: the trainer protocol at the server's root URL, for `tinker.ServiceClient(base_url=<server>)`.

It needs no job: `create_model` for a base model starts (or, for LoRA, reuses) a trainer job of the caller's
account on that model's smallest validated shape of the right mode, waits for it, and creates the model there.
Model, request and sampling-session ids carry the job (`<job>.<id>`), so every later call is routed to that job's
worker; `tinker://<job>/...` checkpoint paths name the job too. Sessions live on the control plane
(`control.sessions`) and are pruned as they go idle.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session

from shapeyard.control.deps import CallerDep, PlaneDep
from shapeyard.control.gateways.workers import call_worker, post_json
from shapeyard.control.lifecycle.jobs import active_jobs, launch_job
from shapeyard.control.sessions import WorkerLink
from shapeyard.control.state import ControlPlane
from shapeyard.runtime.http import json_response
from shapeyard.shapes.resolve import model_visible, visible_versions
from shapeyard.store import catalog as store
from shapeyard.store.accounts import Caller
from shapeyard.store.layout import read_meta
from shapeyard.store.tables import TrainerJob
from shapeyard.wire import names, routes
from shapeyard.wire.base import WireModel
from shapeyard.wire.control import ACTIVE_JOB_STATES, CreateTrainerJobRequest, JobState, TrainingConfig
from shapeyard.wire.errors import FailedPrecondition, InvalidArgument, NotFound, ShapeyardError
from shapeyard.wire.trainer import (
    LONG_POLL_SECONDS,
    MODEL_OPS,
    Accepted,
    ClientConfig,
    CreateModelRequest,
    CreateSamplingSessionRequest,
    CreateSessionRequest,
    CreateSessionResponse,
    ErrorCategory,
    Op,
    RequestFailed,
    RetrieveFutureRequest,
    ServerCapabilities,
    SessionHeartbeatRequest,
    SessionHeartbeatResponse,
    SupportedModel,
    TryAgain,
    UntypedFuture,
    WeightsInfoRequest,
    WeightsInfoResponse,
)
from shapeyard.wire.worker import Listener

router = APIRouter(prefix=routes.TRAINER_API, tags=["tinker entry"])
MANAGED_BY = "serverless"  # the managedBy of the jobs this entry starts
STARTUP_TIMEOUT_SECONDS = 600.0
SEPARATOR = "."  # job ids and worker ids never contain one


def split(composite: str, what: str) -> tuple[str, str]:
    job_id, dot, inner = composite.partition(SEPARATOR)
    if not dot or not job_id or not inner:
        raise NotFound(f"{what} {composite!r} is not one this server issued")
    return job_id, inner


def _outward(job_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    """Worker ids, as the client must send them back to this root URL."""
    keys = ("request_id",) if answer.get("type") == "try_again" else ("model_id", "request_id", "sampling_session_id")
    for key in keys:
        if isinstance(answer.get(key), str):
            answer[key] = f"{job_id}{SEPARATOR}{answer[key]}"
    return answer


def _job_name(caller: Caller, job_id: str) -> str:
    return names.job_name(caller.account, names.check_id("job id", job_id))


async def _relay(
    control: ControlPlane,
    caller: Caller,
    job_id: str,
    op: str,
    payload: WireModel | dict[str, Any],
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A trainer-protocol call on one of the caller's jobs; an error answer is raised with the worker's status. A
    dict is the client's own body, passed on for the worker to validate in order."""
    listener = _listener(control, caller, job_id)
    return await post_json(control.worker_http, listener, routes.trainer_op(op), payload, headers)


def _listener(control: ControlPlane, caller: Caller, job_id: str, missing: str = "") -> Listener:
    """Where the caller's job's worker listens; `missing` prefixes the error when it has none."""
    name = _job_name(caller, job_id)
    listener = control.launcher.listener(name)
    if listener is None:
        raise NotFound(f"{missing}trainer job {name} has no running worker")
    return listener


def resolve_base_model(session: Session, caller: Caller, name: str) -> str:
    """A full model name, a catalog id (`tiny-qwen3`), or the HF repo id of a catalog model (`Qwen/Qwen3-0.6B`)."""
    for candidate in (name, names.public(names.MODELS, name)):
        if store.get_model(session, candidate) is not None and model_visible(caller, candidate):
            return candidate
    for spec in store.list_models(session):
        if spec.weights.hf_repo == name and model_visible(caller, spec.name):
            return spec.name
    raise NotFound(f"base_model {name!r} is not in the catalog; see GET /api/v1/get_server_capabilities")


def _serverless_job(session: Session, caller: Caller, base_model: str, lora_rank: int | None) -> str | None:
    """A live job this entry started for the model (of that LoRA rank, unless None)."""
    for job in active_jobs(session, caller.account, base_model):
        if (lora_rank is None or job.lora_rank == lora_rank) and job.creation_request().managed_by == MANAGED_BY:
            return job.job_id
    return None


# --- sessions ----------------------------------------------------------------------------------------------


@router.get(routes.HEALTH)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.post("/client/config")
def client_config(caller: CallerDep) -> Response:
    return json_response(ClientConfig())


@router.post("/create_session")
def create_session(body: CreateSessionRequest, caller: CallerDep, control: PlaneDep) -> Response:
    return json_response(CreateSessionResponse(session_id=control.tinker.open(caller.account)))


@router.post("/session_heartbeat")
def session_heartbeat(body: SessionHeartbeatRequest, caller: CallerDep, control: PlaneDep) -> Response:
    control.tinker.get(body.session_id, caller.account)
    return json_response(SessionHeartbeatResponse())


@router.post("/telemetry")
def telemetry(caller: CallerDep) -> Response:
    return json_response(Accepted())


@router.get("/get_server_capabilities")
def capabilities(caller: CallerDep, control: PlaneDep) -> Response:
    """Every model with a validated shape this key can use, with the longest validated context."""
    with control.db.session() as session:
        rows, latest = visible_versions(store.training_versions(session), caller, None)
    longest: dict[str, int] = {}
    for row in rows:
        if latest.get(row.shape) == row.ordinal:
            longest[row.base_model] = max(longest.get(row.base_model, 0), row.max_context_length)
    models = [SupportedModel(model_name=m, max_context_length=n) for m, n in sorted(longest.items())]
    return json_response(ServerCapabilities(supported_models=models))


# --- models ------------------------------------------------------------------------------------------------


def _find_or_launch(control: ControlPlane, caller: Caller, body: CreateModelRequest) -> tuple[str, str]:
    """The job a create_model runs on: a live job of this entry for the same model and rank, or a new job on the
    smallest validated shape for the model and mode. Returns (job id, full base model name)."""
    rank = body.lora_config.rank if body.lora_config else 0
    with control.db.session() as session:
        base_model = resolve_base_model(session, caller, body.base_model)
        live = _serverless_job(session, caller, base_model, rank) if rank > 0 else None
        if live is not None:
            return live, base_model
        request = CreateTrainerJobRequest(
            training_config=TrainingConfig(base_model=base_model, lora_rank=rank),
            forward_only=body.base_only,
            managed_by=MANAGED_BY,
            display_name=f"serverless {names.short(base_model)}",
        )
        job = launch_job(
            session, control, caller, caller.account, f"sl-{secrets.token_hex(5)}", request, training_shape=None
        )
        return job.job_id, base_model


async def _wait_running(control: ControlPlane, caller: Caller, job_id: str) -> None:
    name = _job_name(caller, job_id)
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS

    def state() -> tuple[str, str]:
        with control.db.session() as session:
            job = session.get(TrainerJob, name)
            return job.state, job.status_message

    while time.monotonic() < deadline:
        current, message = await run_in_threadpool(state)
        if current == JobState.RUNNING and control.launcher.listener(name) is not None:
            return
        if current not in ACTIVE_JOB_STATES:
            raise FailedPrecondition(f"trainer job {name} is {current}: {message}")
        await asyncio.sleep(0.2)
    raise FailedPrecondition(f"trainer job {name} did not start within {STARTUP_TIMEOUT_SECONDS:.0f} s")


async def _worker_link(control: ControlPlane, caller: Caller, session_id: str, job_id: str) -> WorkerLink:
    """This client session's session on the job's worker, opened on first use."""
    session = control.tinker.get(session_id, caller.account)
    if job_id not in session.workers:
        answer = await _relay(control, caller, job_id, "create_session", CreateSessionRequest())
        session.workers.setdefault(job_id, WorkerLink(answer["session_id"]))
    return session.workers[job_id]


async def _create_model(control: ControlPlane, caller: Caller, body: CreateModelRequest) -> dict[str, Any]:
    try:
        job_id, base_model = await run_in_threadpool(_find_or_launch, control, caller, body)
        await _wait_running(control, caller, job_id)
        link = await _worker_link(control, caller, body.session_id, job_id)
        # the worker creates a session's models in model_seq_id order
        update = {"base_model": base_model, "session_id": link.session_id, "model_seq_id": link.models}
        link.models += 1
        future = await _relay(control, caller, job_id, Op.CREATE_MODEL, body.model_copy(update=update))
        while True:
            request = RetrieveFutureRequest(request_id=future["request_id"])
            result = await _relay(control, caller, job_id, "retrieve_future", request)
            if result.get("type") != "try_again":
                break
        return _outward(job_id, result)
    except ShapeyardError as exc:
        return RequestFailed(error=exc.message, category=ErrorCategory.USER).to_json_dict()
    except Exception as exc:
        return RequestFailed(error=f"{type(exc).__name__}: {exc}", category=ErrorCategory.SERVER).to_json_dict()


@router.post(f"/{Op.CREATE_MODEL}")
async def create_model(body: CreateModelRequest, caller: CallerDep, control: PlaneDep) -> Response:
    control.tinker.get(body.session_id, caller.account)
    request_id = control.tinker.add_future(asyncio.ensure_future(_create_model(control, caller, body)))
    return json_response(UntypedFuture(request_id=request_id))


@router.post("/retrieve_future")
async def retrieve_future(request: Request, caller: CallerDep, control: PlaneDep) -> JSONResponse:
    body = await request.json()
    request_id = str(body.get("request_id", ""))
    future = control.tinker.futures.get(request_id)
    if future is not None:
        try:
            return JSONResponse(await asyncio.wait_for(asyncio.shield(future), LONG_POLL_SECONDS))
        except TimeoutError:
            return JSONResponse(TryAgain(request_id=request_id).to_json_dict())
    job_id, inner = split(request_id, "request_id")
    result = await _relay(control, caller, job_id, "retrieve_future", {**body, "request_id": inner})
    return JSONResponse(_outward(job_id, result))


# --- sampling ----------------------------------------------------------------------------------------------


def _sampling_job(control: ControlPlane, caller: Caller, body: CreateSamplingSessionRequest) -> tuple[str, str | None]:
    """Sampler weights live with the job that wrote them; the base model samples on any live job of this entry for
    that model, or on a new forward-only one. Returns (job id, full base model name or None)."""
    if body.model_path is not None:
        return names.tinker_ref(body.model_path, names.SAMPLER_WEIGHTS, "model_path").job, None
    if body.base_model is None:
        raise InvalidArgument("create_sampling_session needs a model_path or a base_model")
    with control.db.session() as session:
        base_model = resolve_base_model(session, caller, body.base_model)
        live = _serverless_job(session, caller, base_model, None)
    if live is not None:
        return live, base_model
    reference = CreateModelRequest(session_id=body.session_id, base_model=base_model, base_only=True)
    return _find_or_launch(control, caller, reference)[0], base_model


@router.post(f"/{Op.CREATE_SAMPLING_SESSION}")
async def create_sampling_session(body: CreateSamplingSessionRequest, caller: CallerDep, control: PlaneDep) -> Response:
    control.tinker.get(body.session_id, caller.account)
    job_id, base_model = await run_in_threadpool(_sampling_job, control, caller, body)
    await _wait_running(control, caller, job_id)
    link = await _worker_link(control, caller, body.session_id, job_id)
    payload = body.model_copy(update={"session_id": link.session_id, "base_model": base_model})
    answer = await _relay(control, caller, job_id, Op.CREATE_SAMPLING_SESSION, payload)
    return JSONResponse(_outward(job_id, answer))


@router.post(f"/{Op.ASAMPLE}")
async def asample(request: Request, caller: CallerDep, control: PlaneDep) -> JSONResponse:
    body = await request.json()
    if not isinstance(body, dict) or not isinstance(body.get("sampling_session_id"), str):
        raise InvalidArgument("asample needs a sampling_session_id")
    job_id, inner = split(body["sampling_session_id"], "sampling_session_id")
    answer = await _relay(control, caller, job_id, Op.ASAMPLE, {**body, "sampling_session_id": inner})
    return JSONResponse(_outward(job_id, answer))


@router.get("/samplers/{sampler_id}")
async def get_sampler(sampler_id: str, caller: CallerDep, control: PlaneDep) -> Response:
    job_id, inner = split(sampler_id, "sampler id")
    listener = _listener(control, caller, job_id, missing=f"sampler {sampler_id} not found: ")
    target = f"{routes.TRAINER_API}/samplers/{inner}"
    status, _, content = await call_worker(control.worker_http, listener, "GET", target)
    answer = json.loads(content)
    if status == 200:
        answer["sampler_id"] = sampler_id
    return JSONResponse(answer, status_code=status)


@router.post("/weights_info")
def weights_info(body: WeightsInfoRequest, caller: CallerDep, control: PlaneDep) -> Response:
    """What a `tinker://<job>/weights/<name>` checkpoint holds, for create_training_client_from_state."""
    ref = names.tinker_ref(body.tinker_path, names.WEIGHTS, "tinker_path")
    with control.db.session() as session:
        job = session.get(TrainerJob, names.job_name(caller.account, ref.job))
        if job is None:
            raise NotFound(f"checkpoint {body.tinker_path} not found")
        base_model = job.base_model
    try:
        meta = read_meta(control.settings.files.job(caller.account, ref.job).training_dir(ref.name))
    except NotFound:
        raise NotFound(f"checkpoint {body.tinker_path} not found") from None
    return json_response(WeightsInfoResponse(base_model=base_model, is_lora=meta.kind == "lora", lora_rank=meta.rank))


# --- calls on a model: routed by the job its model id names -------------------------------------------------


def _model_call(op: Op) -> Callable[[Request, Caller, ControlPlane], Awaitable[JSONResponse]]:
    async def route(request: Request, caller: CallerDep, control: PlaneDep) -> JSONResponse:
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("model_id"), str):
            raise InvalidArgument("the request needs a model_id")
        job_id, inner = split(body["model_id"], "model_id")
        version = {"x-stainless-package-version": request.headers.get("x-stainless-package-version", "")}
        answer = await _relay(control, caller, job_id, op, {**body, "model_id": inner}, version)
        return JSONResponse(_outward(job_id, answer))

    return route


for _op in sorted(MODEL_OPS):
    router.add_api_route(f"/{_op}", _model_call(_op), methods=["POST"], name=f"tinker_{_op}")
