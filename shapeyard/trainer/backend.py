"""The trainer backend: the model math behind the trainer protocol, as an interface with its own types.

The compute process (`shapeyard.trainer.compute`) converts wire requests into these types and results back, so
a backend never sees the wire. One base model per backend; on it live the job's models: the full model itself
(full-parameter training), LoRA adapters (one per model id, each with its own optimizer), and frozen views
(forward-only jobs, and base-only references). A backend validates every request before computing anything, and
a forward_backward that fails midway leaves the pending gradients as they were, so bad input changes nothing.

`shapeyard.trainer.single_device` runs it on one device; a sharded backend (FSDP2) is another implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol

from shapeyard.wire.shapes import TrainingRecipe


class ModelKind(StrEnum):
    FULL = "full"
    LORA = "lora"
    FROZEN = "frozen"


@dataclass(frozen=True)
class BackendConfig:
    base_model: str
    model_path: str  # a local HF directory
    device: str
    max_context_length: int
    lora_rank: int  # the job's rank: 0 for full-parameter and forward-only jobs
    max_lora_rank: int
    forward_only: bool
    recipe: TrainingRecipe  # what the shape's memory plan counts, applied here
    seed: int = 0


@dataclass(frozen=True)
class AdapterSpec:
    """A LoRA adapter to train: its rank and scale, its initialisation seed, and which layers it covers."""

    rank: int
    alpha: float = 32.0
    seed: int | None = None
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = True


@dataclass(frozen=True)
class Example:
    """One sequence: its input tokens and the loss's inputs, one value per position (`target_tokens`, `weights`,
    `logprobs`, `advantages`), as the client sent them; the backend checks them."""

    tokens: list[int]
    inputs: dict[str, list[float] | list[int]]


@dataclass(frozen=True)
class AdamStep:
    learning_rate: float
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0  # 0: no clipping


# What the accumulated gradients are divided by before a step: the loss tokens or the sequences with any loss
# since the last step; None: nothing.
Normalization = Literal["num_loss_tokens", "num_sequences"] | None


@dataclass(frozen=True)
class ForwardResult:
    logprobs: list[list[float]]  # each example's target-token logprobs, in the examples' order
    metrics: dict[str, float]


@dataclass(frozen=True)
class ModelInfo:
    kind: ModelKind
    lora_rank: int
    architecture: str  # the HF model_type


class TrainerBackend(Protocol):
    config: BackendConfig
    vocab_size: int

    def create_model(self, adapter: AdapterSpec | None, base_only: bool) -> tuple[str, ModelKind]:
        """A new model id: the full model (adapter rank 0), a new LoRA adapter, or a frozen view (`base_only`, and
        every model of a forward-only job)."""

    def info(self, model_id: str) -> ModelInfo: ...

    def unload(self, model_id: str) -> None: ...

    def forward(
        self,
        model_id: str,
        examples: list[Example],
        loss_fn: str,
        loss_fn_config: dict[str, Any] | None,
        backward: bool,
    ) -> ForwardResult:
        """The loss and its metrics; with `backward`, gradients accumulate until the next `optim_step`."""

    def optim_step(self, model_id: str, adam: AdamStep, normalization: Normalization) -> dict[str, float]: ...

    def save_state(self, model_id: str, directory: Path) -> None:
        """Trainable weights and optimizer state, so that `load_state` resumes bit for bit."""

    def load_state(self, model_id: str, directory: Path, with_optimizer: bool) -> None: ...

    def save_for_sampler(self, model_id: str, directory: Path) -> None:
        """An HF directory (full weights) or a PEFT adapter directory that plain transformers / peft load."""
