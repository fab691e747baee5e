"""The memory plan, checked against numbers computed here independently."""

import pytest

from shapeyard.shapes.memory import GIB, lora_parameters, plan_memory, plan_serving
from shapeyard.wire.shapes import (
    AcceleratorSpec,
    DeviceKind,
    ModelSpec,
    TrainingShapeSnapshot,
    WeightPrecision,
)

GPU = AcceleratorSpec(accelerator_type="GPU_100GB", kind=DeviceKind.CUDA, memory_gib=100)
CPU = AcceleratorSpec(accelerator_type="CPU", kind=DeviceKind.CPU, memory_gib=16)
DENSE = ModelSpec(
    name="accounts/t/models/dense",
    display_name="dense",
    model_type="qwen3",
    num_layers=10,
    hidden_size=1024,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=128,
    intermediate_size=4096,
    vocab_size=32000,
    parameter_count=1_000_000_000,
    max_position_embeddings=32768,
    weights={"hfRepo": "x/y"},
    factsSource="test",
)


def shape(**fields) -> TrainingShapeSnapshot:
    base = {
        "baseModel": DENSE.name,
        "trainerMode": "POLICY_TRAINER",
        "acceleratorType": "GPU_100GB",
        "acceleratorCount": 4,
        "maxSupportedContextLength": 8192,
        "trainerImageTag": "t",
        "deploymentShapeVersion": "accounts/t/deploymentShapes/d/versions/v",
    }
    return TrainingShapeSnapshot.model_validate({**base, **fields})


def test_full_parameter_state_is_16_bytes_per_parameter_sharded_over_every_device():
    plan = plan_memory(DENSE, shape(nodeCount=2), GPU)
    per_device = DENSE.parameter_count / 8 / GIB
    assert plan.world_size == 8
    assert plan.weights_gib == pytest.approx(4 * per_device, abs=1e-3)
    assert plan.gradients_gib == pytest.approx(4 * per_device, abs=1e-3)
    assert plan.optimizer_state_gib == pytest.approx(8 * per_device, abs=1e-3)
    assert plan.trainable_parameters == DENSE.parameter_count


def test_bf16_optimizer_state_halves_the_persistent_state():
    fp32 = plan_memory(DENSE, shape(), GPU)
    bf16 = plan_memory(DENSE, shape(optimizerStatePrecision="BFLOAT16"), GPU)
    for field in ("weights_gib", "gradients_gib", "optimizer_state_gib"):
        assert getattr(bf16, field) == pytest.approx(getattr(fp32, field) / 2, abs=1e-3)


def test_lora_adapter_size_matches_a_hand_count():
    # per layer: q (1024+1024) + k,v 2*(1024+256) + o (1024+1024) attention inputs+outputs, 3 MLP (1024+4096)
    per_layer = 16 * ((1024 + 1024) + 2 * (1024 + 256) + (1024 + 1024)) + 3 * 16 * (1024 + 4096)
    assert lora_parameters(DENSE, 16) == 10 * per_layer


def test_lora_keeps_the_base_frozen_in_its_precision():
    plan = plan_memory(DENSE, shape(trainerMode="LORA_TRAINER", maxLoraRank=16, baseModelWeightPrecision="FP8"), GPU)
    adapter = lora_parameters(DENSE, 16)
    assert plan.trainable_parameters == adapter
    assert plan.weights_gib == pytest.approx((DENSE.parameter_count * 1 + adapter * 4) / 4 / GIB, abs=1e-3)
    assert plan.optimizer_state_gib == pytest.approx(adapter * 8 / 4 / GIB, abs=1e-3)


def test_forward_only_holds_no_gradients_or_optimizer():
    plan = plan_memory(DENSE, shape(trainerMode="FORWARD_ONLY"), GPU)
    assert plan.gradients_gib == plan.optimizer_state_gib == 0
    assert plan.trainable_parameters == 0
    train = plan_memory(DENSE, shape(), GPU)
    assert plan.activations_gib < train.activations_gib
    assert plan.loss_gib == pytest.approx(train.loss_gib / 2, abs=1e-3)


def test_checkpointed_activations_grow_with_context_and_shrink_with_context_parallelism_and_offloading():
    short = plan_memory(DENSE, shape(maxSupportedContextLength=4096), GPU)
    long = plan_memory(DENSE, shape(maxSupportedContextLength=8192), GPU)
    split = plan_memory(
        DENSE, shape(maxSupportedContextLength=8192, trainerShardingScheme={"contextParallelism": 2}), GPU
    )
    offloaded = plan_memory(DENSE, shape(maxSupportedContextLength=8192, activationOffloading=True), GPU)
    assert long.activations_gib == pytest.approx(2 * short.activations_gib, rel=1e-3)
    assert split.tokens_per_device == 4096
    assert split.activations_gib == pytest.approx(short.activations_gib, rel=1e-3)
    # 10 saved layer inputs become 2: 8 * 8192 tokens * 1024 * 2 bytes fewer
    assert long.activations_gib - offloaded.activations_gib == pytest.approx(8 * 8192 * 1024 * 2 / GIB, abs=1e-3)


def test_total_is_the_sum_of_the_parts_and_fits_compares_with_usable_memory():
    plan = plan_memory(DENSE, shape(), GPU)
    parts = [
        plan.weights_gib,
        plan.gradients_gib,
        plan.optimizer_state_gib,
        plan.gathered_layers_gib,
        plan.activations_gib,
        plan.loss_gib,
        plan.runtime_overhead_gib,
    ]
    assert plan.total_gib == pytest.approx(sum(parts), abs=0.01)
    assert plan.usable_memory_gib == pytest.approx(92.0)
    assert plan.fits == (plan.total_gib <= plan.usable_memory_gib)
    single = plan_memory(DENSE, shape(acceleratorCount=1, maxSupportedContextLength=32768), CPU)
    assert not single.fits and "does not fit" in single.summary()


def test_cpu_materialises_attention_scores_and_full_logits():
    plan = plan_memory(DENSE, shape(acceleratorType="CPU", acceleratorCount=1, maxSupportedContextLength=1024), CPU)
    assert plan.loss_gib == pytest.approx(1024 * 32000 * 4 * 3 / GIB, abs=1e-3)
    assert plan.weights_gib == pytest.approx(DENSE.parameter_count * 4 / GIB, abs=1e-3)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"acceleratorCount": 4, "trainerShardingScheme": {"contextParallelism": 3}}, "must divide the 4"),
        ({"trainerShardingScheme": {"expertParallelism": 2}}, "needs a mixture-of-experts model"),
        ({"maxSupportedContextLength": 65536}, "exceeds the model's 32768 positions"),
    ],
)
def test_inconsistent_shapes_do_not_fit_and_say_why(fields, problem):
    plan = plan_memory(DENSE, shape(**fields), GPU)
    assert not plan.fits
    assert any(problem in text for text in plan.problems)


def test_serving_plan_leaves_a_quarter_for_the_kv_cache():
    fits = plan_serving(DENSE, WeightPrecision.BFLOAT16, GPU, 1)
    assert fits.weights_gib == pytest.approx(2e9 / GIB, abs=1e-3)
    assert fits.fits
    big = DENSE.model_copy(update={"parameter_count": 40_000_000_000})
    assert not plan_serving(big, WeightPrecision.BFLOAT16, GPU, 1).fits
    assert plan_serving(big, WeightPrecision.BFLOAT16, GPU, 2).fits
