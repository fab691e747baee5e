"""Inference and hot-load on the wire: OpenAI-style completions (as the fireworks DeploymentSampler and the
`openai` client send and read them) and the hot-load API. snake_case JSON, like OpenAI's.

Completions carry, besides OpenAI's fields, what the fireworks client reads: per-token `sampling_logprob` (the
logprob under the distribution actually sampled from) and `raw_output` with the prompt and completion token ids.
A streamed completion is a sequence of the same objects (`CompletionResponse`, `ChatCompletionChunk`), each with
one choice, as server-sent events.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from shapeyard.wire.base import WireModel

# --- requests -------------------------------------------------------------------------------------------


class SamplingFields(WireModel):
    model: str
    max_tokens: int = Field(16, ge=0)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)  # 0 and -1: off
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    n: int = Field(1, ge=1, le=64)
    stream: bool = False

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def stop_ids(self) -> list[int]:
        return list(self.stop_token_ids or [])


class CompletionRequest(SamplingFields):
    """`/inference/v1/completions` and `/v1/completions`: a prompt as text or token ids."""

    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: bool | int | None = None
    echo: bool = False
    raw_output: bool = False

    def wants_logprobs(self) -> bool:
        return self.logprobs is not None and self.logprobs is not False


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    max_completion_tokens: int | None = Field(None, ge=0)


# --- responses ------------------------------------------------------------------------------------------


class TokenLogprob(WireModel):
    token: str
    token_id: int
    logprob: float  # the model's, at temperature 1 with no filtering: what a trainer's forward pass computes
    sampling_logprob: float  # under the distribution sampled from; 0 for greedy


class CompletionLogprobs(WireModel):
    content: list[TokenLogprob]
    # OpenAI's legacy completions form, for the openai client
    tokens: list[str]
    token_logprobs: list[float]


class RawOutput(WireModel):
    prompt_token_ids: list[int]
    completion_token_ids: list[int]


class CompletionChoice(WireModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None = None  # None in a stream until the choice's last chunk
    raw_output: RawOutput | None = None
    logprobs: CompletionLogprobs | None = None


class Usage(WireModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(WireModel):
    """A text completion, or one chunk of a streamed one."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None  # in a stream, on the last chunk only


class ChatTokenLogprob(TokenLogprob):
    bytes: list[int]
    top_logprobs: list[dict[str, Any]] = Field(default_factory=list)


class ChatLogprobs(WireModel):
    content: list[ChatTokenLogprob]


class ChatChoice(WireModel):
    index: int
    message: ChatMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(WireModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(WireModel):
    role: str | None = None
    content: str | None = None


class ChatChunkChoice(WireModel):
    index: int
    delta: ChatDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(WireModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]


# --- hot-load -------------------------------------------------------------------------------------------


class IncrementalSnapshotMetadata(WireModel):
    """Sent with a full-parameter `delta` snapshot. Trainers here write every snapshot in full, so its compression and
    checksum formats do not apply; the snapshot it was made against is still checked (the control plane's
    inference gateway)."""

    previous_snapshot_identity: str = Field(min_length=1)


class HotLoadRequest(WireModel):
    identity: str = Field(min_length=1)
    reset_prompt_cache: bool | None = None
    incremental_snapshot_metadata: IncrementalSnapshotMetadata | None = None


class LoadingState(BaseModel):
    stage: Literal["none", "loading", "done", "error"] = "none"
    target_snapshot_identity: str | None = None
    error: str | None = None


class LoadedAdapter(BaseModel):
    identity: str
    status: Literal["loaded"] = "loaded"


class ReplicaHotLoadStatus(BaseModel):
    replica: int
    current_snapshot_identity: str | None = None
    readiness: bool
    loading_state: LoadingState
    loaded_adapters: list[LoadedAdapter] = Field(default_factory=list)


class HotLoadStatus(BaseModel):
    replicas: list[ReplicaHotLoadStatus]


class ReplicaHotLoad(WireModel):
    """What the control plane sends a replica: the identity and where the trainer wrote it."""

    identity: str
    path: str
