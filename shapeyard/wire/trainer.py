"""Trainer-protocol wire schema (snake_case JSON), the Tinker 0.23 contract the official clients speak.

Shared by the trainer worker, the control plane's gateways and `shapeyard.client`. Requests ignore fields they do
not know (clients add optional keys over versions); responses carry every field the clients require. `Op` lists
the operations, with the request each takes and how a worker answers it.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, field_validator

from shapeyard.wire.base import WireModel
from shapeyard.wire.errors import InvalidArgument

# --- data ------------------------------------------------------------------------------------------------


class TensorData(WireModel):
    data: list[float] | list[int]
    dtype: Literal["int64", "float32"]
    shape: list[int] | None = None
    sparse_crow_indices: list[int] | None = None
    sparse_col_indices: list[int] | None = None

    @classmethod
    def from_list(cls, values: list[float] | list[int], dtype: Literal["int64", "float32"]) -> TensorData:
        return cls(data=values, dtype=dtype, shape=[len(values)])

    def to_list(self) -> list[float]:
        """Dense, flat values. CSR-sparse tensors (as the SDK sends 2-D inputs) are expanded."""
        if self.sparse_crow_indices is None:
            return list(self.data)
        if not self.shape or len(self.shape) != 2 or self.sparse_col_indices is None:
            raise InvalidArgument("a sparse TensorData needs a 2-D shape and sparse_col_indices")
        rows, cols = self.shape
        dense = [0.0] * (rows * cols)
        for row in range(rows):
            for index in range(self.sparse_crow_indices[row], self.sparse_crow_indices[row + 1]):
                dense[row * cols + self.sparse_col_indices[index]] = self.data[index]
        return dense


class EncodedTextChunk(WireModel):
    type: Literal["encoded_text"] = "encoded_text"
    tokens: list[int]


class ImageChunk(WireModel):
    type: Literal["image", "image_asset_pointer", "dmel"]


class ModelInput(WireModel):
    chunks: list[EncodedTextChunk | ImageChunk]

    @classmethod
    def from_ints(cls, tokens: list[int]) -> ModelInput:
        return cls(chunks=[EncodedTextChunk(tokens=tokens)])

    def to_ints(self) -> list[int]:
        tokens: list[int] = []
        for chunk in self.chunks:
            if not isinstance(chunk, EncodedTextChunk):
                raise InvalidArgument(f"{chunk.type} chunks are not supported: this trainer takes encoded_text only")
            tokens += chunk.tokens
        return tokens

    @property
    def length(self) -> int:
        return len(self.to_ints())


# Plain lists given for these keys become int64 tensors; every other key becomes float32 (as in the official SDKs).
INT_KEYS = frozenset({"target_tokens"})


class Datum(WireModel):
    model_input: ModelInput
    loss_fn_inputs: dict[str, TensorData] = Field(default_factory=dict)

    @field_validator("loss_fn_inputs", mode="before")
    @classmethod
    def _coerce(cls, inputs: Any) -> Any:
        if not isinstance(inputs, dict):
            return inputs
        coerced = {}
        for key, value in inputs.items():
            if hasattr(value, "tolist") and not isinstance(value, TensorData):  # a torch tensor or numpy array
                value = value.tolist()
            if isinstance(value, list):
                flat = [float(v) if key not in INT_KEYS else int(v) for v in value]
                value = TensorData.from_list(flat, "int64" if key in INT_KEYS else "float32")
            coerced[key] = value
        return coerced


class ForwardBackwardInput(WireModel):
    data: list[Datum]
    loss_fn: str
    loss_fn_config: dict[str, Any] | None = None


class ForwardBackwardOutput(WireModel):
    loss_fn_output_type: str = "ArrayRecord"
    loss_fn_outputs: list[dict[str, TensorData]]
    metrics: dict[str, float]


# --- requests --------------------------------------------------------------------------------------------


class LoraConfig(WireModel):
    rank: int
    alpha: float | None = None
    seed: int | None = None
    init_method: str | None = None
    train_unembed: bool = True
    train_mlp: bool = True
    train_attn: bool = True


class CreateSessionRequest(WireModel):
    tags: list[str] = Field(default_factory=list)
    user_metadata: dict[str, Any] | None = None
    sdk_version: str = ""


class SessionHeartbeatRequest(WireModel):
    session_id: str


class CreateModelRequest(WireModel):
    session_id: str
    model_seq_id: int = 0
    base_model: str
    lora_config: LoraConfig | None = None
    base_only: bool = False
    user_metadata: dict[str, Any] | None = None


class ModelRequest(WireModel):
    model_id: str


class ForwardRequest(WireModel):
    forward_input: ForwardBackwardInput
    model_id: str
    seq_id: int | None = None


class ForwardBackwardRequest(WireModel):
    forward_backward_input: ForwardBackwardInput
    model_id: str
    seq_id: int | None = None


class AdamParams(WireModel):
    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0

    @field_validator("learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError("must be a finite, non-negative number")
        return value


class GradNormalization(StrEnum):
    NUM_LOSS_TOKENS = "num_loss_tokens"
    NUM_SEQUENCES = "num_sequences"
    NONE = "none"


class OptimStepRequest(WireModel):
    adam_params: AdamParams
    model_id: str
    seq_id: int | None = None
    grad_accumulation_normalization: GradNormalization | None = None


class SaveWeightsRequest(WireModel):
    model_id: str
    path: str | None = None
    seq_id: int | None = None


class SaveWeightsForSamplerRequest(WireModel):
    model_id: str
    path: str | None = None
    seq_id: int | None = None
    sampling_session_seq_id: int | None = None
    # Every snapshot is written in full, so a full-parameter `delta` is as self-contained as its `base`, and a LoRA
    # `merged_base` is served like its adapter.
    checkpoint_type: Literal["base", "delta", "merged_base"] | None = None


class LoadWeightsRequest(WireModel):
    model_id: str
    path: str
    optimizer: bool = False
    seq_id: int | None = None


class GetSamplerRequest(WireModel):
    sampler_id: str


class NoBody(WireModel):
    """The request of an operation that takes no arguments."""


class WeightsInfoRequest(WireModel):
    tinker_path: str


# How long a retrieve_future waits for its result before answering try_again (the SDKs give up after 45 s).
LONG_POLL_SECONDS = 25.0


class RetrieveFutureRequest(WireModel):
    request_id: str
    allow_metadata_only: bool = False


# --- responses -------------------------------------------------------------------------------------------


class ClientConfig(WireModel):
    """What the tinker client reads before its first call. JSON everywhere: the official clients then never switch
    to protobuf, JWT or RDMA paths."""

    pjwt_auth_enabled: bool = False
    proto_write_fwdbwd: bool = False
    proto_compress_fwdbwd: bool = False
    parallel_fwdbwd_chunks: bool = True
    credential_default_source: str = "api_key"


class SessionHeartbeatResponse(WireModel):
    type: Literal["session_heartbeat"] = "session_heartbeat"


class Accepted(WireModel):
    status: Literal["accepted"] = "accepted"


class UntypedFuture(WireModel):
    request_id: str
    model_id: str | None = None


class TryAgain(WireModel):
    type: Literal["try_again"] = "try_again"
    request_id: str
    queue_state: Literal["active", "paused_capacity", "paused_rate_limit"] = "active"


class ErrorCategory(StrEnum):
    USER = "user"
    SERVER = "server"
    UNKNOWN = "unknown"


class RequestFailed(WireModel):
    error: str
    category: ErrorCategory


class CreateSessionResponse(WireModel):
    type: Literal["create_session"] = "create_session"
    session_id: str
    info_message: str | None = None


class CreateModelResponse(WireModel):
    type: Literal["create_model"] = "create_model"
    model_id: str
    comms: str = "v1"


class ModelData(WireModel):
    arch: str | None = None
    model_name: str | None = None
    tokenizer_id: str | None = None


class GetInfoResponse(WireModel):
    type: Literal["get_info"] = "get_info"
    model_id: str
    model_data: ModelData
    is_lora: bool | None = None
    lora_rank: int | None = None
    model_name: str | None = None


class OptimStepResponse(WireModel):
    metrics: dict[str, float] = Field(default_factory=dict)


class PathResponse(WireModel):
    path: str


class SaveWeightsForSamplerResponse(WireModel):
    path: str | None = None
    sampling_session_id: str | None = None


class WeightsInfoResponse(WireModel):
    base_model: str
    is_lora: bool
    lora_rank: int


class UnloadModelResponse(WireModel):
    type: Literal["unload_model"] = "unload_model"
    model_id: str


class SupportedModel(WireModel):
    model_name: str
    max_context_length: int


class ServerCapabilities(WireModel):
    supported_models: list[SupportedModel]


class ListCheckpointsResponse(WireModel):
    checkpoints: list[str]


# --- sampling (the tinker client's SamplingClient) -------------------------------------------------------


class CreateSamplingSessionRequest(WireModel):
    session_id: str
    sampling_session_seq_id: int = 0
    base_model: str | None = None
    model_path: str | None = None  # tinker://<job>/sampler_weights/<name>; None: the base model


class CreateSamplingSessionResponse(WireModel):
    type: Literal["create_sampling_session"] = "create_sampling_session"
    sampling_session_id: str


class SamplingParams(WireModel):
    max_tokens: int | None = Field(None, ge=0)
    seed: int | None = None
    stop: str | list[str] | list[int] | None = None  # strings, or token ids
    temperature: float = Field(1.0, ge=0.0)
    top_k: int = Field(-1, ge=-1)  # -1: off
    top_p: float = Field(1.0, gt=0.0, le=1.0)

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop or [] if isinstance(s, str)]

    def stop_ids(self) -> list[int]:
        return [] if isinstance(self.stop, str) else [s for s in self.stop or [] if isinstance(s, int)]


class SampleRequest(WireModel):
    sampling_session_id: str | None = None
    seq_id: int | None = None
    base_model: str | None = None
    model_path: str | None = None
    num_samples: int = Field(1, ge=1, le=64)
    prompt: ModelInput
    sampling_params: SamplingParams
    prompt_logprobs: bool | None = None
    topk_prompt_logprobs: int = 0


class SampledSequence(WireModel):
    tokens: list[int]
    logprobs: list[float] | None = None
    stop_reason: Literal["length", "stop"]


class SampleResponse(WireModel):
    type: Literal["sample"] = "sample"
    sequences: list[SampledSequence]
    prompt_logprobs: list[float | None] | None = None  # [null, ...]: the first token has none


class GetSamplerResponse(WireModel):
    sampler_id: str
    base_model: str
    model_path: str | None = None


# --- operations ------------------------------------------------------------------------------------------


class Op(StrEnum):
    """The trainer protocol's operations on a job's models, each at `/api/v1/<op>`."""

    CREATE_MODEL = "create_model"
    GET_INFO = "get_info"
    UNLOAD_MODEL = "unload_model"
    FORWARD = "forward"
    FORWARD_BACKWARD = "forward_backward"
    OPTIM_STEP = "optim_step"
    SAVE_WEIGHTS = "save_weights"
    LOAD_WEIGHTS = "load_weights"
    SAVE_WEIGHTS_FOR_SAMPLER = "save_weights_for_sampler"
    LIST_CHECKPOINTS = "list_checkpoints"
    CREATE_SAMPLING_SESSION = "create_sampling_session"
    GET_SAMPLER = "get_sampler"
    ASAMPLE = "asample"


REQUESTS: dict[Op, type[WireModel]] = {
    Op.CREATE_MODEL: CreateModelRequest,
    Op.GET_INFO: ModelRequest,
    Op.UNLOAD_MODEL: ModelRequest,
    Op.FORWARD: ForwardRequest,
    Op.FORWARD_BACKWARD: ForwardBackwardRequest,
    Op.OPTIM_STEP: OptimStepRequest,
    Op.SAVE_WEIGHTS: SaveWeightsRequest,
    Op.LOAD_WEIGHTS: LoadWeightsRequest,
    Op.SAVE_WEIGHTS_FOR_SAMPLER: SaveWeightsForSamplerRequest,
    Op.LIST_CHECKPOINTS: NoBody,
    Op.CREATE_SAMPLING_SESSION: CreateSamplingSessionRequest,
    Op.GET_SAMPLER: GetSamplerRequest,
    Op.ASAMPLE: SampleRequest,
}
# Acknowledged at once with a future (`UntypedFuture`) and run in order; the others answer in their HTTP request.
FUTURE_OPS = frozenset(
    {
        Op.CREATE_MODEL,
        Op.UNLOAD_MODEL,
        Op.FORWARD,
        Op.FORWARD_BACKWARD,
        Op.OPTIM_STEP,
        Op.SAVE_WEIGHTS,
        Op.LOAD_WEIGHTS,
        Op.SAVE_WEIGHTS_FOR_SAMPLER,
        Op.ASAMPLE,
    }
)
# Sent with a `model_id`; the tinker entry routes them to the job its model ids name.
MODEL_OPS = (FUTURE_OPS - {Op.CREATE_MODEL, Op.ASAMPLE}) | {Op.GET_INFO}
