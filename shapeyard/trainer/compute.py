"""The trainer worker's compute process: owns the model and runs the protocol's operations one after another.

    python -m shapeyard.trainer.compute --launch <file>                       a world of one
    python -m torch.distributed.run ... -m shapeyard.trainer.compute --launch <file>   one per rank

Started by the worker's HTTP process (`shapeyard.trainer.worker`), directly or through torch's elastic launcher
(`shapeyard.launch.torchrun`). Rank 0 connects back to the HTTP process, which sends it calls in order (see
`shapeyard.trainer.ipc`); it runs them and sends each on to the other ranks (`LeaderBackend`, `follow`), so that
every rank runs the same calls in the same order. Each process has one thread that matters, so the training step
has the GIL to itself. Here the wire meets the backend: requests are validated and converted into the backend's
types (`shapeyard.trainer.backend`), and results back, and checkpoint names become directories.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from torch.distributed.elastic.multiprocessing.errors import record

from shapeyard.models.loading import load_model, load_tokenizer, weights_path
from shapeyard.models.transformers_sampler import TransformersSampler
from shapeyard.runtime.process import (
    enter_launch,
    launch_path,
    read_launch,
    release_freed_memory,
    setup_process,
)
from shapeyard.store.layout import JobFiles
from shapeyard.trainer.backend import (
    AdamStep,
    AdapterSpec,
    BackendConfig,
    Example,
    ForwardResult,
    ModelInfo,
    ModelKind,
    Normalization,
    TrainerBackend,
)
from shapeyard.trainer.ipc import READY, Call, Reply
from shapeyard.trainer.sampling import SamplingSessions
from shapeyard.trainer.spmd import DTYPES, SpmdBackend
from shapeyard.trainer.world import World, join_world
from shapeyard.wire import names
from shapeyard.wire.errors import InvalidArgument, NotFound, ShapeyardError, validation_message
from shapeyard.wire.trainer import (
    REQUESTS,
    AdamParams,
    CreateModelRequest,
    CreateModelResponse,
    CreateSamplingSessionResponse,
    Datum,
    ForwardBackwardOutput,
    GetInfoResponse,
    ListCheckpointsResponse,
    LoraConfig,
    ModelData,
    Op,
    OptimStepResponse,
    PathResponse,
    SaveWeightsForSamplerRequest,
    SaveWeightsForSamplerResponse,
    TensorData,
    UnloadModelResponse,
)
from shapeyard.wire.worker import TrainerWorkerSpec, WorkerLaunch

log = logging.getLogger("shapeyard.trainer")


# --- wire -> backend -> wire -----------------------------------------------------------------------------


def examples(data: list[Datum]) -> list[Example]:
    return [
        Example(datum.model_input.to_ints(), {key: tensor.to_list() for key, tensor in datum.loss_fn_inputs.items()})
        for datum in data
    ]


def adapter(lora: LoraConfig | None) -> AdapterSpec | None:
    if lora is None:
        return None
    return AdapterSpec(
        rank=lora.rank,
        alpha=32.0 if lora.alpha is None else lora.alpha,
        seed=lora.seed,
        train_attn=lora.train_attn,
        train_mlp=lora.train_mlp,
        train_unembed=lora.train_unembed,
    )


def adam_step(params: AdamParams) -> AdamStep:
    return AdamStep(
        learning_rate=params.learning_rate,
        beta1=params.beta1,
        beta2=params.beta2,
        eps=params.eps,
        weight_decay=params.weight_decay,
        grad_clip_norm=params.grad_clip_norm,
    )


def forward_output(result: ForwardResult) -> ForwardBackwardOutput:
    outputs = [{"logprobs": TensorData.from_list(logprobs, "float32")} for logprobs in result.logprobs]
    return ForwardBackwardOutput(loss_fn_outputs=outputs, metrics=result.metrics)


# --- the service -----------------------------------------------------------------------------------------


class TrainerService:
    """The protocol's operations on the backend (the math) and the tinker client's sampling sessions."""

    def __init__(
        self, spec: TrainerWorkerSpec, backend: TrainerBackend, files: JobFiles, sampling: SamplingSessions
    ) -> None:
        self.spec, self.backend, self.files, self.sampling = spec, backend, files, sampling
        self._resume_pending = spec.resume_from is not None

    def reply(self, request_id: str, call: Call) -> Reply:
        try:
            return Reply(request_id, result=self.run(call))
        except ShapeyardError as exc:
            return Reply(request_id, error=exc)
        except ValidationError as exc:
            return Reply(request_id, error=InvalidArgument(validation_message(exc.errors())))
        except Exception as exc:
            log.exception("request %s (%s) failed", request_id, call.op)
            return Reply(request_id, fault=f"{type(exc).__name__}: {exc}")

    def run(self, call: Call) -> BaseModel:
        request, backend = REQUESTS[call.op].model_validate(call.body), self.backend
        match call.op:
            case Op.CREATE_MODEL:
                return self.create_model(request)
            case Op.GET_INFO:
                return self.info(request.model_id)
            case Op.UNLOAD_MODEL:
                backend.unload(request.model_id)
                return UnloadModelResponse(model_id=request.model_id)
            case Op.FORWARD | Op.FORWARD_BACKWARD:
                batch = request.forward_input if call.op == Op.FORWARD else request.forward_backward_input
                result = backend.forward(
                    request.model_id,
                    examples(batch.data),
                    batch.loss_fn,
                    batch.loss_fn_config,
                    backward=call.op == Op.FORWARD_BACKWARD,
                )
                return forward_output(result)
            case Op.OPTIM_STEP:
                normalization = request.grad_accumulation_normalization
                metrics = backend.optim_step(
                    request.model_id, adam_step(request.adam_params), normalization and normalization.value
                )
                return OptimStepResponse(metrics=metrics)
            case Op.SAVE_WEIGHTS:
                name = self.files.new_name(request.path, "state")
                backend.save_state(request.model_id, self.files.training_dir(name))
                return PathResponse(path=self.reference(name, names.WEIGHTS, call.tinker))
            case Op.LOAD_WEIGHTS:
                backend.load_state(request.model_id, self.files.resolve(request.path), request.optimizer)
                return PathResponse(path=request.path)
            case Op.SAVE_WEIGHTS_FOR_SAMPLER:
                return self.save_for_sampler(request, call.tinker)
            case Op.LIST_CHECKPOINTS:
                return ListCheckpointsResponse(checkpoints=self.files.list_training())
            case Op.CREATE_SAMPLING_SESSION:
                session = self.sampling.create(request.model_path, request.base_model)
                return CreateSamplingSessionResponse(sampling_session_id=session)
            case Op.GET_SAMPLER:
                return self.sampling.info(request.sampler_id)
            case Op.ASAMPLE:
                return self.sampling.sample(request)

    def reference(self, name: str, kind: str, tinker: bool) -> str:
        """How a checkpoint is named back to the client: the tinker client wants `tinker://<run>/<kind>/<name>`;
        the fireworks client accepts only plain names (both forms are accepted when loading)."""
        return names.tinker_path(names.short(self.spec.job_name), kind, name) if tinker else name

    def create_model(self, body: CreateModelRequest) -> CreateModelResponse:
        if body.base_model != self.spec.base_model:
            raise NotFound(
                f"base_model {body.base_model} is not served by this trainer; it trains {self.spec.base_model}"
            )
        model_id, kind = self.backend.create_model(adapter(body.lora_config), body.base_only)
        if self._resume_pending and kind != ModelKind.FROZEN:
            self._resume_pending = False
            self.backend.load_state(model_id, self.spec.resume_from, with_optimizer=True)
            log.info("model %s resumed from %s", model_id, self.spec.resume_from)
        return CreateModelResponse(model_id=model_id)

    def info(self, model_id: str) -> GetInfoResponse:
        info = self.backend.info(model_id)
        return GetInfoResponse(
            model_id=model_id,
            # a local directory, so the tinker client's get_tokenizer never reaches for the HF Hub
            model_data=ModelData(
                arch=info.architecture, model_name=self.spec.base_model, tokenizer_id=self.backend.config.model_path
            ),
            is_lora=info.kind == ModelKind.LORA,
            lora_rank=info.lora_rank,
            model_name=self.spec.base_model,
        )

    def save_for_sampler(self, body: SaveWeightsForSamplerRequest, tinker: bool) -> SaveWeightsForSamplerResponse:
        name = self.files.new_name(body.path, "sampler")
        self.backend.save_for_sampler(body.model_id, self.files.sampler_dir(name))
        path = self.reference(name, names.SAMPLER_WEIGHTS, tinker)
        # the tinker client's save_weights_and_get_sampling_client samples from it right away
        session = self.sampling.create(path, None) if body.sampling_session_seq_id is not None else None
        return SaveWeightsForSamplerResponse(path=path, sampling_session_id=session)


class LeaderBackend:
    """The backend as rank 0's service sees it: a call that changes state, or needs the other ranks' collectives,
    is first sent to every rank, which then all run it together (`follow`). Reads stay local."""

    def __init__(self, backend: SpmdBackend) -> None:
        self._backend = backend
        self.config, self.vocab_size = backend.config, backend.vocab_size

    def _everywhere(self, method: str, *args: Any) -> Any:
        self._backend.world.broadcast((method, args))
        return getattr(self._backend, method)(*args)

    def create_model(self, adapter: AdapterSpec | None, base_only: bool) -> tuple[str, ModelKind]:
        return self._everywhere("create_model", adapter, base_only)

    def info(self, model_id: str) -> ModelInfo:
        return self._backend.info(model_id)

    def unload(self, model_id: str) -> None:
        self._everywhere("unload", model_id)

    def forward(
        self,
        model_id: str,
        examples: list[Example],
        loss_fn: str,
        loss_fn_config: dict[str, Any] | None,
        backward: bool,
    ) -> ForwardResult:
        return self._everywhere("forward", model_id, examples, loss_fn, loss_fn_config, backward)

    def optim_step(self, model_id: str, adam: AdamStep, normalization: Normalization) -> dict[str, float]:
        return self._everywhere("optim_step", model_id, adam, normalization)

    def save_state(self, model_id: str, directory: Path) -> None:
        self._everywhere("save_state", model_id, directory)

    def load_state(self, model_id: str, directory: Path, with_optimizer: bool) -> None:
        self._everywhere("load_state", model_id, directory, with_optimizer)

    def save_for_sampler(self, model_id: str, directory: Path) -> None:
        self._everywhere("save_for_sampler", model_id, directory)

    def stop(self) -> None:
        """Tell the other ranks that no call follows. If they are gone already (a rank died, and the HTTP process
        with it), there is nobody to tell, and their own failure is the one worth reporting."""
        try:
            self._backend.world.broadcast((None, ()))
        except RuntimeError as exc:  # gloo and NCCL report a lost peer as RuntimeError subclasses
            log.warning("the other ranks are gone: %s", exc)


def follow(backend: SpmdBackend) -> None:
    """The loop of every rank but 0: run what rank 0 runs, in the same order, until it says stop. A call that fails
    here with the client's error fails identically on rank 0, which answers it; anything else ends this rank, and
    torch's launcher then stops the world."""
    while True:
        method, args = backend.world.broadcast(None)
        if method is None:
            return
        with contextlib.suppress(ShapeyardError):
            getattr(backend, method)(*args)


def build_backend(launch: WorkerLaunch[TrainerWorkerSpec], world: World) -> SpmdBackend:
    spec = launch.spec
    path = weights_path(spec.weights)
    config = BackendConfig(
        base_model=spec.base_model,
        model_path=path,
        device=world.device,
        max_context_length=spec.max_context_length,
        lora_rank=spec.lora_rank,
        max_lora_rank=spec.max_lora_rank,
        forward_only=spec.forward_only,
        recipe=spec.recipe,
        seed=spec.seed,
    )
    # Stored in the precision it trains in (full-parameter: the master copy) or is frozen in. Beyond one rank the
    # whole model is read into host memory and FSDP moves each rank's shards to its device.
    trains_all = spec.lora_rank == 0 and not spec.forward_only
    dtype = DTYPES[spec.recipe.trainable_precision if trains_all else spec.recipe.frozen_precision]
    model = load_model(path, world.device if world.size == 1 else "cpu", dtype)
    return SpmdBackend(config, model, load_tokenizer(path), world)


def build_service(spec: TrainerWorkerSpec, backend: TrainerBackend) -> TrainerService:
    """Rank 0's service: the protocol on the backend, and the tinker client's sampling sessions."""
    path, device = backend.config.model_path, backend.config.device
    files = JobFiles(spec.work_dir)
    sampling = SamplingSessions(
        spec.base_model, lambda: TransformersSampler(path, device, spec.max_context_length), files
    )
    return TrainerService(spec, backend, files, sampling)


def serve(service: TrainerService, link: Connection) -> None:
    """Run calls in the order they arrive until the HTTP process closes the link."""
    while True:
        try:
            request_id, call = link.recv()
        except (EOFError, OSError):
            return
        link.send(service.reply(request_id, call))


@record  # a rank that dies leaves its traceback in the agent's failure summary, the end of the worker's log
def main() -> None:
    launch = read_launch(TrainerWorkerSpec, launch_path(__doc__))
    enter_launch(launch)
    setup_process()
    torch.set_num_threads(launch.process.threads)
    world = join_world(launch.process.device, launch.process.world.replicas)
    log.info(
        "rank %d of %d: loading %s on %s for %s",
        world.rank,
        world.size,
        launch.spec.base_model,
        world.device,
        launch.spec.job_name,
    )
    backend = build_backend(launch, world)
    release_freed_memory()
    # What is loaded by now lives as long as the process. Frozen out of the collector's sight, a full collection
    # takes under 1 ms instead of ~200 ms (measured on the tiny model), a pause a training step would wait through.
    gc.freeze()
    if world.leader:
        address = launch.process.compute
        assert address is not None, "the launcher gives a trainer a link for its rank 0"
        link = Client((address.host, address.port), authkey=address.token.encode())
        leader = LeaderBackend(backend)
        link.send(READY)
        serve(build_service(launch.spec, leader if world.size > 1 else backend), link)
        leader.stop()
    else:
        follow(backend)
    world.close()


if __name__ == "__main__":
    main()
