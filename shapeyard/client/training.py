"""ServiceClient and TrainingClient: the trainer protocol from Python, over the same wire schema as the server.

    service = ServiceClient(base_url, api_key)          # a job's gateway URL, or the server root (the tinker entry)
    training = service.create_training_client(base_model, lora_rank=0)
    training.forward_backward(data, "cross_entropy").result()
    training.optim_step(AdamParams(learning_rate=1e-4)).result()

Requests of one training client carry consecutive seq_ids, so the server runs them in submission order even when
futures are awaited later (submit several steps, then wait).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import httpx

from shapeyard.client.futures import Done, Future
from shapeyard.client.http import check, session
from shapeyard.wire import routes
from shapeyard.wire.base import WireModel
from shapeyard.wire.trainer import (
    AdamParams,
    CreateModelRequest,
    CreateModelResponse,
    CreateSessionRequest,
    CreateSessionResponse,
    Datum,
    ForwardBackwardInput,
    ForwardBackwardOutput,
    ForwardBackwardRequest,
    ForwardRequest,
    GetInfoResponse,
    GradNormalization,
    ListCheckpointsResponse,
    LoadWeightsRequest,
    LoraConfig,
    ModelRequest,
    Op,
    OptimStepRequest,
    OptimStepResponse,
    PathResponse,
    SaveWeightsForSamplerRequest,
    SaveWeightsRequest,
    TensorData,
    UntypedFuture,
)

# Custom losses: (data, per-datum target logprobs with requires_grad) -> (scalar loss, metrics).
CustomLoss = Callable[[list[Datum], list[Any]], tuple[Any, dict[str, float]]]
R = TypeVar("R", bound=WireModel)


class TrainingClient:
    def __init__(self, http: httpx.Client, model_id: str) -> None:
        self._http, self.model_id = http, model_id
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def _submit(self, op: Op, request: WireModel, result: type[R]) -> Future[R]:
        with self._lock:  # seq_ids in submission order
            body = request.model_copy(update={"seq_id": next(self._seq)}).to_json_dict()
            future = UntypedFuture.model_validate(check(self._http.post(routes.trainer_op(op), json=body)))
        return Future(self._http, future.request_id, result.model_validate)

    def forward(
        self, data: Sequence[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict[str, Any] | None = None
    ) -> Future[ForwardBackwardOutput]:
        batch = ForwardBackwardInput(data=list(data), loss_fn=loss_fn, loss_fn_config=loss_fn_config)
        request = ForwardRequest(forward_input=batch, model_id=self.model_id)
        return self._submit(Op.FORWARD, request, ForwardBackwardOutput)

    def forward_backward(
        self, data: Sequence[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict[str, Any] | None = None
    ) -> Future[ForwardBackwardOutput]:
        batch = ForwardBackwardInput(data=list(data), loss_fn=loss_fn, loss_fn_config=loss_fn_config)
        request = ForwardBackwardRequest(forward_backward_input=batch, model_id=self.model_id)
        return self._submit(Op.FORWARD_BACKWARD, request, ForwardBackwardOutput)

    def forward_backward_custom(self, data: Sequence[Datum], loss_fn: CustomLoss) -> Done[ForwardBackwardOutput]:
        """Any differentiable function of the target logprobs: a forward pass, the loss and its gradient here,
        then a weighted cross-entropy pass whose weights are -dLoss/dlogprob (so the server applies that gradient)."""
        import torch

        data = list(data)
        probe = [
            d
            if "weights" in d.loss_fn_inputs
            else d.model_copy(
                update={
                    "loss_fn_inputs": {
                        **d.loss_fn_inputs,
                        "weights": TensorData.from_list([0.0] * d.model_input.length, "float32"),
                    }
                }
            )
            for d in data
        ]
        forward = self.forward(probe, "cross_entropy").result()
        logprobs = [torch.tensor(out["logprobs"].to_list(), requires_grad=True) for out in forward.loss_fn_outputs]
        loss, metrics = loss_fn(data, logprobs)
        loss.backward()
        weighted = [
            d.model_copy(
                update={
                    "loss_fn_inputs": {
                        "target_tokens": d.loss_fn_inputs["target_tokens"],
                        "weights": TensorData.from_list((-lp.grad).tolist(), "float32"),
                    }
                }
            )
            for d, lp in zip(data, logprobs, strict=True)
        ]
        result = self.forward_backward(weighted, "cross_entropy").result()
        result.metrics.update({key: float(value) for key, value in metrics.items()})
        return Done(result)

    def optim_step(
        self, adam_params: AdamParams, grad_accumulation_normalization: GradNormalization | str | None = None
    ) -> Future[OptimStepResponse]:
        request = OptimStepRequest(
            adam_params=adam_params,
            model_id=self.model_id,
            grad_accumulation_normalization=grad_accumulation_normalization,
        )
        return self._submit(Op.OPTIM_STEP, request, OptimStepResponse)

    def save_state(self, name: str) -> Future[PathResponse]:
        return self._submit(Op.SAVE_WEIGHTS, SaveWeightsRequest(model_id=self.model_id, path=name), PathResponse)

    def load_state(self, path: str) -> Future[PathResponse]:
        """Weights only; the optimizer starts afresh."""
        return self._load(path, optimizer=False)

    def load_state_with_optimizer(self, path: str) -> Future[PathResponse]:
        return self._load(path, optimizer=True)

    def _load(self, path: str, optimizer: bool) -> Future[PathResponse]:
        request = LoadWeightsRequest(model_id=self.model_id, path=path, optimizer=optimizer)
        return self._submit(Op.LOAD_WEIGHTS, request, PathResponse)

    def save_weights_for_sampler(self, name: str) -> Future[PathResponse]:
        request = SaveWeightsForSamplerRequest(model_id=self.model_id, path=name)
        return self._submit(Op.SAVE_WEIGHTS_FOR_SAMPLER, request, PathResponse)

    def get_info(self) -> GetInfoResponse:
        request = ModelRequest(model_id=self.model_id).to_json_dict()
        return GetInfoResponse.model_validate(check(self._http.post(routes.trainer_op(Op.GET_INFO), json=request)))

    def list_checkpoints(self) -> list[str]:
        answer = check(self._http.get(routes.trainer_op(Op.LIST_CHECKPOINTS)))
        return ListCheckpointsResponse.model_validate(answer).checkpoints


class ServiceClient:
    """A session with a trainer: a job's gateway URL (`.../training/v1/rlorTrainerJobs/<account>/<job>`), or the
    server root, where create_training_client starts or reuses a job of the tinker entry for the model."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url
        self._http = session(base_url, api_key, httpx.Timeout(60.0, connect=10.0))
        request = CreateSessionRequest(tags=["shapeyard"]).to_json_dict()
        created = check(self._http.post(routes.trainer_op("create_session"), json=request))
        self.session_id = CreateSessionResponse.model_validate(created).session_id
        self._models = itertools.count()

    def create_training_client(
        self,
        base_model: str,
        lora_rank: int = 0,
        *,
        lora_alpha: float = 32,
        seed: int | None = None,
        train_attn: bool = True,
        train_mlp: bool = True,
        train_unembed: bool = True,
        base_only: bool = False,
    ) -> TrainingClient:
        """lora_rank 0 trains every weight; base_only gives a frozen reference (a LoRA trainer's adapter disabled)."""
        lora = LoraConfig(
            rank=lora_rank,
            alpha=lora_alpha,
            seed=seed,
            train_attn=train_attn,
            train_mlp=train_mlp,
            train_unembed=train_unembed,
        )
        request = CreateModelRequest(
            session_id=self.session_id,
            model_seq_id=next(self._models),
            base_model=base_model,
            base_only=base_only,
            lora_config=None if base_only else lora,
        )
        answer = check(self._http.post(routes.trainer_op(Op.CREATE_MODEL), json=request.to_json_dict()))
        future = UntypedFuture.model_validate(answer)
        created = Future(self._http, future.request_id, CreateModelResponse.model_validate).result()
        return TrainingClient(self._http, created.model_id)

    def create_lora_training_client(self, base_model: str, rank: int = 32, **kwargs: Any) -> TrainingClient:
        return self.create_training_client(base_model, lora_rank=rank, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()
