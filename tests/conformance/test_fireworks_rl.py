"""The official fireworks-ai SDK's RL flow with a reference model: a full-parameter policy, a forward-only reference
trainer and a deployment hot-loaded with base then delta snapshots; a LoRA policy whose reference is its own base;
and the managed path's reference provisioning (shared trainer, separate forward-only trainer, wrong-mode shape)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fireworks.training.sdk import (
    AdamParams,
    Datum,
    DeploymentConfig,
    DeploymentManager,
    DeploymentSampler,
    FiretitanServiceClient,
    FiretitanTrainingClient,
    ModelInput,
    RequestFailedError,
    SampledCompletion,
    TrainerJobConfig,
    TrainerJobManager,
    WeightSyncer,
)

from shapeyard.wire.routes import DEPLOYMENT_HEADER, HOT_LOAD
from tests.helpers import (
    FORWARD_ONLY_SHAPE,
    FULL_SHAPE,
    LORA_SHAPE,
    PROMPT,
    TINY,
    RunningServer,
    chat_data,
    create_lora_job,
    run_server,
    unique,
)

PPO = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.28}
# Both logprob sources are float32 on the CPU; the serving engine batches and caches differently from the trainer.
SAME = 1e-4


@pytest.fixture(scope="module")
def rl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Room for a policy trainer, a reference trainer and one deployment replica at once."""
    with run_server(tmp_path_factory.mktemp("fw-rl"), cpu_slots=3) as running:
        yield running


def job_names(server: RunningServer) -> set[str]:
    with server.http() as http:
        listed = http.get(f"/v1/accounts/{server.account}/rlorTrainerJobs", params={"pageSize": 200})
    return {job["name"] for job in listed.json()["rlorTrainerJobs"]}


def rl_datum(completion: SampledCompletion, advantage: float) -> Datum:
    """Input full[:-1], target full[1:]; logprobs and advantages are 0 on the prompt positions."""
    prompt = [0.0] * (completion.prompt_len - 1)
    generated = len(completion.full_tokens) - completion.prompt_len
    return Datum(
        model_input=ModelInput.from_ints(completion.full_tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": completion.full_tokens[1:],
            "logprobs": prompt + list(completion.sampling_logprobs),
            "advantages": prompt + [advantage] * generated,
        },
    )


def cross_entropy_datum(datum: Datum) -> Datum:
    return Datum(model_input=datum.model_input, loss_fn_inputs={"target_tokens": datum.loss_fn_inputs["target_tokens"]})


def logprobs(client: FiretitanTrainingClient, data: list[Datum]) -> list[list[float]]:
    result = client.forward([cross_entropy_datum(datum) for datum in data], "cross_entropy").result()
    return [output["logprobs"].tolist() for output in result.loss_fn_outputs]


def flat(rows: list[list[float]]) -> list[float]:
    return [value for row in rows for value in row]


def largest_gap(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for x, y in zip(flat(a), flat(b), strict=True))


def test_full_parameter_policy_with_a_forward_only_reference_and_delta_hot_loads(rl_server: RunningServer):
    key, url = rl_server.api_key, rl_server.base_url
    jobs = TrainerJobManager(api_key=key, base_url=url)
    policy_profile = jobs.resolve_training_profile(FULL_SHAPE)
    reference_profile = jobs.resolve_training_profile(FORWARD_ONLY_SHAPE)
    assert reference_profile.trainer_mode == "FORWARD_ONLY"
    policy_job = jobs.create(TrainerJobConfig(base_model=TINY, training_shape_ref=policy_profile.training_shape))
    reference_job = jobs.create(
        TrainerJobConfig(base_model=TINY, training_shape_ref=reference_profile.training_shape, forward_only=True)
    )
    policy_endpoint = jobs.wait_for_ready(policy_job.job_id, poll_interval_s=0.5)
    reference_endpoint = jobs.wait_for_ready(reference_job.job_id, poll_interval_s=0.5)
    assert jobs.get(reference_job.job_id)["forwardOnly"] is True

    deployments = DeploymentManager(api_key=key, base_url=url)
    deployment_id = unique("rl-run")
    deployments.create_or_get(
        DeploymentConfig.from_training_profile(
            deployment_id=deployment_id,
            base_model=TINY,
            profile=policy_profile,
            hot_load_trainer_job=policy_endpoint.job_name,
        )
    )
    deployments.wait_for_ready(deployment_id, poll_interval_s=0.5)

    policy_service = FiretitanServiceClient(base_url=policy_endpoint.base_url, api_key=key)
    reference_service = FiretitanServiceClient(base_url=reference_endpoint.base_url, api_key=key)
    policy = policy_service.create_training_client(base_model=TINY, lora_rank=0)
    reference = reference_service.create_training_client(base_model=TINY, lora_rank=0)
    syncer = WeightSyncer(policy_client=policy, deploy_mgr=deployments, deployment_id=deployment_id, base_model=TINY)
    identities = [syncer.save_and_hotload("step-0")]
    sampler = DeploymentSampler(
        inference_url=url, model=f"accounts/{deployments.account_id}/deployments/{deployment_id}", api_key=key
    )

    for step in (1, 2):
        completions = asyncio.run(sampler.sample_with_prompt_tokens(PROMPT, n=2, max_tokens=4, logprobs=True))
        # Every sampled token is reinforced, so the update cannot cancel out between the two samples.
        data = [rl_datum(completion, 1.0) for completion in completions]
        reference_logprobs = logprobs(reference, data)
        result = policy.forward_backward(data, "ppo", PPO).result()
        policy_logprobs = [output["logprobs"].tolist() for output in result.loss_fn_outputs]
        policy.optim_step(
            AdamParams(learning_rate=1e-3, grad_clip_norm=1.0), grad_accumulation_normalization="num_loss_tokens"
        ).result()
        # The deployment samples from the policy's current weights: its logprobs are the policy's.
        served = flat([c.inference_logprobs for c in completions])
        assert served == pytest.approx(flat([row[len(PROMPT) - 1 :] for row in policy_logprobs]), abs=SAME)
        if step == 1:  # same base weights on both trainers
            assert flat(policy_logprobs) == pytest.approx(flat(reference_logprobs), abs=SAME)
        else:
            assert largest_gap(policy_logprobs, reference_logprobs) > 1e-3

        identities.append(syncer.save_and_hotload(f"step-{step}"))  # a delta on the previous identity
        assert syncer.base_identity == identities[-1] != identities[-2]
        status = deployments.hotload_check_status(deployment_id, TINY)["replicas"][0]
        assert status["current_snapshot_identity"] == identities[-1] and status["readiness"] is True

    with pytest.raises(RequestFailedError, match="forward-only"):
        reference.forward_backward(data, "ppo", PPO).result()
    with pytest.raises(RequestFailedError, match="forward-only"):
        reference.optim_step(AdamParams(learning_rate=1e-3)).result()

    # A delta is refused unless the deployment serves the snapshot it was made against.
    with rl_server.http() as http:
        stale = http.post(
            HOT_LOAD,
            headers={DEPLOYMENT_HEADER: sampler.model, "fireworks-model": TINY},
            json={
                "identity": identities[1],
                "incremental_snapshot_metadata": {"previous_snapshot_identity": identities[0]},
            },
        )
    assert stale.status_code == 400 and f"serves {identities[-1]}" in stale.json()["error"]["message"]
    status = deployments.hotload_check_status(deployment_id, TINY)["replicas"][0]
    assert status["current_snapshot_identity"] == identities[-1]

    policy_service.close()
    reference_service.close()
    deployments.delete(deployment_id)
    jobs.delete(policy_job.job_id)
    jobs.delete(reference_job.job_id)


def test_a_lora_policy_s_base_only_reference_keeps_the_base_weights(rl_server: RunningServer):
    jobs, _, endpoint = create_lora_job(rl_server)
    service = FiretitanServiceClient(base_url=endpoint.base_url, api_key=rl_server.api_key)
    policy = service.create_training_client(base_model=TINY, lora_rank=8)
    data = chat_data()
    before = logprobs(policy, data)
    reference = service.create_base_training_client(TINY)
    assert logprobs(reference, data) == before
    for _ in range(2):
        policy.forward_backward(data, "cross_entropy").result()
        policy.optim_step(AdamParams(learning_rate=1e-2)).result()
    trained = logprobs(policy, data)
    assert largest_gap(trained, before) > 1e-3
    assert logprobs(reference, data) == before
    service.close()
    jobs.delete(endpoint.job_id)


def managed(server: RunningServer, **config: object) -> FiretitanServiceClient:
    return FiretitanServiceClient.from_firetitan_config(
        api_key=server.api_key,
        base_url=server.base_url,
        base_model=TINY,
        reference_required=True,
        create_deployment=True,
        cleanup_trainer_on_close=True,
        cleanup_deployment_on_close="delete",
        **config,
    )


def test_the_managed_lora_reference_shares_the_policy_trainer(rl_server: RunningServer):
    existing = job_names(rl_server)
    service = managed(rl_server, training_shape_id=LORA_SHAPE, lora_rank=8)
    policy = service.create_training_client(base_model=TINY, lora_rank=8)
    reference = service.create_reference_client()
    data = chat_data()
    assert logprobs(reference, data) == logprobs(policy, data)  # a fresh adapter is the identity
    assert service.reference_job_id is None
    assert job_names(rl_server) - existing == {f"accounts/{rl_server.account}/rlorTrainerJobs/{service.trainer_job_id}"}
    service.close()


def test_the_managed_full_parameter_reference_is_a_forward_only_job_cleaned_up_on_close(rl_server: RunningServer):
    jobs = TrainerJobManager(api_key=rl_server.api_key, base_url=rl_server.base_url)
    deployments = DeploymentManager(api_key=rl_server.api_key, base_url=rl_server.base_url)
    service = managed(rl_server, training_shape_id=FULL_SHAPE, reference_training_shape_id=FORWARD_ONLY_SHAPE)
    policy = service.create_training_client(base_model=TINY, lora_rank=0)
    reference = service.create_reference_client()
    reference_id = service.reference_job_id
    assert reference_id not in (None, service.trainer_job_id)
    reference_job = jobs.get(reference_id)
    assert reference_job["forwardOnly"] is True and reference_job["trainerMode"] == "FORWARD_ONLY"

    data = chat_data()
    assert flat(logprobs(reference, data)) == pytest.approx(flat(logprobs(policy, data)), abs=SAME)
    policy.forward_backward(data, "cross_entropy").result()
    policy.optim_step(AdamParams(learning_rate=1e-3)).result()
    path = policy.save_weights_for_sampler("managed-1").result().path
    policy.create_sampling_client(model_path=path)  # hot-loads the snapshot and waits for it
    deployment_id = service.deployment_id
    status = deployments.hotload_check_status(deployment_id, TINY)["replicas"][0]
    assert status["current_snapshot_identity"] == path
    # The SDK probed this status for RDMA weight sync right after create_model; without these it keeps to files.
    assert "supports_rdma_weight_sync" not in status and "rdma_weight_sync_enabled" not in status

    service.close()
    assert jobs.get(reference_id)["state"] == "JOB_STATE_DELETED"
    assert jobs.get(service.trainer_job_id)["state"] == "JOB_STATE_DELETED"
    assert deployments.get(deployment_id) is None


def test_a_reference_shape_of_the_wrong_mode_is_refused_before_any_job_exists(rl_server: RunningServer):
    existing = job_names(rl_server)
    service = managed(rl_server, training_shape_id=FULL_SHAPE, reference_training_shape_id=FULL_SHAPE)
    with pytest.raises(ValueError, match="requires trainer_mode in"):
        service.create_training_client(base_model=TINY, lora_rank=0)
    assert job_names(rl_server) == existing
    service.close()
