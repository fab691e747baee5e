"""The training recipe of a shape: built once from the shape and its accelerator, read by the memory plan
(`shapeyard.shapes.memory`) and applied by the trainer (`shapeyard.trainer.spmd`), so that what validation counts
is what runs.

- Precision: GPUs compute in bf16; full-parameter training keeps an fp32 master copy with fp32 gradients and AdamW
  moments (FSDP2's MixedPrecisionPolicy), or bf16 for all of them with optimizerStatePrecision BFLOAT16. Frozen
  weights (a LoRA job's base, forward-only models) stay in bf16; LoRA adapters train in fp32. CPUs run fp32 only.
- Activation checkpointing as the shape says; activation offloading only where there is a device to offload from.
- One maxSupportedContextLength sequence per forward pass, and the loss's logits LOSS_CHUNK_TOKENS at a time.

Two parts of a recipe the plan counts as the shape states them but today's trainer cannot apply: frozen weights
below bf16 (fp8, nf4, ...) and tensor, context, expert or pipeline parallelism. `pending` names them; a job on such
a shape is refused at launch with that message rather than run in a layout its plan never counted.
"""

from __future__ import annotations

from shapeyard.wire.shapes import (
    AcceleratorSpec,
    DeviceKind,
    OptimizerPrecision,
    Precision,
    ShardingScheme,
    TrainingRecipe,
    TrainingShapeSnapshot,
    WeightPrecision,
)

LOSS_CHUNK_TOKENS = 4096
_BELOW_BF16 = frozenset({WeightPrecision.FP8, WeightPrecision.FP4_FP8, WeightPrecision.INT8, WeightPrecision.NF4})


def training_recipe(
    accelerator: AcceleratorSpec,
    max_context_length: int,
    *,
    activation_checkpointing: bool = False,
    activation_offloading: bool = False,
    optimizer_state_precision: OptimizerPrecision = OptimizerPrecision.FLOAT32,
    base_model_weight_precision: WeightPrecision = WeightPrecision.WEIGHT_PRECISION_UNSPECIFIED,
    sharding: ShardingScheme | None = None,
) -> TrainingRecipe:
    on_gpu = accelerator.kind == DeviceKind.CUDA
    half = Precision.BFLOAT16 if on_gpu else Precision.FLOAT32
    bf16_state = optimizer_state_precision == OptimizerPrecision.BFLOAT16
    return TrainingRecipe(
        compute_precision=half,
        trainable_precision=half if bf16_state else Precision.FLOAT32,
        frozen_precision=half,
        activation_checkpointing=activation_checkpointing,
        activation_offloading=on_gpu and activation_offloading,
        micro_batch_tokens=max_context_length,
        loss_chunk_tokens=LOSS_CHUNK_TOKENS,
        frozen_weight_format=base_model_weight_precision if base_model_weight_precision in _BELOW_BF16 else None,
        sharding=sharding or ShardingScheme(),
    )


def pending(recipe: TrainingRecipe) -> list[str]:
    """What the recipe asks for that this trainer does not do yet."""
    missing = []
    if recipe.frozen_weight_format is not None:
        missing.append(f"{recipe.frozen_weight_format.value} frozen base weights")
    scheme = recipe.sharding
    for name, degree in (
        ("tensorParallelism", scheme.tensor_parallelism),
        ("contextParallelism", scheme.context_parallelism),
        ("expertParallelism", scheme.expert_parallelism),
        ("pipelineParallelism", scheme.pipeline_parallelism),
    ):
        if degree > 1:
            missing.append(f"{name} {degree}")
    return missing


def shape_recipe(shape: TrainingShapeSnapshot, accelerator: AcceleratorSpec) -> TrainingRecipe:
    return training_recipe(
        accelerator,
        shape.max_supported_context_length,
        activation_checkpointing=shape.activation_checkpointing,
        activation_offloading=shape.activation_offloading,
        optimizer_state_precision=shape.optimizer_state_precision,
        base_model_weight_precision=shape.base_model_weight_precision,
        sharding=shape.trainer_sharding_scheme,
    )
