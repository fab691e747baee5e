"""The deployment worker process: one replica of a deployment, serving completions and hot-loading snapshots.

    python -m shapeyard.serving.worker --spec <file>

Routes (reached only through the control plane, which adds the worker token):
  POST /inference/v1/completions, /v1/completions     token-id or text prompts; JSON or server-sent events
  POST /v1/chat/completions                           the model's chat template
  POST /hot_load   GET /hot_load                      load a trainer's sampler snapshot; this replica's status
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import Response, StreamingResponse

from shapeyard.control.app import install_error_handlers
from shapeyard.errors import FailedPrecondition, HotLoadInProgress
from shapeyard.launch.child import start_worker
from shapeyard.launch.gateway_token import gateway_only
from shapeyard.models.loading import weights_path
from shapeyard.serving import responses
from shapeyard.serving.batcher import Batcher
from shapeyard.serving.engine import Request as SampleRequest
from shapeyard.serving.engine import SamplingEngine, SamplingParams, SnapshotError
from shapeyard.wire.inference import (
    ChatCompletionRequest,
    CompletionRequest,
    LoadingState,
    ReplicaHotLoadStatus,
    SamplingFields,
    WorkerHotLoad,
)
from shapeyard.wire.worker import DeploymentWorkerSpec

log = logging.getLogger("shapeyard.serving")


class HotLoader:
    """Loads snapshots off the request path; while one loads, completions answer 425 and the old weights stay."""

    def __init__(self, engine: SamplingEngine, replica: int) -> None:
        self.engine, self.replica = engine, replica
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
            self.engine.load_snapshot(path, identity)
        except SnapshotError as exc:
            log.warning("hot-load of %s failed, still serving %s: %s", identity, self.engine.identity, exc)
            self.state = LoadingState(stage="error", target_snapshot_identity=identity, error=str(exc))
            return
        log.info("now serving %s", identity)
        self.state = LoadingState(stage="done", target_snapshot_identity=identity)

    def status(self) -> ReplicaHotLoadStatus:
        identity = self.engine.identity
        return ReplicaHotLoadStatus(
            replica=self.replica,
            current_snapshot_identity=identity,
            readiness=not self.loading,
            loading_state=self.state,
            loaded_adapters=[{"identity": identity, "status": "loaded"}] if identity else [],
        )


def _params(body: SamplingFields, max_tokens: int, extra_stop_ids: list[int]) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=max(body.top_k, 0),
        seed=body.seed,
        stop_token_ids=[*(body.stop_token_ids or []), *extra_stop_ids],
        stop=body.stop_strings(),
    )


def create_worker_app(spec: DeploymentWorkerSpec, engine: SamplingEngine, loader: HotLoader) -> FastAPI:
    batcher = Batcher(engine)
    tokenizer = engine.tokenizer

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

    api = APIRouter(dependencies=[Depends(gateway_only(spec.token))])

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def complete(body: CompletionRequest) -> Response | dict[str, Any]:
        serving()
        params = _params(body, body.max_tokens, [])
        requests = [
            SampleRequest(prompt, params.for_sample(i), prompt_logprobs=body.echo)
            for prompt in prompts(body)
            for i in range(body.n)
        ]
        results = await batcher.submit(requests)
        logprobs = body.logprobs is not None and body.logprobs is not False
        if body.stream:
            chunks = responses.completion_chunks(body.model, results, tokenizer, body.echo, logprobs)
            return StreamingResponse(responses.sse(chunks), media_type="text/event-stream")
        return responses.completion(body.model, results, tokenizer, body.echo, logprobs)

    api.add_api_route("/inference/v1/completions", complete, methods=["POST"], response_model=None)
    api.add_api_route("/v1/completions", complete, methods=["POST"], response_model=None)

    @api.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest) -> Response | dict[str, Any]:
        serving()
        messages = [message.model_dump() for message in body.messages]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        params = _params(body, max_tokens, [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
        results = await batcher.submit([SampleRequest(list(prompt), params.for_sample(i)) for i in range(body.n)])
        if body.stream:
            chunks = responses.chat_chunks(body.model, results, tokenizer, body.logprobs)
            return StreamingResponse(responses.sse(chunks), media_type="text/event-stream")
        return responses.chat_completion(body.model, results, tokenizer, body.logprobs)

    @api.post("/hot_load")
    def hot_load(body: WorkerHotLoad) -> ReplicaHotLoadStatus:
        loader.start(body.identity, Path(body.path))
        return loader.status()

    @api.get("/hot_load")
    async def hot_load_status() -> ReplicaHotLoadStatus:
        return loader.status()

    app = FastAPI(title="shapeyard deployment worker", version="0.1.0")
    install_error_handlers(app)
    app.include_router(api)
    return app


def main() -> None:
    spec = start_worker(DeploymentWorkerSpec, __doc__)
    torch.set_num_threads(spec.threads)
    log.info("loading %s on %s for %s replica %d", spec.base_model, spec.device, spec.deployment_name, spec.replica)
    engine = SamplingEngine(weights_path(spec.weights), spec.device, spec.max_context_length)
    loader = HotLoader(engine, spec.replica)
    if spec.snapshot is not None:
        loader.state = LoadingState(stage="loading", target_snapshot_identity=spec.snapshot.identity)
        loader.load(spec.snapshot.identity, spec.snapshot.path)
    uvicorn.run(create_worker_app(spec, engine, loader), host=spec.host, port=spec.port, log_level="warning")


if __name__ == "__main__":
    main()
