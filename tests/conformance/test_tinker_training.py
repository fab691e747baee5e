"""The official tinker client against a shapeyard server's root URL: no job to create first."""

from __future__ import annotations

import pytest
import tinker
import torch

from tests.conftest import RunningServer

TOKENS = [(3 * i + 1) % 90 + 5 for i in range(20)]


def datum() -> tinker.Datum:
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(TOKENS[:-1]), loss_fn_inputs={"target_tokens": TOKENS[1:]}
    )


def test_lora_training_save_load_and_custom_loss(training_server: RunningServer):
    service = tinker.ServiceClient(base_url=training_server.base_url, api_key=training_server.tinker_key)
    models = {m.model_name: m.max_context_length for m in service.get_server_capabilities().supported_models}
    assert models["accounts/fireworks/models/tiny-qwen3"] == 8192
    training = service.create_lora_training_client(base_model="tiny-qwen3", rank=8)

    losses = []
    for _ in range(4):
        losses.append(training.forward_backward([datum()], "cross_entropy").result().metrics["loss:sum"])
        training.optim_step(tinker.AdamParams(learning_rate=1e-2)).result()
    assert losses[-1] < losses[0]

    path = training.save_state("after-4").result().path
    assert path.startswith("tinker://sl-") and path.endswith("/weights/after-4")
    reference = training.forward([datum()], "cross_entropy").result().metrics["loss:sum"]
    training.forward_backward([datum()], "cross_entropy").result()
    training.optim_step(tinker.AdamParams(learning_rate=1e-1)).result()
    training.load_state(path).result()
    assert training.forward([datum()], "cross_entropy").result().metrics["loss:sum"] == reference

    def sum_of_logprobs(data, logprobs):
        loss = -torch.stack([lp.sum() for lp in logprobs]).sum()
        return loss, {"custom_loss": loss.item()}

    custom = training.forward_backward_custom([datum()], sum_of_logprobs).result()
    # -sum(logp) is cross-entropy with unit weights: the server applied the same loss
    assert custom.metrics["custom_loss"] == pytest.approx(reference, rel=1e-5)
    assert custom.metrics["loss:sum"] == pytest.approx(reference, rel=1e-5)

    restored = service.create_training_client_from_state(path)
    info = restored.get_info()
    assert info.is_lora and info.lora_rank == 8
    assert restored.forward([datum()], "cross_entropy").result().metrics["loss:sum"] == reference


def test_the_serverless_job_is_visible_and_reused(training_server: RunningServer):
    service = tinker.ServiceClient(base_url=training_server.base_url, api_key=training_server.tinker_key)
    service.create_lora_training_client(base_model="accounts/fireworks/models/tiny-qwen3", rank=8)
    with training_server.http() as http:
        jobs = http.get("/v1/accounts/local/rlorTrainerJobs").json()["rlorTrainerJobs"]
    serverless = [
        j for j in jobs if j["name"].rsplit("/", 1)[1].startswith("sl-") and j["state"] == "JOB_STATE_RUNNING"
    ]
    assert len(serverless) == 1  # both tests' LoRA clients share one trainer
    assert serverless[0]["trainingShape"].startswith("accounts/fireworks/trainingShapes/tiny-qwen3-2k-cpu-lora/")


def test_unknown_models_are_refused_by_the_server(training_server: RunningServer):
    service = tinker.ServiceClient(base_url=training_server.base_url, api_key=training_server.tinker_key)
    with pytest.raises(tinker.RequestFailedError, match="base_model 'no-such-model' is not in the catalog"):
        service.create_lora_training_client(base_model="no-such-model", rank=8)
