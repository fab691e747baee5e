"""The official fireworks-ai SDK's LoRA flow with a deployment: DeploymentManager, WeightSyncer save-and-hotload,
DeploymentSampler with logprobs, and the managed path with create_deployment=True; sharded trainers (two devices,
two nodes) hot-load what they trained."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fireworks.training.sdk import (
    AdamParams,
    DeploymentConfig,
    DeploymentManager,
    DeploymentSampler,
    FiretitanSamplingClient,
    FiretitanServiceClient,
    TrainerJobConfig,
    TrainerJobManager,
    WeightSyncer,
)
from fireworks.training.sdk import types as fw

from tests.helpers import (
    LORA_SHAPE,
    PROMPT,
    SHAPES,
    TINY,
    RunningServer,
    chat_data,
    create_lora_job,
    run_server,
    unique,
)


@pytest.fixture(scope="module")
def serving_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with run_server(tmp_path_factory.mktemp("fw-serving"), cpu_slots=2) as running:
        yield running


def test_lora_training_with_a_deployment_weight_sync_and_sampling(serving_server: RunningServer):
    key, url = serving_server.api_key, serving_server.base_url
    jobs, profile, endpoint = create_lora_job(serving_server)
    deployments = DeploymentManager(api_key=key, base_url=url)
    deployment_id = unique("fw-dep")
    deployments.create_or_get(
        DeploymentConfig.from_training_profile(
            deployment_id=deployment_id, base_model=TINY, profile=profile, hot_load_trainer_job=endpoint.job_name
        )
    )
    info = deployments.wait_for_ready(deployment_id, poll_interval_s=0.5)
    assert info.state == "READY"

    training = FiretitanServiceClient(base_url=endpoint.base_url, api_key=key).create_training_client(
        base_model=TINY, lora_rank=8
    )
    data = chat_data()
    for _ in range(3):
        training.forward_backward(data, "cross_entropy").result()
        training.optim_step(AdamParams(learning_rate=1e-2)).result()
    syncer = WeightSyncer(
        policy_client=training, deploy_mgr=deployments, deployment_id=deployment_id, base_model=TINY, lora_rank=8
    )
    syncer.save_and_hotload("step-3")
    identity = syncer.base_identity
    assert identity and identity.startswith("step-3")
    status = deployments.hotload_check_status(deployment_id, TINY)
    assert status["replicas"][0]["current_snapshot_identity"] == identity

    model = f"accounts/{deployments.account_id}/deployments/{deployment_id}"
    sampler = DeploymentSampler(inference_url=url, model=model, api_key=key)
    completions = asyncio.run(sampler.sample_with_prompt_tokens(PROMPT, n=2, max_tokens=5, logprobs=True))
    assert len(completions) == 2
    for completion in completions:
        assert completion.full_tokens[: len(PROMPT)] == PROMPT
        assert completion.finish_reason in ("stop", "length")
        generated = completion.full_tokens[len(PROMPT) :]
        assert len(completion.inference_logprobs) == len(generated) == len(completion.sampling_logprobs)
        assert all(value <= 0 for value in completion.inference_logprobs)

    tinker_sampler = FiretitanSamplingClient(sampler)
    plain = tinker_sampler.sample(fw.ModelInput.from_ints(PROMPT), 1, fw.SamplingParams(max_tokens=3)).result()
    assert len(plain.sequences[0].tokens) == len(plain.sequences[0].logprobs) <= 3
    echoed = tinker_sampler.sample(
        fw.ModelInput.from_ints(PROMPT), 1, fw.SamplingParams(max_tokens=3), include_prompt_logprobs=True
    ).result()
    assert echoed.prompt_logprobs[0] is None and len(echoed.prompt_logprobs) == len(PROMPT)
    assert all(value is not None and value <= 0 for value in echoed.prompt_logprobs[1:])

    deployments.delete(deployment_id)
    jobs.delete(endpoint.job_id)


def test_the_managed_path_provisions_a_trainer_and_its_deployment(serving_server: RunningServer):
    service = FiretitanServiceClient.from_firetitan_config(
        api_key=serving_server.api_key,
        base_url=serving_server.base_url,
        base_model=TINY,
        training_shape_id=LORA_SHAPE,
        lora_rank=8,
        create_deployment=True,
        cleanup_trainer_on_close=True,
        cleanup_deployment_on_close="delete",
    )
    training = service.create_training_client(base_model=TINY, lora_rank=8)
    training.forward_backward(chat_data(), "cross_entropy").result()
    training.optim_step(AdamParams(learning_rate=1e-2)).result()
    path = training.save_weights_for_sampler("managed-1").result().path
    sampling = training.create_sampling_client(model_path=path)
    result = sampling.sample(fw.ModelInput.from_ints(PROMPT), 2, fw.SamplingParams(max_tokens=4)).result()
    assert len(result.sequences) == 2
    assert all(len(sequence.tokens) == len(sequence.logprobs) for sequence in result.sequences)
    service.close()


@pytest.fixture(scope="module")
def wide_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Room for a trainer of two CPU ranks next to a deployment replica."""
    with run_server(tmp_path_factory.mktemp("fw-serving-wide"), cpu_slots=3) as running:
        yield running


@pytest.mark.parametrize(("shape", "rank"), [("tiny-qwen3-2k-cpu-x2-lora", 8), ("tiny-qwen3-2k-cpu-2node", 0)])
def test_a_sharded_trainer_hot_loads_exactly_what_it_trained(wide_server: RunningServer, shape: str, rank: int):
    key, url = wide_server.api_key, wide_server.base_url
    jobs = TrainerJobManager(api_key=key, base_url=url)
    profile = jobs.resolve_training_profile(f"{SHAPES}/{shape}")
    config = TrainerJobConfig(base_model=TINY, lora_rank=rank, training_shape_ref=profile.training_shape)
    endpoint = jobs.create_and_wait(config, poll_interval_s=0.5)
    deployments = DeploymentManager(api_key=key, base_url=url)
    deployment_id = unique("fw-wide")
    deployments.create_or_get(
        DeploymentConfig.from_training_profile(
            deployment_id=deployment_id, base_model=TINY, profile=profile, hot_load_trainer_job=endpoint.job_name
        )
    )
    assert deployments.wait_for_ready(deployment_id, poll_interval_s=0.5).state == "READY"
    training = FiretitanServiceClient(base_url=endpoint.base_url, api_key=key).create_training_client(
        base_model=TINY, lora_rank=rank
    )
    for _ in range(3):
        training.forward_backward(chat_data(), "cross_entropy").result()
        training.optim_step(AdamParams(learning_rate=1e-2)).result()
    syncer = WeightSyncer(
        policy_client=training, deploy_mgr=deployments, deployment_id=deployment_id, base_model=TINY, lora_rank=rank
    )
    syncer.save_and_hotload("step-3")
    status = deployments.hotload_check_status(deployment_id, TINY)
    assert status["replicas"][0]["current_snapshot_identity"] == syncer.base_identity

    # the deployment scores the prompt as the trainer does: the snapshot holds every rank's part of the weights
    datum = fw.Datum(model_input=fw.ModelInput.from_ints(PROMPT[:-1]), loss_fn_inputs={"target_tokens": PROMPT[1:]})
    trained = training.forward([datum], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].data
    model = f"accounts/{deployments.account_id}/deployments/{deployment_id}"
    sampler = FiretitanSamplingClient(DeploymentSampler(inference_url=url, model=model, api_key=key))
    echoed = sampler.sample(
        fw.ModelInput.from_ints(PROMPT), 1, fw.SamplingParams(max_tokens=1), include_prompt_logprobs=True
    ).result()
    assert echoed.prompt_logprobs[1:] == pytest.approx(trained, abs=1e-4)
    deployments.delete(deployment_id)
    jobs.delete(endpoint.job_id)
