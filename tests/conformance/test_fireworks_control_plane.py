"""The official fireworks-ai training SDK against a running shapeyard server: shape profiles and job CRUD."""

from __future__ import annotations

import pytest
from fireworks.training.sdk import TrainerJobConfig, TrainerJobManager
from fireworks.training.sdk.deployment import DeploymentConfig, DeploymentManager

from tests.helpers import SHAPES, TINY, RunningServer, unique


@pytest.fixture
def manager(server: RunningServer) -> TrainerJobManager:
    return TrainerJobManager(api_key=server.api_key, base_url=server.base_url)


@pytest.mark.parametrize(
    ("shape", "mode", "lora", "context", "accelerator", "count", "nodes", "deployment"),
    [
        ("qwen3p5-9b-256k", "POLICY_TRAINER", False, 262144, "NVIDIA_B200_180GB", 2, 1, "rft-qwen3p5-9b"),
        ("qwen3p5-9b-256k-lora", "LORA_TRAINER", True, 262144, "NVIDIA_B200_180GB", 2, 1, "rft-qwen3p5-9b"),
        (
            "qwen3p5-397b-a17b-256k",
            "POLICY_TRAINER",
            False,
            262144,
            "NVIDIA_B300_288GB",
            8,
            2,
            "rft-qwen3p5-397b-b300",
        ),
        (
            "qwen3-8b-256k-h200-lora",
            "LORA_TRAINER",
            True,
            256000,
            "NVIDIA_H200_141GB",
            8,
            1,
            "rft-qwen3-8b-h200",
        ),
        (
            "kimi-k2p5-text-only-256k-forward-only",
            "FORWARD_ONLY",
            False,
            262144,
            "NVIDIA_B300_288GB",
            8,
            2,
            "rft-kimi-k2p5-b300",
        ),
        ("tiny-qwen3-2k-cpu-lora", "LORA_TRAINER", True, 2048, "CPU", 1, 1, "rft-tiny-qwen3-cpu"),
    ],
)
def test_resolve_training_profile(manager, shape, mode, lora, context, accelerator, count, nodes, deployment):
    profile = manager.resolve_training_profile(f"{SHAPES}/{shape}")
    assert profile.trainer_mode == mode and profile.supports_lora is lora
    assert profile.max_supported_context_length == context
    assert (profile.accelerator_type, profile.accelerator_count, profile.node_count) == (
        accelerator,
        count,
        nodes,
    )
    assert profile.training_shape == f"{SHAPES}/{shape}"
    assert profile.training_shape_version.startswith(f"{SHAPES}/{shape}/versions/")
    assert profile.deployment_shape.startswith(f"accounts/fireworks/deploymentShapes/{deployment}/versions/")
    assert profile.trainer_image_tag == "0.1.0"
    pinned = manager.resolve_training_profile(profile.training_shape_version)
    assert pinned.training_shape_version == profile.training_shape_version


def test_unknown_shapes_fail_to_resolve(manager):
    with pytest.raises(
        RuntimeError, match=r"HTTP 404\)\n  Cause: training shape accounts/fireworks/trainingShapes/no-such"
    ):
        manager.resolve_training_profile(f"{SHAPES}/no-such-shape")


def test_create_get_delete_a_job_on_a_shape(manager):
    profile = manager.resolve_training_profile(f"{SHAPES}/tiny-qwen3-2k-cpu-lora")
    config = TrainerJobConfig(
        base_model=TINY,
        lora_rank=8,
        training_shape_ref=profile.training_shape,
        display_name="sdk job",
        learning_rate=2e-4,
    )
    created = manager.create(config)
    assert created.job_id.startswith("training-api-service-")
    job = manager.get(created.job_id)
    assert job["name"] == created.job_name and job["trainingShape"] == profile.training_shape_version
    assert job["trainingConfig"]["maxContextLength"] == profile.max_supported_context_length
    # a retried create with the same id is answered from the existing job
    config.requested_job_id = created.job_id
    assert manager.create(config).job_id == created.job_id
    manager.delete(created.job_id)
    assert manager.get(created.job_id)["state"] == "JOB_STATE_DELETED"


def test_auto_selected_shape_job(manager):
    created = manager.create(
        TrainerJobConfig(base_model=TINY, lora_rank=0, max_context_length=3000, auto_select_training_shape=True)
    )
    assert "/tiny-qwen3-8k-cpu/versions/" in manager.get(created.job_id)["trainingShape"]


@pytest.mark.parametrize(
    ("field", "value", "wire"),
    [
        ("accelerator_type", "NVIDIA_H100_80GB", "acceleratorType"),
        ("accelerator_count", 2, "acceleratorCount"),
    ],
)
def test_sdk_and_server_agree_on_locked_fields(server: RunningServer, manager, field, value, wire):
    config = TrainerJobConfig(base_model=TINY, training_shape_ref=f"{SHAPES}/tiny-qwen3-2k-cpu", **{field: value})
    with pytest.raises(ValueError, match=f"{field} cannot be set when training shape selection is enabled"):
        manager.create(config)
    # the same override sent straight to the server is refused too, naming the field
    with server.http() as http:
        response = http.post(
            "/v1/accounts/local/rlorTrainerJobs",
            params={"trainingShape": f"{SHAPES}/tiny-qwen3-2k-cpu", "rlorTrainerJobId": unique("raw")},
            json={"trainingConfig": {"baseModel": TINY, wire: value}},
        )
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(f"trainingConfig.{wire} is owned by training shape")


def test_server_rules_surface_through_the_sdk(manager):
    config = TrainerJobConfig(base_model=TINY, lora_rank=8, training_shape_ref=f"{SHAPES}/tiny-qwen3-2k-cpu")
    with pytest.raises(Exception, match="loraRank must be 0 for POLICY_TRAINER"):
        manager.create(config)


def test_deployment_manager_creates_from_the_training_profile(server: RunningServer, manager):
    profile = manager.resolve_training_profile(f"{SHAPES}/tiny-qwen3-2k-cpu-lora")
    job = manager.create(TrainerJobConfig(base_model=TINY, lora_rank=4, training_shape_ref=profile.training_shape))
    deployments = DeploymentManager(api_key=server.api_key, base_url=server.base_url)
    dep_id = unique("sdk-dep")
    config = DeploymentConfig.from_training_profile(
        deployment_id=dep_id, base_model=TINY, profile=profile, hot_load_trainer_job=job.job_name
    )
    info = deployments.create_or_get(config)
    assert info.deployment_shape_version == profile.deployment_shape
    assert info.hot_load_trainer_job == job.job_name
    assert deployments.get(dep_id).inference_model == f"accounts/local/deployments/{dep_id}"
    deployments.scale_to_zero(dep_id)
    assert deployments.get(dep_id).state == "CREATING"
    deployments.delete(dep_id)
    assert deployments.get(dep_id) is None
