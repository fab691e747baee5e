"""The memory plan: does a training shape fit its hardware?

A per-device estimate of what one trainer replica holds at its largest step: one sequence of
maxSupportedContextLength tokens. The plan counts the shape's recipe (`shapeyard.shapes.recipe`), the same object
the trainer applies:

- Persistent state (weights, gradients, optimizer moments) is fully sharded over every accelerator of the
  replica (FSDP2 across `acceleratorCount x nodeCount`).
- Full-parameter training keeps master weights, gradients and Adam moments in the recipe's trainable precision:
  fp32 (16 bytes per parameter), or bf16 (8 bytes) when the shape sets optimizerStatePrecision BFLOAT16.
- LoRA keeps the base frozen in the recipe's frozen precision and trains fp32 adapters on every attention and MLP
  projection (expert MLPs included) at the shape's maxLoraRank.
- Forward-only holds frozen weights and one layer's activations; no gradients, no optimizer.
- Activations, in the compute precision: context parallelism splits the sequence; tensor parallelism splits the
  projections; activation checkpointing keeps one hidden state per layer and recomputes one layer at a time;
  with activation offloading (GPUs) those saved hidden states wait in host memory and only two layers' worth sit
  on the device at a time. Attention is torch's fused kernel on GPUs and CPUs (no [tokens, tokens] scores held).
- Loss: fp32 logits exist for the recipe's loss chunk of tokens at a time, with their gradient (and, on CPU,
  the log-softmax beside them).
- Each device keeps 8 % of its memory free for allocator fragmentation, plus a fixed runtime overhead
  (CUDA context and communication buffers on GPUs; on CPU the rank's Python with torch, transformers and peft
  imported, measured at 0.35-0.40 GiB resident).

Frozen weights below bf16 and the sharding scheme's tensor, context, expert and pipeline parallelism are counted as
the shape states them, though today's trainer does not apply them: `shapeyard.shapes.recipe.pending` names them,
validation reports them, and a job on such a shape is refused at launch.
"""

from __future__ import annotations

import math

from shapeyard.shapes.recipe import shape_recipe
from shapeyard.wire.shapes import (
    AcceleratorSpec,
    DeviceKind,
    MemoryPlan,
    ModelSpec,
    Precision,
    ServingPlan,
    TrainerMode,
    TrainingShapeSnapshot,
    WeightPrecision,
)

GIB = 1024**3
HEADROOM_FRACTION = 0.08
RUNTIME_OVERHEAD_GIB = {DeviceKind.CUDA: 4.0, DeviceKind.CPU: 0.4}
_BYTES = {Precision.FLOAT32: 4.0, Precision.BFLOAT16: 2.0}
_WEIGHT_BYTES = {
    WeightPrecision.BFLOAT16: 2.0,
    WeightPrecision.FP8: 1.0,
    WeightPrecision.FP4_FP8: 0.5625,  # fp4 experts with fp8 scales and dense parts
    WeightPrecision.INT8: 1.0,
    WeightPrecision.NF4: 0.5625,  # 4-bit values plus block scales
}


def _round(value: float) -> float:
    return round(value, 3)


def lora_parameters(model: ModelSpec, rank: int) -> int:
    """Adapter parameters for rank-r LoRA on q, k, v, o and the MLP projections (every expert's, for MoE)."""
    h = model.hidden_size
    q_width = model.num_attention_heads * model.head_dim
    kv_width = model.num_key_value_heads * model.head_dim
    attention = rank * ((h + q_width) + 2 * (h + kv_width) + (q_width + h))
    if model.is_moe:
        mlp = model.num_experts * 3 * rank * (h + model.moe_intermediate_size)
    else:
        mlp = 3 * rank * (h + model.intermediate_size)
    return model.num_layers * (attention + mlp)


def plan_memory(model: ModelSpec, shape: TrainingShapeSnapshot, accelerator: AcceleratorSpec) -> MemoryPlan:
    scheme = shape.trainer_sharding_scheme
    tp, pp, cp, ep = (
        scheme.tensor_parallelism,
        scheme.pipeline_parallelism,
        scheme.context_parallelism,
        scheme.expert_parallelism,
    )
    world = shape.total_accelerators
    problems: list[str] = []
    if world % (tp * pp * cp):
        problems.append(
            f"tensor x pipeline x context parallelism ({tp}x{pp}x{cp}) must divide the {world} accelerators"
        )
    if ep > 1 and not model.is_moe:
        problems.append(f"expertParallelism {ep} needs a mixture-of-experts model; {model.name} is dense")
    if ep > world:
        problems.append(f"expertParallelism {ep} exceeds the {world} accelerators")
    if shape.max_supported_context_length > model.max_position_embeddings:
        problems.append(
            f"maxSupportedContextLength {shape.max_supported_context_length} exceeds the model's "
            f"{model.max_position_embeddings} positions"
        )

    on_cpu = accelerator.kind == DeviceKind.CPU
    recipe = shape_recipe(shape, accelerator)
    compute_bytes = _BYTES[recipe.compute_precision]
    frozen_bytes = (
        _WEIGHT_BYTES[recipe.frozen_weight_format] if recipe.frozen_weight_format else _BYTES[recipe.frozen_precision]
    )
    state_bytes = _BYTES[recipe.trainable_precision]
    params = model.parameter_count
    mode = shape.trainer_mode

    # Persistent, fully sharded state.
    if mode == TrainerMode.POLICY_TRAINER:
        trainable = params
        weights = params * state_bytes
        gradients = params * state_bytes
        optimizer = params * 2 * state_bytes
        layer_bytes = compute_bytes
    elif mode == TrainerMode.LORA_TRAINER:
        trainable = lora_parameters(model, shape.max_lora_rank)
        weights = params * frozen_bytes + trainable * 4.0
        gradients = trainable * 4.0
        optimizer = trainable * 8.0
        layer_bytes = frozen_bytes
    else:
        trainable = 0
        weights = params * frozen_bytes
        gradients = optimizer = 0.0
        layer_bytes = frozen_bytes
    weights, gradients, optimizer = weights / world, gradients / world, optimizer / world

    # FSDP all-gathers the current and the prefetched layer; experts stay split over expert-parallel ranks.
    embedding = model.vocab_size * model.hidden_size * (1 if model.tie_word_embeddings else 2)
    per_layer = max(params - embedding, 0) / model.num_layers
    experts = model.num_experts * 3 * model.hidden_size * model.moe_intermediate_size if model.is_moe else 0
    experts = min(experts, per_layer)
    gathered = 2 * ((per_layer - experts) + experts / ep) * layer_bytes / tp

    # Activations of one full-length sequence.
    tokens = math.ceil(recipe.micro_batch_tokens / cp)
    h = model.hidden_size
    q_width = model.num_attention_heads * model.head_dim
    kv_width = model.num_key_value_heads * model.head_dim
    mlp_width = model.num_experts_per_token * model.moe_intermediate_size if model.is_moe else model.intermediate_size
    attention = tokens * (2 * q_width + 2 * kv_width + 2 * h) * compute_bytes / tp
    mlp = tokens * 3 * mlp_width * compute_bytes / tp
    layer_activations = attention + mlp
    local_layers = math.ceil(model.num_layers / pp)
    if mode == TrainerMode.FORWARD_ONLY:
        activations = layer_activations + tokens * h * compute_bytes
    elif recipe.activation_checkpointing:
        resident_layers = min(local_layers, 2) if recipe.activation_offloading else local_layers
        saved = resident_layers * tokens * h * compute_bytes / (tp if scheme.sequence_parallel else 1)
        activations = saved + 2 * layer_activations
    else:
        activations = (local_layers + 1) * (layer_activations + 2 * tokens * h * compute_bytes)

    loss_tokens = min(tokens, recipe.loss_chunk_tokens)
    loss_copies = 1 if mode == TrainerMode.FORWARD_ONLY else (3 if on_cpu else 2)
    loss = loss_tokens * model.vocab_size * 4.0 * loss_copies / tp

    overhead = RUNTIME_OVERHEAD_GIB[accelerator.kind]
    parts_gib = [x / GIB for x in (weights, gradients, optimizer, gathered, activations, loss)]
    total = sum(parts_gib) + overhead
    usable = accelerator.memory_gib * (1 - HEADROOM_FRACTION)
    return MemoryPlan(
        trainer_mode=mode,
        accelerator_type=accelerator.accelerator_type,
        world_size=world,
        tokens_per_device=tokens,
        trainable_parameters=trainable,
        weights_gib=_round(parts_gib[0]),
        gradients_gib=_round(parts_gib[1]),
        optimizer_state_gib=_round(parts_gib[2]),
        gathered_layers_gib=_round(parts_gib[3]),
        activations_gib=_round(parts_gib[4]),
        loss_gib=_round(parts_gib[5]),
        runtime_overhead_gib=overhead,
        total_gib=_round(total),
        device_memory_gib=accelerator.memory_gib,
        usable_memory_gib=_round(usable),
        fits=not problems and total <= usable,
        problems=problems,
    )


SERVING_WEIGHT_FRACTION = 0.75


def plan_serving(model: ModelSpec, precision: WeightPrecision, accelerator: AcceleratorSpec, count: int) -> ServingPlan:
    default_bytes = 4.0 if accelerator.kind == DeviceKind.CPU else 2.0
    weights = model.parameter_count * _WEIGHT_BYTES.get(precision, default_bytes) / count / GIB
    overhead = RUNTIME_OVERHEAD_GIB[accelerator.kind]
    usable = accelerator.memory_gib * (1 - HEADROOM_FRACTION)
    return ServingPlan(
        accelerator_type=accelerator.accelerator_type,
        accelerator_count=count,
        weights_gib=_round(weights),
        runtime_overhead_gib=overhead,
        kv_cache_budget_gib=_round(usable - weights - overhead),
        device_memory_gib=accelerator.memory_gib,
        fits=weights + overhead <= usable * SERVING_WEIGHT_FRACTION,
    )
