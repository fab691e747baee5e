"""The official fireworks-ai training SDK trains through shapeyard: full-parameter and LoRA CPU shapes."""

from __future__ import annotations

import pytest
from fireworks.training.sdk import (
    AdamParams,
    FiretitanServiceClient,
    TrainerJobConfig,
    TrainerJobManager,
)

from tests.helpers import TINY, RunningServer, chat_data

# One device; two devices; two nodes (two torch agents meeting on loopback); two replicas of one device.
LAYOUTS = [
    ("tiny-qwen3-2k-cpu", 0, 1),
    ("tiny-qwen3-2k-cpu-lora", 8, 1),
    ("tiny-qwen3-2k-cpu-x2", 0, 1),
    ("tiny-qwen3-2k-cpu-x2-lora", 8, 1),
    ("tiny-qwen3-2k-cpu-2node", 0, 1),
    ("tiny-qwen3-2k-cpu-2node-lora", 8, 1),
    ("tiny-qwen3-2k-cpu", 0, 2),
    ("tiny-qwen3-2k-cpu-lora", 8, 2),
]


@pytest.mark.parametrize(("shape", "rank", "replicas"), LAYOUTS)
def test_sft_flow(training_server: RunningServer, shape: str, rank: int, replicas: int):
    manager = TrainerJobManager(api_key=training_server.api_key, base_url=training_server.base_url)
    profile = manager.resolve_training_profile(f"accounts/fireworks/trainingShapes/{shape}")
    config = TrainerJobConfig(
        base_model=TINY, lora_rank=rank, training_shape_ref=profile.training_shape, trainer_replica_count=replicas
    )
    endpoint = manager.create_and_wait(config, poll_interval_s=0.5)
    assert endpoint.max_context_length == 2048
    service = FiretitanServiceClient(base_url=endpoint.base_url, api_key=training_server.api_key)
    training = service.create_training_client(base_model=TINY, lora_rank=rank)
    data = chat_data()
    losses = []
    for _ in range(6):
        result = training.forward_backward(data, "cross_entropy").result()
        training.optim_step(
            AdamParams(learning_rate=1e-2 if rank else 3e-3, grad_clip_norm=1.0),
            grad_accumulation_normalization="num_loss_tokens",
        ).result()
        assert result.metrics["response_tokens"] == 16  # per problem: 2 digits, end of turn, newline
        losses.append(result.metrics["loss:sum"] / result.metrics["response_tokens"])
    assert losses[-1] < 0.6 * losses[0], losses

    saved = training.save_state("step-6").result()
    assert saved.path == "step-6"
    sampler = training.save_weights_for_sampler_ext("final")
    assert sampler.path.startswith("final-")
    assert training.list_checkpoints() == ["step-6"]
    after_save = training.forward(data, "cross_entropy").result().metrics["loss:sum"]
    training.forward_backward(data, "cross_entropy").result()
    training.optim_step(AdamParams(learning_rate=1e-1)).result()
    assert training.forward(data, "cross_entropy").result().metrics["loss:sum"] != after_save
    training.load_state_with_optimizer("step-6").result()
    assert training.forward(data, "cross_entropy").result().metrics["loss:sum"] == after_save
    info = training.get_info()
    assert info.is_lora == bool(rank) and info.lora_rank == rank

    manager.delete(endpoint.job_id)
    assert manager.get(endpoint.job_id)["state"] == "JOB_STATE_DELETED"
