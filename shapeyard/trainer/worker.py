"""The trainer worker's HTTP process: the trainer protocol over HTTP for one job.

    python -m shapeyard.trainer.worker --launch <file>
    python -m shapeyard.trainer.worker --warm           started ahead of its job: the launch file's path comes on stdin

The control plane launches it (see `shapeyard.launch`) and reaches it through its gateway. It checks the gateway's
token, orders requests and keeps their futures (`shapeyard.trainer.sequencer`), and hands the operations to its
compute process (`shapeyard.trainer.compute`), which owns the model. It starts listening once the model is loaded
and exits when its parent (the server) goes away.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from shapeyard.runtime.http import gateway_only, install_error_handlers, json_response
from shapeyard.runtime.process import await_launch, launch_argument, start_worker
from shapeyard.trainer.ipc import Call, ComputeProcess
from shapeyard.trainer.sequencer import Sequencer
from shapeyard.wire import routes
from shapeyard.wire.errors import InvalidArgument, NotFound
from shapeyard.wire.trainer import (
    FUTURE_OPS,
    LONG_POLL_SECONDS,
    Accepted,
    ClientConfig,
    CreateSessionRequest,
    CreateSessionResponse,
    Op,
    RetrieveFutureRequest,
    ServerCapabilities,
    SessionHeartbeatRequest,
    SessionHeartbeatResponse,
    SupportedModel,
    TryAgain,
    UntypedFuture,
)
from shapeyard.wire.worker import TrainerWorkerSpec

log = logging.getLogger("shapeyard.trainer")
TINKER_SDK_VERSION = "0.23.0"


def speaks_tinker(request: Request) -> bool:
    """The plain tinker client; the fireworks client sends its own package version in the same header."""
    return request.headers.get("x-stainless-package-version") == TINKER_SDK_VERSION


def create_worker_app(spec: TrainerWorkerSpec, token: str, sequencer: Sequencer) -> FastAPI:
    """A worker's sessions are ids and nothing more: a session's models are ordered by the `model_seq_id` the client
    sends with them (see `create_model`)."""
    api = APIRouter(prefix=routes.TRAINER_API, dependencies=[Depends(gateway_only(token))])

    @api.get(routes.HEALTH)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.post("/client/config")
    async def client_config() -> Response:
        return json_response(ClientConfig())

    @api.post("/create_session")
    async def create_session(body: CreateSessionRequest) -> Response:
        return json_response(CreateSessionResponse(session_id=f"sess-{secrets.token_hex(6)}"))

    @api.post("/session_heartbeat")
    async def session_heartbeat(body: SessionHeartbeatRequest) -> Response:
        return json_response(SessionHeartbeatResponse())

    @api.post("/telemetry")
    async def telemetry() -> Response:
        return json_response(Accepted())

    @api.get("/get_server_capabilities")
    async def capabilities() -> Response:
        model = SupportedModel(model_name=spec.base_model, max_context_length=spec.max_context_length)
        return json_response(ServerCapabilities(supported_models=[model]))

    async def json_body(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise InvalidArgument("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise InvalidArgument("the request body must be a JSON object")
        return body

    def enqueue(call: Call, lane: tuple[str, int] | None = None) -> Response:
        """Acknowledge at once with a future; the compute process validates and runs the call in order. Bad input
        fails the future (so the seq_id is still consumed and later requests do not wait for it)."""
        model_id, seq_id = call.body.get("model_id"), call.body.get("seq_id")
        if lane is None and isinstance(model_id, str) and isinstance(seq_id, int):
            lane = (model_id, seq_id)
        request_id = sequencer.submit(call, model_id=lane and lane[0], seq_id=lane and lane[1])
        return json_response(
            UntypedFuture(request_id=request_id, model_id=model_id if isinstance(model_id, str) else None)
        )

    async def answer(call: Call) -> Response:
        """A call answered within its HTTP request (after the calls queued before it); its errors are HTTP errors."""
        reply = await sequencer.wait(sequencer.submit(call), None)
        assert reply is not None
        return json_response(reply.unwrap())

    def queued(op: Op) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            return enqueue(Call(op, await json_body(request), tinker=speaks_tinker(request)))

        return route

    def answered(op: Op) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            return await answer(Call(op, await json_body(request)))

        return route

    for op in FUTURE_OPS - {Op.CREATE_MODEL}:
        api.add_api_route(f"/{op}", queued(op), methods=["POST"], name=op)
    for op in (Op.GET_INFO, Op.CREATE_SAMPLING_SESSION):
        api.add_api_route(f"/{op}", answered(op), methods=["POST"], name=op)

    @api.post(f"/{Op.CREATE_MODEL}")
    async def create_model(request: Request) -> Response:
        body = await json_body(request)
        # a session's models are created in model_seq_id order, like a model's requests in seq_id order
        return enqueue(
            Call(Op.CREATE_MODEL, body), (f"session/{body.get('session_id')}", int(body.get("model_seq_id") or 0) + 1)
        )

    @api.get("/samplers/{sampler_id}")
    async def get_sampler(sampler_id: str) -> Response:
        return await answer(Call(Op.GET_SAMPLER, {"sampler_id": sampler_id}))

    @api.get(f"/{Op.LIST_CHECKPOINTS}")
    async def list_checkpoints() -> Response:
        return await answer(Call(Op.LIST_CHECKPOINTS, {}))

    @api.post("/retrieve_future")
    async def retrieve_future(body: RetrieveFutureRequest) -> Response:
        if not sequencer.known(body.request_id):
            raise NotFound(f"request_id {body.request_id!r} is unknown or its result expired")
        reply = await sequencer.wait(body.request_id, LONG_POLL_SECONDS)
        if reply is None:
            return json_response(TryAgain(request_id=body.request_id))
        return Response(reply.encode(), media_type="application/json")

    app = FastAPI(title="shapeyard trainer worker", version="0.1.0")
    install_error_handlers(app)
    app.include_router(api)
    return app


def main() -> None:
    given = launch_argument(__doc__)
    # started warm: the compute process imports torch while this one waits for a job
    warm = None if given else ComputeProcess.start_warm()
    path = given or await_launch()
    launch = start_worker(TrainerWorkerSpec, path)
    listener = launch.process.listener
    assert listener is not None, "a trainer worker serves HTTP"
    compute = ComputeProcess(launch, path, warm)
    compute.wait_ready()
    sequencer = Sequencer(compute.send)
    compute.deliver_replies(sequencer.resolve)
    log.info("serving %s on %s", launch.spec.job_name, listener.url)
    try:
        app = create_worker_app(launch.spec, listener.token, sequencer)
        uvicorn.run(app, host=listener.host, port=listener.port, log_level="warning")
    finally:
        compute.stop()


if __name__ == "__main__":
    main()
