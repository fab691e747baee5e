"""Shape, model and accelerator types, and the validation report of a shape version.

These are at once the catalog file format, the database payload and the control-plane wire format (camelCase),
so a reviewer reading `shapeyard/catalog/*.yaml` sees exactly what the API returns. `shapeyard.shapes` computes the
plans and reports; this module only says what they hold.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from shapeyard.wire.base import CamelModel


class TrainerMode(StrEnum):
    POLICY_TRAINER = "POLICY_TRAINER"
    LORA_TRAINER = "LORA_TRAINER"
    FORWARD_ONLY = "FORWARD_ONLY"


class WeightPrecision(StrEnum):
    """Precision of the frozen base weights. UNSPECIFIED means the device default (bf16 on GPU, fp32 on CPU)."""

    WEIGHT_PRECISION_UNSPECIFIED = "WEIGHT_PRECISION_UNSPECIFIED"
    BFLOAT16 = "BFLOAT16"
    FP8 = "FP8"
    FP4_FP8 = "FP4_FP8"
    INT8 = "INT8"
    NF4 = "NF4"


class OptimizerPrecision(StrEnum):
    FLOAT32 = "FLOAT32"
    BFLOAT16 = "BFLOAT16"


class DeviceKind(StrEnum):
    CUDA = "cuda"
    CPU = "cpu"


class AcceleratorSpec(CamelModel):
    accelerator_type: str
    kind: DeviceKind
    memory_gib: float
    peak_bf16_tflops: float = 0.0
    display_name: str = ""


class WeightsSource(CamelModel):
    """Where real weights come from. Exactly one of the three is set."""

    hf_repo: str | None = None
    local_dir: str | None = None
    embedded: str | None = None  # a model built locally from files in this package

    @model_validator(mode="after")
    def _exactly_one(self) -> WeightsSource:
        if sum(x is not None for x in (self.hf_repo, self.local_dir, self.embedded)) != 1:
            raise ValueError("weights: set exactly one of hfRepo, localDir, embedded")
        return self


class ModelSpec(CamelModel):
    """A base model and the architecture facts needed to size training without downloading anything."""

    name: str
    display_name: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_experts: int = 0
    num_experts_per_token: int = 0
    moe_intermediate_size: int = 0
    parameter_count: int
    active_parameter_count: int | None = None
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    weights: WeightsSource
    facts_source: str

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def active_parameters(self) -> int:
        return self.active_parameter_count or self.parameter_count


class ShardingScheme(CamelModel):
    tensor_parallelism: int = Field(1, ge=1)
    pipeline_parallelism: int = Field(1, ge=1)
    context_parallelism: int = Field(1, ge=1)
    expert_parallelism: int = Field(1, ge=1)
    sequence_parallel: bool = False


class TrainingShapeSnapshot(CamelModel):
    """The immutable content of one training-shape version."""

    base_model: str
    trainer_mode: TrainerMode
    accelerator_type: str
    accelerator_count: int = Field(ge=1)
    node_count: int = Field(1, ge=1)
    max_supported_context_length: int = Field(ge=1)
    trainer_image_tag: str
    deployment_shape_version: str
    deployment_image_tag: str = ""
    base_model_weight_precision: WeightPrecision = WeightPrecision.WEIGHT_PRECISION_UNSPECIFIED
    trainer_sharding_scheme: ShardingScheme = Field(default_factory=ShardingScheme)
    # shapeyard extensions: the training recipe the memory plan assumes and the trainer applies.
    optimizer_state_precision: OptimizerPrecision = OptimizerPrecision.FLOAT32
    activation_checkpointing: bool = True
    activation_offloading: bool = False  # checkpointed activations live in host memory (save_on_cpu)
    max_lora_rank: int = Field(0, ge=0)  # the largest adapter rank the shape is validated for (LoRA shapes)
    display_name: str = ""
    description: str = ""

    @model_validator(mode="after")
    def _lora_rank_matches_mode(self) -> TrainingShapeSnapshot:
        if self.trainer_mode == TrainerMode.LORA_TRAINER and self.max_lora_rank <= 0:
            raise ValueError("maxLoraRank must be > 0 for a LORA_TRAINER shape")
        if self.trainer_mode != TrainerMode.LORA_TRAINER and self.max_lora_rank != 0:
            raise ValueError(f"maxLoraRank must be 0 for a {self.trainer_mode} shape")
        return self

    @field_validator("trainer_image_tag", "deployment_shape_version", "base_model", "accelerator_type")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    @property
    def total_accelerators(self) -> int:
        return self.accelerator_count * self.node_count


class Precision(StrEnum):
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"


class TrainingRecipe(CamelModel):
    """How the trainer fits one replica of a shape in memory, built once from the shape and its accelerator
    (`shapeyard.shapes.recipe`). The memory plan counts exactly this and the trainer applies exactly this."""

    compute_precision: Precision  # activations and gathered weights: bf16 on GPUs, fp32 on CPU
    trainable_precision: Precision  # trained weights, their gradients and AdamW moments (the master copy)
    frozen_precision: Precision  # weights that never train: a LoRA job's base, forward-only models
    frozen_weight_format: WeightPrecision | None = None  # below bf16 (fp8, nf4, ...) as the shape asks; None: none
    sharding: ShardingScheme = Field(default_factory=ShardingScheme)  # parallelism beyond FSDP
    activation_checkpointing: bool  # keep each block's input, recompute the block in the backward pass
    activation_offloading: bool  # those kept inputs wait in host memory (GPUs only: on CPU they are there)
    micro_batch_tokens: int  # padded tokens per forward pass: one maxSupportedContextLength sequence
    loss_chunk_tokens: int  # tokens whose logits exist at once; the full [tokens, vocab] never does


class DeploymentShapeSnapshot(CamelModel):
    """The immutable content of one deployment-shape version (a serving configuration)."""

    base_model: str
    accelerator_type: str
    accelerator_count: int = Field(ge=1)
    precision: WeightPrecision = WeightPrecision.WEIGHT_PRECISION_UNSPECIFIED
    max_context_length: int = Field(ge=1)
    display_name: str = ""
    description: str = ""


# --- validation ------------------------------------------------------------------------------------------


class MemoryPlan(CamelModel):
    """Per-device memory, in GiB, of one trainer replica at its largest step (`shapeyard.shapes.memory`)."""

    trainer_mode: TrainerMode
    accelerator_type: str
    world_size: int
    tokens_per_device: int
    trainable_parameters: int
    weights_gib: float
    gradients_gib: float
    optimizer_state_gib: float
    gathered_layers_gib: float
    activations_gib: float
    loss_gib: float
    runtime_overhead_gib: float
    total_gib: float
    device_memory_gib: float
    usable_memory_gib: float
    fits: bool
    problems: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        verdict = "fits" if self.fits else "does not fit"
        text = (
            f"{verdict}: {self.total_gib:.1f} GiB per device of {self.usable_memory_gib:.1f} GiB usable "
            f"on {self.accelerator_type} ({self.world_size} devices)"
        )
        return "; ".join([text, *self.problems])


class ServingPlan(CamelModel):
    """Per-device memory of one deployment replica: weights must leave a quarter of the device to the KV cache."""

    accelerator_type: str
    accelerator_count: int
    weights_gib: float
    runtime_overhead_gib: float
    kv_cache_budget_gib: float
    device_memory_gib: float
    fits: bool

    def summary(self) -> str:
        verdict = "fits" if self.fits else "does not fit"
        return (
            f"{verdict}: {self.weights_gib:.1f} GiB of weights per device, {self.kv_cache_budget_gib:.1f} GiB "
            f"left for the KV cache on {self.accelerator_type} x{self.accelerator_count}"
        )


class SmokeResult(CamelModel):
    """A real step on real hardware: load, one forward_backward at full context, one optim_step."""

    device: str
    peak_memory_gib: float
    step_seconds: float
    tokens: int
    passed: bool
    detail: str = ""


class ValidationReport(CamelModel):
    passed: bool
    summary: str
    problems: list[str] = Field(default_factory=list)
    pending: list[str] = Field(default_factory=list)  # what the plan counts that today's trainer does not apply
    memory_plan: MemoryPlan | None = None
    serving_plan: ServingPlan | None = None
    smoke: SmokeResult | None = None
    validate_time: datetime = Field(default_factory=lambda: datetime.now(UTC))
