"""ServiceClient and TrainingClient: the trainer protocol from Python, over the same wire schema as the server.

    service = ServiceClient(base_url, api_key)          # a job's gateway URL, or the server root (serverless)
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
from typing import Any

import httpx

from shapeyard.client.futures import Done, Future, check
from shapeyard.wire.trainer import (
    AdamParams,
    CreateModelResponse,
    Datum,
    ForwardBackwardOutput,
    GetInfoResponse,
    GradNormalization,
    LoraConfig,
    OptimStepResponse,
    PathResponse,
    TensorData,
)

# Custom losses: (data, per-datum target logprobs with requires_grad) -> (scalar loss, metrics).
CustomLoss = Callable[[list[Datum], list[Any]], tuple[Any, dict[str, float]]]


def _http(base_url: str, api_key: str) -> httpx.Client:
    return httpx.Client(
        base_url=base_url.rstrip("/"), headers={"X-Api-Key": api_key}, timeout=httpx.Timeout(60.0, connect=10.0)
    )


class TrainingClient:
    def __init__(self, http: httpx.Client, model_id: str) -> None:
        self._http, self.model_id = http, model_id
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def _submit(self, route: str, body: dict[str, Any], parse: Callable[[dict[str, Any]], Any]) -> Future:
        with self._lock:  # seq_ids in submission order
            payload = {**body, "model_id": self.model_id, "seq_id": next(self._seq)}
            request_id = check(self._http.post(f"/api/v1/{route}", json=payload))["request_id"]
        return Future(self._http, request_id, parse)

    @staticmethod
    def _batch(data: Sequence[Datum], loss_fn: str, loss_fn_config: dict[str, Any] | None) -> dict[str, Any]:
        batch = {"data": [d.to_json_dict() for d in data], "loss_fn": loss_fn}
        return batch if loss_fn_config is None else {**batch, "loss_fn_config": loss_fn_config}

    def forward(
        self, data: Sequence[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict[str, Any] | None = None
    ) -> Future[ForwardBackwardOutput]:
        body = {"forward_input": self._batch(data, loss_fn, loss_fn_config)}
        return self._submit("forward", body, ForwardBackwardOutput.model_validate)

    def forward_backward(
        self, data: Sequence[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict[str, Any] | None = None
    ) -> Future[ForwardBackwardOutput]:
        body = {"forward_backward_input": self._batch(data, loss_fn, loss_fn_config)}
        return self._submit("forward_backward", body, ForwardBackwardOutput.model_validate)

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
        body: dict[str, Any] = {"adam_params": adam_params.to_json_dict(), "type": "optim_step"}
        if grad_accumulation_normalization is not None:
            body["grad_accumulation_normalization"] = GradNormalization(grad_accumulation_normalization).value
        return self._submit("optim_step", body, OptimStepResponse.model_validate)

    def save_state(self, name: str) -> Future[PathResponse]:
        return self._submit("save_weights", {"path": name}, PathResponse.model_validate)

    def load_state(self, path: str) -> Future[PathResponse]:
        """Weights only; the optimizer starts afresh."""
        return self._submit("load_weights", {"path": path, "optimizer": False}, PathResponse.model_validate)

    def load_state_with_optimizer(self, path: str) -> Future[PathResponse]:
        return self._submit("load_weights", {"path": path, "optimizer": True}, PathResponse.model_validate)

    def save_weights_for_sampler(self, name: str) -> Future[PathResponse]:
        return self._submit("save_weights_for_sampler", {"path": name}, PathResponse.model_validate)

    def get_info(self) -> GetInfoResponse:
        return GetInfoResponse.model_validate(
            check(self._http.post("/api/v1/get_info", json={"model_id": self.model_id}))
        )

    def list_checkpoints(self) -> list[str]:
        return check(self._http.get("/api/v1/list_checkpoints"))["checkpoints"]


class ServiceClient:
    """A session with a trainer: a job's gateway URL (`.../training/v1/rlorTrainerJobs/<account>/<job>`), or the
    server root, where create_training_client starts or reuses a serverless job for the model."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url
        self._http = _http(base_url, api_key)
        self.session_id = check(self._http.post("/api/v1/create_session", json={"tags": ["shapeyard"]}))["session_id"]
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
        body: dict[str, Any] = {
            "session_id": self.session_id,
            "model_seq_id": next(self._models),
            "base_model": base_model,
            "type": "create_model",
        }
        if base_only:
            body["base_only"] = True
        else:
            body["lora_config"] = LoraConfig(
                rank=lora_rank,
                alpha=lora_alpha,
                seed=seed,
                train_attn=train_attn,
                train_mlp=train_mlp,
                train_unembed=train_unembed,
            ).to_json_dict()
        request_id = check(self._http.post("/api/v1/create_model", json=body))["request_id"]
        created = Future(self._http, request_id, CreateModelResponse.model_validate).result()
        return TrainingClient(self._http, created.model_id)

    def create_lora_training_client(self, base_model: str, rank: int = 32, **kwargs: Any) -> TrainingClient:
        return self.create_training_client(base_model, lora_rank=rank, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()
