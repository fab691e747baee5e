"""Inference and hot-load on the wire: OpenAI-style completions (as the fireworks DeploymentSampler and the
`openai` client send them) and the hot-load API. snake_case JSON, like OpenAI's."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

HOT_LOAD_PATH = "/hot_load/v1/models/hot_load"
DEPLOYMENT_HEADER = "fireworks-deployment"  # the hot-load API names its target in a header


class WireRequest(BaseModel):
    # The official clients add options we have no use for (prompt_cache_key, perf_metrics_in_response, ...).
    model_config = ConfigDict(extra="ignore")


class SamplingFields(WireRequest):
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


class CompletionRequest(SamplingFields):
    """`/inference/v1/completions` and `/v1/completions`: a prompt as text or token ids."""

    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: bool | int | None = None
    echo: bool = False
    raw_output: bool = False


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    max_completion_tokens: int | None = Field(None, ge=0)


class IncrementalSnapshotMetadata(WireRequest):
    """Sent with a full-parameter `delta` snapshot. Trainers here write every snapshot in full, so its compression and
    checksum formats do not apply; the snapshot it was made against is still checked (`shapeyard.control.inference`)."""

    previous_snapshot_identity: str = Field(min_length=1)


class HotLoadRequest(WireRequest):
    identity: str = Field(min_length=1)
    reset_prompt_cache: bool | None = None
    incremental_snapshot_metadata: IncrementalSnapshotMetadata | None = None


class LoadingState(BaseModel):
    stage: Literal["none", "loading", "done", "error"] = "none"
    target_snapshot_identity: str | None = None
    error: str | None = None


class ReplicaHotLoadStatus(BaseModel):
    replica: int
    current_snapshot_identity: str | None = None
    readiness: bool
    loading_state: LoadingState
    loaded_adapters: list[dict[str, str]] = Field(default_factory=list)


class HotLoadStatus(BaseModel):
    replicas: list[ReplicaHotLoadStatus]


class WorkerHotLoad(WireRequest):
    """What the control plane sends a replica: the identity and where the trainer wrote it."""

    identity: str
    path: str
