"""The trainer worker process: the trainer protocol over HTTP for one job.

    python -m shapeyard.trainer.worker --spec <file>

The control plane launches it (see `shapeyard.launch`) and reaches it through its gateway; the worker checks the
gateway's token, loads the model before it starts listening, and exits when its parent (the server) goes away.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from shapeyard.control.app import install_error_handlers
from shapeyard.errors import InvalidArgument, NotFound, Unauthenticated
from shapeyard.launch.child import start_worker
from shapeyard.models.loading import load_model, load_tokenizer, weights_path
from shapeyard.trainer.backend import BackendConfig, ModelKind, TrainerBackend
from shapeyard.trainer.engine import Engine
from shapeyard.trainer.sampling import SamplingSessions
from shapeyard.wire.trainer import (
    CreateModelRequest,
    CreateModelResponse,
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    CreateSessionRequest,
    CreateSessionResponse,
    ForwardBackwardOutput,
    ForwardBackwardRequest,
    ForwardRequest,
    GetInfoResponse,
    ListCheckpointsResponse,
    LoadWeightsRequest,
    ModelData,
    ModelRequest,
    OptimStepRequest,
    OptimStepResponse,
    PathResponse,
    RetrieveFutureRequest,
    SampleRequest,
    SaveWeightsForSamplerRequest,
    SaveWeightsForSamplerResponse,
    SaveWeightsRequest,
    ServerCapabilities,
    SessionHeartbeatRequest,
    SupportedModel,
    TryAgain,
    UnloadModelResponse,
    UntypedFuture,
    WireModel,
)
from shapeyard.wire.worker import WORKER_TOKEN_HEADER, TrainerWorkerSpec

log = logging.getLogger("shapeyard.trainer")
LONG_POLL_SECONDS = 25.0
TINKER_SDK_VERSION = "0.23.0"


def speaks_tinker(request: Request) -> bool:
    """The plain tinker client; the fireworks client sends its own package version in the same header."""
    return request.headers.get("x-stainless-package-version") == TINKER_SDK_VERSION


class TrainerService:
    """Binds the protocol's routes to the engine (ordering, futures) and the backend (math)."""

    def __init__(self, spec: TrainerWorkerSpec, backend: TrainerBackend, engine: Engine) -> None:
        self.spec, self.backend, self.engine = spec, backend, engine
        self.sampling = SamplingSessions(
            spec.base_model, backend.config.model_path, spec.device, spec.max_context_length, backend.checkpoints
        )
        self.sessions: dict[str, float] = {}
        self._resume_pending = spec.resume_from is not None

    def reference(self, name: str, kind: str, tinker: bool) -> str:
        """How a checkpoint is named back to the client: the tinker client wants `tinker://<run>/<kind>/<name>`;
        the fireworks client accepts only plain names (both forms are accepted when loading)."""
        return f"tinker://{self.spec.job_name.rsplit('/', 1)[1]}/{kind}/{name}" if tinker else name

    def future(self, request_id: str, model_id: str | None = None) -> JSONResponse:
        return JSONResponse(UntypedFuture(request_id=request_id, model_id=model_id).to_json_dict())

    def create_model(self, body: CreateModelRequest) -> CreateModelResponse:
        if body.base_model != self.spec.base_model:
            raise NotFound(
                f"base_model {body.base_model} is not served by this trainer; it trains {self.spec.base_model}"
            )
        model_id, slot = self.backend.create_model(body.lora_config, body.base_only)
        if self._resume_pending and slot.kind != ModelKind.FROZEN:
            self._resume_pending = False
            self.backend.load_state(model_id, self.spec.resume_from, with_optimizer=True)
            log.info("model %s resumed from %s", model_id, self.spec.resume_from)
        return CreateModelResponse(model_id=model_id)

    def info(self, model_id: str) -> GetInfoResponse:
        slot = self.backend.slot(model_id)
        config = self.backend.base.config
        return GetInfoResponse(
            model_id=model_id,
            # a local directory, so the tinker client's get_tokenizer never reaches for the HF Hub
            model_data=ModelData(
                arch=config.model_type, model_name=self.spec.base_model, tokenizer_id=self.backend.config.model_path
            ),
            is_lora=slot.kind == ModelKind.LORA,
            lora_rank=slot.lora.rank if slot.lora else 0,
            model_name=self.spec.base_model,
        )


def create_worker_app(service: TrainerService) -> FastAPI:
    spec, backend, engine = service.spec, service.backend, service.engine

    def check_token(request: Request) -> None:
        if spec.token and not secrets.compare_digest(request.headers.get(WORKER_TOKEN_HEADER, ""), spec.token):
            raise Unauthenticated("this worker only answers requests that come through the shapeyard gateway")

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(check_token)])

    @api.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.post("/client/config")
    def client_config() -> dict[str, Any]:
        # JSON everywhere: the official clients then never switch to protobuf, JWT or RDMA paths.
        return {
            "pjwt_auth_enabled": False,
            "proto_write_fwdbwd": False,
            "proto_compress_fwdbwd": False,
            "parallel_fwdbwd_chunks": True,
            "credential_default_source": "api_key",
        }

    @api.post("/create_session")
    def create_session(body: CreateSessionRequest) -> dict[str, Any]:
        session_id = f"sess-{secrets.token_hex(6)}"
        service.sessions[session_id] = time.time()
        return CreateSessionResponse(session_id=session_id).to_json_dict()

    @api.post("/session_heartbeat")
    def session_heartbeat(body: SessionHeartbeatRequest) -> dict[str, str]:
        service.sessions[body.session_id] = time.time()
        return {"type": "session_heartbeat"}

    @api.post("/telemetry")
    def telemetry() -> dict[str, str]:
        return {"status": "accepted"}

    @api.get("/get_server_capabilities")
    def capabilities() -> dict[str, Any]:
        model = SupportedModel(model_name=spec.base_model, max_context_length=spec.max_context_length)
        return ServerCapabilities(supported_models=[model]).to_json_dict()

    async def submit(
        request: Request, schema: type[WireModel], handler: Callable[[Any], Any], lane: tuple[str, int] | None = None
    ) -> JSONResponse:
        """Acknowledge at once; validate and run in order on the compute thread. Bad input fails the future (so
        the seq_id is still consumed and later requests do not wait for it)."""
        try:
            body = await request.json()
        except ValueError:
            raise InvalidArgument("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise InvalidArgument("the request body must be a JSON object")
        model_id, seq_id = body.get("model_id"), body.get("seq_id")
        if lane is None and isinstance(model_id, str) and isinstance(seq_id, int):
            lane = (model_id, seq_id)
        request_id = engine.submit(
            lambda: handler(schema.model_validate(body)), model_id=lane and lane[0], seq_id=lane and lane[1]
        )
        return service.future(request_id, model_id if isinstance(model_id, str) else None)

    @api.post("/create_model")
    async def create_model(request: Request) -> JSONResponse:
        body = await request.json()
        lane = (f"session/{body.get('session_id')}", int(body.get("model_seq_id") or 0) + 1)
        return await submit(request, CreateModelRequest, service.create_model, lane)

    @api.post("/get_info")
    def get_info(body: ModelRequest) -> dict[str, Any]:
        return service.info(body.model_id).to_json_dict()

    @api.post("/unload_model")
    async def unload_model(request: Request) -> JSONResponse:
        def work(body: ModelRequest) -> UnloadModelResponse:
            backend.unload(body.model_id)
            return UnloadModelResponse(model_id=body.model_id)

        return await submit(request, ModelRequest, work)

    @api.post("/forward")
    async def forward(request: Request) -> JSONResponse:
        def work(body: ForwardRequest) -> ForwardBackwardOutput:
            data = body.forward_input
            return backend.forward(body.model_id, data.data, data.loss_fn, data.loss_fn_config, backward=False)

        return await submit(request, ForwardRequest, work)

    @api.post("/forward_backward")
    async def forward_backward(request: Request) -> JSONResponse:
        def work(body: ForwardBackwardRequest) -> ForwardBackwardOutput:
            data = body.forward_backward_input
            return backend.forward(body.model_id, data.data, data.loss_fn, data.loss_fn_config, backward=True)

        return await submit(request, ForwardBackwardRequest, work)

    @api.post("/optim_step")
    async def optim_step(request: Request) -> JSONResponse:
        def work(body: OptimStepRequest) -> OptimStepResponse:
            metrics = backend.optim_step(body.model_id, body.adam_params, body.grad_accumulation_normalization)
            return OptimStepResponse(metrics=metrics)

        return await submit(request, OptimStepRequest, work)

    @api.post("/save_weights")
    async def save_weights(request: Request) -> JSONResponse:
        tinker = speaks_tinker(request)

        def work(body: SaveWeightsRequest) -> PathResponse:
            name = backend.save_state(body.model_id, backend.checkpoints.new_name(body.path, "state"))
            return PathResponse(path=service.reference(name, "weights", tinker))

        return await submit(request, SaveWeightsRequest, work)

    @api.post("/load_weights")
    async def load_weights(request: Request) -> JSONResponse:
        def work(body: LoadWeightsRequest) -> PathResponse:
            backend.load_state(body.model_id, backend.checkpoints.resolve(body.path), body.optimizer)
            return PathResponse(path=body.path)

        return await submit(request, LoadWeightsRequest, work)

    @api.post("/save_weights_for_sampler")
    async def save_weights_for_sampler(request: Request) -> JSONResponse:
        tinker = speaks_tinker(request)

        def work(body: SaveWeightsForSamplerRequest) -> SaveWeightsForSamplerResponse:
            name = backend.checkpoints.new_name(body.path, "sampler")
            backend.save_for_sampler(body.model_id, name)
            path = service.reference(name, "sampler_weights", tinker)
            # the tinker client's save_weights_and_get_sampling_client samples from it right away
            session = service.sampling.create(path, None) if body.sampling_session_seq_id is not None else None
            return SaveWeightsForSamplerResponse(path=path, sampling_session_id=session)

        return await submit(request, SaveWeightsForSamplerRequest, work)

    @api.post("/create_sampling_session")
    def create_sampling_session(body: CreateSamplingSessionRequest) -> dict[str, Any]:
        session = service.sampling.create(body.model_path, body.base_model)
        return CreateSamplingSessionResponse(sampling_session_id=session).to_json_dict()

    @api.post("/asample")
    async def asample(request: Request) -> JSONResponse:
        return await submit(request, SampleRequest, service.sampling.sample)

    @api.get("/samplers/{sampler_id}")
    def get_sampler(sampler_id: str) -> dict[str, Any]:
        return service.sampling.info(sampler_id).to_json_dict()

    @api.get("/list_checkpoints")
    def list_checkpoints() -> dict[str, Any]:
        return ListCheckpointsResponse(checkpoints=backend.checkpoints.list_training()).to_json_dict()

    @api.post("/retrieve_future")
    async def retrieve_future(body: RetrieveFutureRequest) -> Response:
        if not engine.known(body.request_id):
            raise NotFound(f"request_id {body.request_id!r} is unknown or its result expired")
        result = await engine.wait(body.request_id, LONG_POLL_SECONDS)
        if result is None:
            return JSONResponse(TryAgain(request_id=body.request_id).to_json_dict())
        return Response(result, media_type="application/json")

    app = FastAPI(title="shapeyard trainer worker", version="0.1.0")
    install_error_handlers(app)
    app.include_router(api)
    return app


def build_service(spec: TrainerWorkerSpec) -> TrainerService:
    path = weights_path(spec.weights)
    model, tokenizer = load_model(path, spec.device), load_tokenizer(path)
    config = BackendConfig(
        base_model=spec.base_model,
        model_path=path,
        device=spec.device,
        max_context_length=spec.max_context_length,
        lora_rank=spec.lora_rank,
        max_lora_rank=spec.max_lora_rank,
        forward_only=spec.forward_only,
        activation_checkpointing=spec.activation_checkpointing,
        job_dir=spec.work_dir,
        seed=spec.seed,
    )
    return TrainerService(spec, TrainerBackend(config, model, tokenizer), Engine())


def main() -> None:
    spec = start_worker(TrainerWorkerSpec, __doc__)
    log.info("loading %s on %s for %s", spec.base_model, spec.device, spec.job_name)
    service = build_service(spec)
    log.info("serving %s on %s:%d", spec.job_name, spec.host, spec.port)
    uvicorn.run(create_worker_app(service), host=spec.host, port=spec.port, log_level="warning")


if __name__ == "__main__":
    main()
