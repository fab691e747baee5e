"""Serverless entry for the `tinker` client: the trainer protocol at the server's root URL.

`tinker.ServiceClient(base_url=<server>)` needs no job: `create_model` for a base model starts (or, for LoRA,
reuses) a trainer job of the caller's account on that model's smallest validated shape of the right mode, waits
for it, and creates the model there. Model and request ids carry the job (`<job>.<id>`), so every later call is
routed to that job's worker; `tinker://<job>/...` checkpoint paths name the job too.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import select

from shapeyard.control.deps import CallerDep, PlaneDep
from shapeyard.control.gateway import call_worker, relay
from shapeyard.control.jobs import launch_job
from shapeyard.control.shapes import visible_versions
from shapeyard.errors import FailedPrecondition, InvalidArgument, NotFound, ShapeyardError
from shapeyard.shapes.resolve import model_visible
from shapeyard.store import catalog as store
from shapeyard.store.accounts import Caller
from shapeyard.store.tables import TrainerJob
from shapeyard.trainer.checkpoints import CheckpointStore
from shapeyard.wire import names
from shapeyard.wire.control import CreateTrainerJobRequest, JobState, TrainingConfig
from shapeyard.wire.trainer import (
    CreateModelRequest,
    CreateSamplingSessionRequest,
    CreateSessionResponse,
    ErrorCategory,
    RequestFailed,
    SupportedModel,
    TryAgain,
    UntypedFuture,
)

router = APIRouter(prefix="/api/v1", tags=["serverless trainer protocol"])
SERVERLESS = "serverless"
LONG_POLL_SECONDS = 25.0
STARTUP_TIMEOUT_SECONDS = 600.0
SEPARATOR = "."  # job ids and worker ids never contain one


@dataclass
class _Serverless:
    """Control-plane side state: client sessions, their worker sessions, and create_model futures."""

    sessions: dict[str, str] = field(default_factory=dict)  # session id -> account
    worker_sessions: dict[tuple[str, str], str] = field(default_factory=dict)  # (session, job) -> worker session
    model_seq: dict[str, int] = field(default_factory=dict)  # worker session -> models created on it
    futures: dict[str, asyncio.Future] = field(default_factory=dict)


def _state(request: Request) -> _Serverless:
    if not hasattr(request.app.state, "serverless"):
        request.app.state.serverless = _Serverless()
    return request.app.state.serverless


def split(composite: str, what: str) -> tuple[str, str]:
    job_id, dot, inner = composite.partition(SEPARATOR)
    if not dot or not job_id or not inner:
        raise NotFound(f"{what} {composite!r} is not one this server issued")
    return job_id, inner


def resolve_base_model(session: Any, caller: Caller, name: str) -> str:
    """A full model name, a catalog id (`tiny-qwen3`), or the HF repo id of a catalog model (`Qwen/Qwen3-0.6B`)."""
    candidates = [name, f"accounts/fireworks/models/{name}"]
    for candidate in candidates:
        if store.get_model(session, candidate) is not None and model_visible(caller, candidate):
            return candidate
    for spec in store.list_models(session):
        if spec.weights.hf_repo == name and model_visible(caller, spec.name):
            return spec.name
    raise NotFound(f"base_model {name!r} is not in the catalog; see GET /api/v1/get_server_capabilities")


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.post("/client/config")
def client_config(caller: CallerDep) -> dict[str, Any]:
    return {"pjwt_auth_enabled": False, "proto_write_fwdbwd": False, "proto_compress_fwdbwd": False}


@router.post("/create_session")
def create_session(request: Request, caller: CallerDep) -> dict[str, Any]:
    session_id = f"sess-{secrets.token_hex(8)}"
    _state(request).sessions[session_id] = caller.account
    return CreateSessionResponse(session_id=session_id).to_json_dict()


@router.post("/session_heartbeat")
def session_heartbeat(caller: CallerDep) -> dict[str, str]:
    return {"type": "session_heartbeat"}


@router.post("/telemetry")
def telemetry(caller: CallerDep) -> dict[str, str]:
    return {"status": "accepted"}


@router.get("/get_server_capabilities")
def capabilities(caller: CallerDep, control: PlaneDep) -> dict[str, Any]:
    """Every model with a validated shape this key can use, with the longest validated context."""
    with control.db.session() as session:
        rows, latest = visible_versions(store.training_versions(session), caller, None)
    longest: dict[str, int] = {}
    for row in rows:
        if latest.get(row.shape) == row.ordinal:
            longest[row.base_model] = max(longest.get(row.base_model, 0), row.max_context_length)
    models = [SupportedModel(model_name=m, max_context_length=n) for m, n in sorted(longest.items())]
    return {"supported_models": [m.to_json_dict() for m in models]}


def _find_or_launch(control: Any, caller: Caller, body: CreateModelRequest) -> tuple[str, str]:
    """The job a serverless create_model runs on: a live serverless LoRA job of the same model and rank, or a new
    job on the smallest validated shape for the model and mode."""
    rank = body.lora_config.rank if body.lora_config else 0
    with control.db.session() as session:
        base_model = resolve_base_model(session, caller, body.base_model)
        if rank > 0:
            live = session.scalars(
                select(TrainerJob).where(
                    TrainerJob.account == caller.account,
                    TrainerJob.base_model == base_model,
                    TrainerJob.lora_rank == rank,
                    TrainerJob.state.in_([s.value for s in (JobState.CREATING, JobState.PENDING, JobState.RUNNING)]),
                )
            )
            for job in live:
                if job.request.get("managedBy") == SERVERLESS:
                    return job.job_id, base_model
        request = CreateTrainerJobRequest(
            training_config=TrainingConfig(base_model=base_model, lora_rank=rank),
            forward_only=body.base_only,
            managed_by=SERVERLESS,
            display_name=f"serverless {base_model.rsplit('/', 1)[1]}",
        )
        job = launch_job(
            session, control, caller, caller.account, f"sl-{secrets.token_hex(5)}", request, training_shape=None
        )
        return job.job_id, base_model


def _sampling_job(control: Any, caller: Caller, body: CreateSamplingSessionRequest) -> tuple[str, str | None]:
    """Sampler weights live with the job that wrote them; the base model samples on any live serverless job of
    that model, or on a new forward-only one."""
    if body.model_path is not None:
        parts = body.model_path.removeprefix("tinker://").split("/")
        if not body.model_path.startswith("tinker://") or len(parts) != 3:
            raise InvalidArgument(
                f"model_path {body.model_path!r} is malformed; expected tinker://<job>/sampler_weights/<name>"
            )
        return parts[0], None
    if body.base_model is None:
        raise InvalidArgument("create_sampling_session needs a model_path or a base_model")
    with control.db.session() as session:
        base_model = resolve_base_model(session, caller, body.base_model)
        live = session.scalars(
            select(TrainerJob).where(
                TrainerJob.account == caller.account,
                TrainerJob.base_model == base_model,
                TrainerJob.state.in_([s.value for s in (JobState.CREATING, JobState.PENDING, JobState.RUNNING)]),
            )
        )
        for job in live:
            if job.request.get("managedBy") == SERVERLESS:
                return job.job_id, base_model
    reference = CreateModelRequest(session_id=body.session_id, base_model=base_model, base_only=True)
    return _find_or_launch(control, caller, reference)[0], base_model


async def _worker_session(state: _Serverless, control: Any, caller: Caller, session_id: str, job_id: str) -> str:
    key = (session_id, job_id)
    if key not in state.worker_sessions:
        answer = await relay(control, caller, job_id, "create_session", {"tags": [], "user_metadata": {}})
        state.worker_sessions[key] = answer["session_id"]
    return state.worker_sessions[key]


async def _wait_running(control: Any, job_name: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS

    def state() -> tuple[str, str]:
        with control.db.session() as session:
            job = session.get(TrainerJob, job_name)
            return job.state, job.status_message

    while time.monotonic() < deadline:
        current, message = await run_in_threadpool(state)
        if current == JobState.RUNNING and control.launcher.endpoint(job_name) is not None:
            return
        if current not in (JobState.CREATING, JobState.PENDING, JobState.RUNNING):
            raise FailedPrecondition(f"trainer job {job_name} is {current}: {message}")
        await asyncio.sleep(0.2)
    raise FailedPrecondition(f"trainer job {job_name} did not start within {STARTUP_TIMEOUT_SECONDS:.0f} s")


async def _create_model(state: _Serverless, control: Any, caller: Caller, body: CreateModelRequest) -> dict:
    try:
        job_id, base_model = await run_in_threadpool(_find_or_launch, control, caller, body)
        await _wait_running(control, f"accounts/{caller.account}/rlorTrainerJobs/{job_id}")
        worker_session = await _worker_session(state, control, caller, body.session_id, job_id)
        payload = {
            **body.model_dump(mode="json", exclude_none=True),
            "base_model": base_model,
            "session_id": worker_session,
            "model_seq_id": state.model_seq.get(worker_session, 0),
        }
        state.model_seq[worker_session] = payload["model_seq_id"] + 1
        future = await relay(control, caller, job_id, "create_model", payload)
        while True:
            result = await relay(control, caller, job_id, "retrieve_future", {"request_id": future["request_id"]})
            if result.get("type") != "try_again":
                break
        if "model_id" in result and "error" not in result:
            result["model_id"] = f"{job_id}{SEPARATOR}{result['model_id']}"
        return result
    except ShapeyardError as exc:
        return RequestFailed(error=exc.message, category=ErrorCategory.USER).to_json_dict()
    except Exception as exc:
        return RequestFailed(error=f"{type(exc).__name__}: {exc}", category=ErrorCategory.SERVER).to_json_dict()


def _check_session(state: _Serverless, caller: Caller, session_id: str) -> None:
    if state.sessions.get(session_id) != caller.account:
        raise NotFound(f"session {session_id!r} not found; call create_session first")


@router.post("/create_model")
async def create_model(request: Request, caller: CallerDep, control: PlaneDep) -> JSONResponse:
    state = _state(request)
    body = CreateModelRequest.model_validate(await request.json())
    _check_session(state, caller, body.session_id)
    request_id = f"sl-{secrets.token_hex(8)}"
    state.futures[request_id] = asyncio.ensure_future(_create_model(state, control, caller, body))
    return JSONResponse(UntypedFuture(request_id=request_id).to_json_dict())


@router.post("/retrieve_future")
async def retrieve_future(request: Request, caller: CallerDep, control: PlaneDep) -> JSONResponse:
    body = await request.json()
    request_id = str(body.get("request_id", ""))
    state = _state(request)
    if request_id in state.futures:
        future = state.futures[request_id]
        try:
            result = await asyncio.wait_for(asyncio.shield(future), LONG_POLL_SECONDS)
        except TimeoutError:
            return JSONResponse(TryAgain(request_id=request_id).to_json_dict())
        return JSONResponse(result)
    job_id, inner = split(request_id, "request_id")
    result = await relay(control, caller, job_id, "retrieve_future", {**body, "request_id": inner})
    return JSONResponse(_outward(job_id, result))


def _outward(job_id: str, answer: dict) -> dict:
    """Worker ids, as the client must send them back to this root URL."""
    for key in ("model_id", "request_id", "sampling_session_id"):
        if isinstance(answer.get(key), str) and answer.get("type") != "try_again":
            answer[key] = f"{job_id}{SEPARATOR}{answer[key]}"
    if answer.get("type") == "try_again":
        answer["request_id"] = f"{job_id}{SEPARATOR}{answer['request_id']}"
    return answer


@router.post("/create_sampling_session")
async def create_sampling_session(request: Request, caller: CallerDep, control: PlaneDep) -> JSONResponse:
    state = _state(request)
    body = CreateSamplingSessionRequest.model_validate(await request.json())
    _check_session(state, caller, body.session_id)
    job_id, base_model = await run_in_threadpool(_sampling_job, control, caller, body)
    await _wait_running(control, f"accounts/{caller.account}/rlorTrainerJobs/{job_id}")
    worker_session = await _worker_session(state, control, caller, body.session_id, job_id)
    payload = {**body.model_dump(exclude_none=True), "session_id": worker_session, "base_model": base_model}
    answer = await relay(control, caller, job_id, "create_sampling_session", payload)
    return JSONResponse(_outward(job_id, answer))


@router.post("/asample")
async def asample(request: Request, caller: CallerDep, control: PlaneDep) -> JSONResponse:
    body = await request.json()
    if not isinstance(body, dict) or not isinstance(body.get("sampling_session_id"), str):
        raise InvalidArgument("asample needs a sampling_session_id")
    job_id, inner = split(body["sampling_session_id"], "sampling_session_id")
    answer = await relay(control, caller, job_id, "asample", {**body, "sampling_session_id": inner})
    return JSONResponse(_outward(job_id, answer))


@router.get("/samplers/{sampler_id}")
async def get_sampler(sampler_id: str, caller: CallerDep, control: PlaneDep) -> JSONResponse:
    job_id, inner = split(sampler_id, "sampler id")
    name = names.job_name(caller.account, names.check_id("job id", job_id))
    endpoint = control.launcher.endpoint(name)
    if endpoint is None:
        raise NotFound(f"sampler {sampler_id} not found: trainer job {name} has no running worker")
    status, _, content = await call_worker(control.worker_http, endpoint, "GET", f"/api/v1/samplers/{inner}", b"", {})
    answer = json.loads(content)
    if status == 200:
        answer["sampler_id"] = sampler_id
    return JSONResponse(answer, status_code=status)


@router.post("/weights_info")
def weights_info(request_body: dict[str, Any], caller: CallerDep, control: PlaneDep) -> dict[str, Any]:
    """What a `tinker://<job>/weights/<name>` checkpoint holds, for create_training_client_from_state."""
    path = str(request_body.get("tinker_path", ""))
    parts = path.removeprefix("tinker://").split("/")
    if not path.startswith("tinker://") or len(parts) != 3:
        raise InvalidArgument(f"tinker_path {path!r} is malformed; expected tinker://<job>/weights/<name>")
    with control.db.session() as session:
        job = session.get(TrainerJob, f"accounts/{caller.account}/rlorTrainerJobs/{parts[0]}")
        if job is None:
            raise NotFound(f"checkpoint {path} not found")
        base_model = job.base_model
    directory = CheckpointStore(control.settings.job_dir(caller.account, parts[0])).resolve(parts[2])
    if not (directory / "meta.json").exists():
        raise NotFound(f"checkpoint {path} not found")
    meta = json.loads((directory / "meta.json").read_text())
    return {"base_model": base_model, "is_lora": meta["kind"] == "lora", "lora_rank": meta["rank"]}


async def _forward_model_call(request: Request, caller: Caller, control: Any, op: str) -> JSONResponse:
    body = await request.json()
    if not isinstance(body, dict) or not isinstance(body.get("model_id"), str):
        raise InvalidArgument("the request needs a model_id")
    job_id, inner = split(body["model_id"], "model_id")
    answer = await relay(
        control,
        caller,
        job_id,
        op,
        {**body, "model_id": inner},
        headers={"x-stainless-package-version": request.headers.get("x-stainless-package-version", "")},
    )
    return JSONResponse(_outward(job_id, answer))


def _register(op: str) -> None:
    async def route(request: Request, caller: CallerDep, control: PlaneDep) -> JSONResponse:
        return await _forward_model_call(request, caller, control, op)

    router.add_api_route(f"/{op}", route, methods=["POST"], name=f"serverless_{op}")


for _op in (
    "forward",
    "forward_backward",
    "optim_step",
    "save_weights",
    "load_weights",
    "save_weights_for_sampler",
    "get_info",
    "unload_model",
):
    _register(_op)
