"""The trainer worker's compute process: owns the model and runs the protocol's operations one after another.

    python -m shapeyard.trainer.compute --fd <socket>

Started by the worker's HTTP process (`shapeyard.trainer.worker`), which sends it the worker's spec and then
calls, in order, over the socket (see `shapeyard.trainer.ipc`). It has one thread that matters, so the training
step has the GIL to itself.
"""

from __future__ import annotations

import argparse
import gc
import logging
from multiprocessing.connection import Connection

import torch
from pydantic import BaseModel, ValidationError

from shapeyard.errors import InvalidArgument, NotFound, ShapeyardError, validation_message
from shapeyard.launch.child import setup_process
from shapeyard.models.loading import load_model, load_tokenizer, weights_path
from shapeyard.trainer.backend import BackendConfig, ModelKind, TrainerBackend
from shapeyard.trainer.ipc import READY, Call, Reply
from shapeyard.trainer.sampling import SamplingSessions
from shapeyard.wire.trainer import (
    CreateModelRequest,
    CreateModelResponse,
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
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
    SampleRequest,
    SaveWeightsForSamplerRequest,
    SaveWeightsForSamplerResponse,
    SaveWeightsRequest,
    UnloadModelResponse,
)
from shapeyard.wire.worker import TrainerWorkerSpec

log = logging.getLogger("shapeyard.trainer")


class TrainerService:
    """The protocol's operations on the backend (the math) and the tinker client's sampling sessions."""

    def __init__(self, spec: TrainerWorkerSpec, backend: TrainerBackend) -> None:
        self.spec, self.backend = spec, backend
        self.sampling = SamplingSessions(
            spec.base_model, backend.config.model_path, spec.device, spec.max_context_length, backend.checkpoints
        )
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
        body, backend = call.body, self.backend
        match call.op:
            case "create_model":
                return self.create_model(CreateModelRequest.model_validate(body))
            case "get_info":
                return self.info(ModelRequest.model_validate(body).model_id)
            case "unload_model":
                model_id = ModelRequest.model_validate(body).model_id
                backend.unload(model_id)
                return UnloadModelResponse(model_id=model_id)
            case "forward":
                request = ForwardRequest.model_validate(body)
                data = request.forward_input
                return backend.forward(request.model_id, data.data, data.loss_fn, data.loss_fn_config, backward=False)
            case "forward_backward":
                request = ForwardBackwardRequest.model_validate(body)
                data = request.forward_backward_input
                return backend.forward(request.model_id, data.data, data.loss_fn, data.loss_fn_config, backward=True)
            case "optim_step":
                request = OptimStepRequest.model_validate(body)
                metrics = backend.optim_step(
                    request.model_id, request.adam_params, request.grad_accumulation_normalization
                )
                return OptimStepResponse(metrics=metrics)
            case "save_weights":
                request = SaveWeightsRequest.model_validate(body)
                name = backend.save_state(request.model_id, backend.checkpoints.new_name(request.path, "state"))
                return PathResponse(path=self.reference(name, "weights", call.tinker))
            case "load_weights":
                request = LoadWeightsRequest.model_validate(body)
                backend.load_state(request.model_id, backend.checkpoints.resolve(request.path), request.optimizer)
                return PathResponse(path=request.path)
            case "save_weights_for_sampler":
                return self.save_for_sampler(SaveWeightsForSamplerRequest.model_validate(body), call.tinker)
            case "list_checkpoints":
                return ListCheckpointsResponse(checkpoints=backend.checkpoints.list_training())
            case "create_sampling_session":
                request = CreateSamplingSessionRequest.model_validate(body)
                session = self.sampling.create(request.model_path, request.base_model)
                return CreateSamplingSessionResponse(sampling_session_id=session)
            case "get_sampler":
                return self.sampling.info(body["sampler_id"])
            case "asample":
                return self.sampling.sample(SampleRequest.model_validate(body))
        raise ValueError(f"unknown operation {call.op!r}")

    def reference(self, name: str, kind: str, tinker: bool) -> str:
        """How a checkpoint is named back to the client: the tinker client wants `tinker://<run>/<kind>/<name>`;
        the fireworks client accepts only plain names (both forms are accepted when loading)."""
        return f"tinker://{self.spec.job_name.rsplit('/', 1)[1]}/{kind}/{name}" if tinker else name

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

    def save_for_sampler(self, body: SaveWeightsForSamplerRequest, tinker: bool) -> SaveWeightsForSamplerResponse:
        name = self.backend.checkpoints.new_name(body.path, "sampler")
        self.backend.save_for_sampler(body.model_id, name)
        path = self.reference(name, "sampler_weights", tinker)
        # the tinker client's save_weights_and_get_sampling_client samples from it right away
        session = self.sampling.create(path, None) if body.sampling_session_seq_id is not None else None
        return SaveWeightsForSamplerResponse(path=path, sampling_session_id=session)


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
    return TrainerService(spec, TrainerBackend(config, model, tokenizer))


def serve(service: TrainerService, connection: Connection) -> None:
    """Run calls in the order they arrive until the HTTP process closes the socket."""
    while True:
        try:
            request_id, call = connection.recv()
        except (EOFError, OSError):
            return
        connection.send(service.reply(request_id, call))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True, help="the socket to the worker's HTTP process")
    connection = Connection(parser.parse_args().fd)
    spec: TrainerWorkerSpec = connection.recv()
    setup_process()
    torch.set_num_threads(spec.threads)
    log.info("loading %s on %s for %s", spec.base_model, spec.device, spec.job_name)
    service = build_service(spec)
    # What is loaded by now lives as long as the process. Frozen out of the collector's sight, a full collection
    # takes under 1 ms instead of ~200 ms (measured on the tiny model), a pause a training step would wait through.
    gc.freeze()
    connection.send(READY)
    serve(service, connection)


if __name__ == "__main__":
    main()
