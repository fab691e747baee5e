"""The trainer worker's HTTP process: the trainer protocol over HTTP for one job.

    python -m shapeyard.trainer.worker --spec <file>

The control plane launches it (see `shapeyard.launch`) and reaches it through its gateway. It checks the gateway's
token, orders requests and keeps their futures (`shapeyard.trainer.engine`), and hands the operations to its
compute process (`shapeyard.trainer.compute`), which owns the model. It starts listening once the model is loaded
and exits when its parent (the server) goes away.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from shapeyard.control.app import install_error_handlers
from shapeyard.errors import InvalidArgument, NotFound
from shapeyard.launch.child import start_worker
from shapeyard.launch.gateway_token import gateway_only
from shapeyard.trainer.engine import Engine
from shapeyard.trainer.ipc import Call, ComputeProcess
from shapeyard.wire.trainer import (
    CreateSessionRequest,
    CreateSessionResponse,
    RetrieveFutureRequest,
    ServerCapabilities,
    SessionHeartbeatRequest,
    SupportedModel,
    TryAgain,
    UntypedFuture,
)
from shapeyard.wire.worker import TrainerWorkerSpec

log = logging.getLogger("shapeyard.trainer")
LONG_POLL_SECONDS = 25.0
TINKER_SDK_VERSION = "0.23.0"


def speaks_tinker(request: Request) -> bool:
    """The plain tinker client; the fireworks client sends its own package version in the same header."""
    return request.headers.get("x-stainless-package-version") == TINKER_SDK_VERSION


def create_worker_app(spec: TrainerWorkerSpec, engine: Engine) -> FastAPI:
    sessions: dict[str, float] = {}

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(gateway_only(spec.token))])

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.post("/client/config")
    async def client_config() -> dict[str, Any]:
        # JSON everywhere: the official clients then never switch to protobuf, JWT or RDMA paths.
        return {
            "pjwt_auth_enabled": False,
            "proto_write_fwdbwd": False,
            "proto_compress_fwdbwd": False,
            "parallel_fwdbwd_chunks": True,
            "credential_default_source": "api_key",
        }

    @api.post("/create_session")
    async def create_session(body: CreateSessionRequest) -> dict[str, Any]:
        session_id = f"sess-{secrets.token_hex(6)}"
        sessions[session_id] = time.time()
        return CreateSessionResponse(session_id=session_id).to_json_dict()

    @api.post("/session_heartbeat")
    async def session_heartbeat(body: SessionHeartbeatRequest) -> dict[str, str]:
        sessions[body.session_id] = time.time()
        return {"type": "session_heartbeat"}

    @api.post("/telemetry")
    async def telemetry() -> dict[str, str]:
        return {"status": "accepted"}

    @api.get("/get_server_capabilities")
    async def capabilities() -> dict[str, Any]:
        model = SupportedModel(model_name=spec.base_model, max_context_length=spec.max_context_length)
        return ServerCapabilities(supported_models=[model]).to_json_dict()

    async def json_body(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise InvalidArgument("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise InvalidArgument("the request body must be a JSON object")
        return body

    def enqueue(call: Call, lane: tuple[str, int] | None = None) -> JSONResponse:
        """Acknowledge at once with a future; the compute process validates and runs the call in order. Bad input
        fails the future (so the seq_id is still consumed and later requests do not wait for it)."""
        model_id, seq_id = call.body.get("model_id"), call.body.get("seq_id")
        if lane is None and isinstance(model_id, str) and isinstance(seq_id, int):
            lane = (model_id, seq_id)
        request_id = engine.submit(call, model_id=lane and lane[0], seq_id=lane and lane[1])
        future = UntypedFuture(request_id=request_id, model_id=model_id if isinstance(model_id, str) else None)
        return JSONResponse(future.to_json_dict())

    async def answer(call: Call) -> dict[str, Any]:
        """A call answered within its HTTP request (after the calls queued before it); its errors are HTTP errors."""
        reply = await engine.wait(engine.submit(call), None)
        assert reply is not None
        return reply.unwrap().to_json_dict()

    def queued(op: str) -> Callable[[Request], Awaitable[JSONResponse]]:
        async def route(request: Request) -> JSONResponse:
            return enqueue(Call(op, await json_body(request), tinker=speaks_tinker(request)))

        return route

    for op in (
        "unload_model",
        "forward",
        "forward_backward",
        "optim_step",
        "save_weights",
        "load_weights",
        "save_weights_for_sampler",
        "asample",
    ):
        api.add_api_route(f"/{op}", queued(op), methods=["POST"], name=op)

    @api.post("/create_model")
    async def create_model(request: Request) -> JSONResponse:
        body = await json_body(request)
        # a session's models are created in model_seq_id order, like a model's requests in seq_id order
        return enqueue(
            Call("create_model", body), (f"session/{body.get('session_id')}", int(body.get("model_seq_id") or 0) + 1)
        )

    @api.post("/get_info")
    async def get_info(request: Request) -> dict[str, Any]:
        return await answer(Call("get_info", await json_body(request)))

    @api.post("/create_sampling_session")
    async def create_sampling_session(request: Request) -> dict[str, Any]:
        return await answer(Call("create_sampling_session", await json_body(request)))

    @api.get("/samplers/{sampler_id}")
    async def get_sampler(sampler_id: str) -> dict[str, Any]:
        return await answer(Call("get_sampler", {"sampler_id": sampler_id}))

    @api.get("/list_checkpoints")
    async def list_checkpoints() -> dict[str, Any]:
        return await answer(Call("list_checkpoints", {}))

    @api.post("/retrieve_future")
    async def retrieve_future(body: RetrieveFutureRequest) -> Response:
        if not engine.known(body.request_id):
            raise NotFound(f"request_id {body.request_id!r} is unknown or its result expired")
        reply = await engine.wait(body.request_id, LONG_POLL_SECONDS)
        if reply is None:
            return JSONResponse(TryAgain(request_id=body.request_id).to_json_dict())
        return Response(reply.encode(), media_type="application/json")

    app = FastAPI(title="shapeyard trainer worker", version="0.1.0")
    install_error_handlers(app)
    app.include_router(api)
    return app


def main() -> None:
    spec = start_worker(TrainerWorkerSpec, __doc__)
    compute = ComputeProcess(spec)
    compute.wait_ready()
    engine = Engine(compute.send)
    compute.deliver_replies(engine.resolve)
    log.info("serving %s on %s:%d", spec.job_name, spec.host, spec.port)
    try:
        uvicorn.run(create_worker_app(spec, engine), host=spec.host, port=spec.port, log_level="warning")
    finally:
        compute.stop()


if __name__ == "__main__":
    main()
