"""The deployment worker process: one replica of a deployment, serving completions and hot-loading snapshots.

    python -m shapeyard.serving.worker --launch <file>

Routes (reached only through the control plane, which adds the worker token):
  POST /inference/v1/completions, /v1/completions     token-id or text prompts; JSON or server-sent events
  POST /v1/chat/completions                           the model's chat template
  POST /hot_load   GET /hot_load                      load a trainer's sampler snapshot; this replica's status
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch
import uvicorn
from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import Response, StreamingResponse

from shapeyard.models.loading import weights_path
from shapeyard.models.sampling import DecodingParams, GenerationRequest, SamplingBackend, SnapshotError
from shapeyard.models.transformers_sampler import TransformersSampler
from shapeyard.runtime.http import gateway_only, install_error_handlers, json_response
from shapeyard.runtime.process import launch_path, start_worker
from shapeyard.serving import responses
from shapeyard.serving.batcher import Batcher
from shapeyard.wire import routes
from shapeyard.wire.errors import FailedPrecondition, HotLoadInProgress
from shapeyard.wire.inference import (
    ChatCompletionRequest,
    CompletionRequest,
    LoadedAdapter,
    LoadingState,
    ReplicaHotLoad,
    ReplicaHotLoadStatus,
)
from shapeyard.wire.worker import DeploymentWorkerSpec

log = logging.getLogger("shapeyard.serving")


class HotLoader:
    """Loads snapshots off the request path; while one loads, completions answer 425 and the old weights stay."""

    def __init__(self, backend: SamplingBackend, replica: int) -> None:
        self.backend, self.replica = backend, replica
        self.state = LoadingState()
        self._lock = threading.Lock()

    @property
    def loading(self) -> bool:
        return self.state.stage == "loading"

    def start(self, identity: str, path: Path) -> None:
        with self._lock:
            if self.loading:
                raise FailedPrecondition(
                    f"replica {self.replica} is still loading {self.state.target_snapshot_identity}; retry once done"
                )
            self.state = LoadingState(stage="loading", target_snapshot_identity=identity)
        threading.Thread(target=self.load, args=(identity, path), name="hot-load", daemon=True).start()

    def load(self, identity: str, path: Path) -> None:
        try:
            self.backend.load_snapshot(path, identity)
        except SnapshotError as exc:
            log.warning("hot-load of %s failed, still serving %s: %s", identity, self.backend.identity, exc)
            self.state = LoadingState(stage="error", target_snapshot_identity=identity, error=str(exc))
            return
        log.info("now serving %s", identity)
        self.state = LoadingState(stage="done", target_snapshot_identity=identity)

    def status(self) -> ReplicaHotLoadStatus:
        identity = self.backend.identity
        return ReplicaHotLoadStatus(
            replica=self.replica,
            current_snapshot_identity=identity,
            readiness=not self.loading,
            loading_state=self.state,
            loaded_adapters=[LoadedAdapter(identity=identity)] if identity else [],
        )


def create_worker_app(spec: DeploymentWorkerSpec, token: str, backend: SamplingBackend, loader: HotLoader) -> FastAPI:
    batcher = Batcher(backend)
    tokenizer = backend.tokenizer

    def serving() -> None:
        if loader.loading:
            raise HotLoadInProgress(
                f"replica {spec.replica} of {spec.deployment_name} is hot-loading "
                f"{loader.state.target_snapshot_identity}; retry shortly"
            )

    def prompts(body: CompletionRequest) -> list[list[int]]:
        raw = body.prompt
        items = raw if isinstance(raw, list) and raw and isinstance(raw[0], (str, list)) else [raw]
        return [tokenizer.encode(item, add_special_tokens=False) if isinstance(item, str) else item for item in items]

    api = APIRouter(dependencies=[Depends(gateway_only(token))])

    @api.get(routes.HEALTH)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def complete(body: CompletionRequest) -> Response:
        serving()
        params = DecodingParams.of(body, body.max_tokens)
        requests = [
            GenerationRequest(prompt, params.for_sample(i), prompt_logprobs=body.echo)
            for prompt in prompts(body)
            for i in range(body.n)
        ]
        results = await batcher.submit(requests)
        if body.stream:
            chunks = responses.completion_chunks(body.model, results, tokenizer, body.echo, body.wants_logprobs())
            return StreamingResponse(responses.sse(chunks), media_type="text/event-stream")
        return json_response(responses.completion(body.model, results, tokenizer, body.echo, body.wants_logprobs()))

    for path in (routes.COMPLETIONS, routes.OPENAI_COMPLETIONS):
        api.add_api_route(path, complete, methods=["POST"], response_model=None)

    @api.post(routes.CHAT_COMPLETIONS, response_model=None)
    async def chat(body: ChatCompletionRequest) -> Response:
        serving()
        messages = [message.model_dump() for message in body.messages]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        end_of_turn = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        params = DecodingParams.of(body, max_tokens, end_of_turn)
        results = await batcher.submit([GenerationRequest(list(prompt), params.for_sample(i)) for i in range(body.n)])
        if body.stream:
            chunks = responses.chat_chunks(body.model, results, tokenizer, body.logprobs)
            return StreamingResponse(responses.sse(chunks), media_type="text/event-stream")
        return json_response(responses.chat_completion(body.model, results, tokenizer, body.logprobs))

    @api.post(routes.REPLICA_HOT_LOAD)
    def hot_load(body: ReplicaHotLoad) -> ReplicaHotLoadStatus:
        loader.start(body.identity, Path(body.path))
        return loader.status()

    @api.get(routes.REPLICA_HOT_LOAD)
    async def hot_load_status() -> ReplicaHotLoadStatus:
        return loader.status()

    app = FastAPI(title="shapeyard deployment worker", version="0.1.0")
    install_error_handlers(app)
    app.include_router(api)
    return app


def main() -> None:
    launch = start_worker(DeploymentWorkerSpec, launch_path(__doc__))
    spec, process = launch.spec, launch.process
    assert process.listener is not None, "a deployment worker serves HTTP"
    torch.set_num_threads(process.threads)
    log.info("loading %s on %s for %s replica %d", spec.base_model, process.device, spec.deployment_name, spec.replica)
    backend = TransformersSampler(weights_path(spec.weights), process.device, spec.max_context_length)
    loader = HotLoader(backend, spec.replica)
    if spec.snapshot is not None:
        loader.state = LoadingState(stage="loading", target_snapshot_identity=spec.snapshot.identity)
        loader.load(spec.snapshot.identity, spec.snapshot.path)
    app = create_worker_app(spec, process.listener.token, backend, loader)
    uvicorn.run(app, host=process.listener.host, port=process.listener.port, log_level="warning")


if __name__ == "__main__":
    main()
