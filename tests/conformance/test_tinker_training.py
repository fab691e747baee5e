"""The official tinker client against a shapeyard server's root URL: no job to create first."""

from __future__ import annotations

import math

import pytest
import tinker
import torch

from tests.helpers import RunningServer

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


def test_importance_sampling_and_ppo(training_server: RunningServer):
    """Sampler logprobs set so that the token ratios are known: the losses, the RL metrics (merged by the client,
    so their names must follow its name:reduction rule) and a step that lowers the loss."""
    service = tinker.ServiceClient(base_url=training_server.base_url, api_key=training_server.tinker_key)
    training = service.create_lora_training_client(base_model="tiny-qwen3", rank=8)
    logp = training.forward([datum()], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].tolist()
    prompt = 5  # no loss on the prompt: sampler logprob and advantage 0
    pattern = [(math.log(2), 1.0), (-math.log(2), -1.0), (0.1, 0.5), (-0.1, 2.0), (0.0, -0.5), (math.log(2), -1.5)]
    log_ratios, advantages = zip(*(pattern[i % len(pattern)] for i in range(len(logp) - prompt)), strict=True)
    sampler = [0.0] * prompt + [lp - lr for lp, lr in zip(logp[prompt:], log_ratios, strict=True)]
    policy = tinker.Datum(
        model_input=tinker.ModelInput.from_ints(TOKENS[:-1]),
        loss_fn_inputs={"target_tokens": TOKENS[1:], "logprobs": sampler, "advantages": [0.0] * prompt + [*advantages]},
    )
    ratios = [math.exp(lr) for lr in log_ratios]
    clip = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    expected = {
        "importance_sampling": -sum(r * a for r, a in zip(ratios, advantages, strict=True)),
        "ppo": -sum(min(r * a, min(max(r, 0.8), 1.2) * a) for r, a in zip(ratios, advantages, strict=True)),
    }
    assert abs(expected["ppo"] - expected["importance_sampling"]) > 0.1  # the clip changes the loss

    results = {
        "importance_sampling": training.forward_backward([policy], "importance_sampling").result(),
        "ppo": training.forward_backward([policy], "ppo", clip).result(),
    }
    for loss_fn, result in results.items():
        metrics = result.metrics
        assert metrics["loss:sum"] == pytest.approx(expected[loss_fn], rel=1e-4), loss_fn
        assert result.loss_fn_outputs[0]["logprobs"].tolist() == pytest.approx(logp, abs=1e-5)
        assert metrics["kl_sampler_k1:mean"] == pytest.approx(-sum(log_ratios) / len(ratios), abs=1e-5)
        k3 = sum(r - 1 - lr for r, lr in zip(ratios, log_ratios, strict=True)) / len(ratios)
        assert metrics["kl_sampler_k3:mean"] == pytest.approx(k3, abs=1e-5)
        assert metrics["ratio:mean"] == pytest.approx(sum(ratios) / len(ratios), rel=1e-5)
    assert results["ppo"].metrics["clip_high_frac:mean"] == pytest.approx(sum(r > 1.2 for r in ratios) / len(ratios))
    assert results["ppo"].metrics["clip_low_frac:mean"] == pytest.approx(sum(r < 0.8 for r in ratios) / len(ratios))
    assert "clip_high_frac:mean" not in results["importance_sampling"].metrics

    training.optim_step(tinker.AdamParams(learning_rate=1e-3)).result()
    after = sum(
        training.forward([policy], loss_fn, clip if loss_fn == "ppo" else None).result().metrics["loss:sum"]
        for loss_fn in expected
    )
    assert after < sum(expected.values())


def test_kl_between_a_sampling_client_and_the_trainer(training_server: RunningServer):
    """Completions sampled before a step; the sampler's compute_logprobs give q and, after the step, the trainer's
    forward gives logp. The KL(sampler || learner) the trainer reports for a policy loss on q equals the estimate
    computed here over every completion token."""
    service = tinker.ServiceClient(base_url=training_server.base_url, api_key=training_server.tinker_key)
    training = service.create_lora_training_client(base_model="tiny-qwen3", rank=8)
    sampler = training.save_weights_and_get_sampling_client()
    prompt = TOKENS[:6]
    params = tinker.SamplingParams(max_tokens=6, temperature=1.0, seed=5)
    completions = sampler.sample(tinker.ModelInput.from_ints(prompt), 3, params).result().sequences
    sequences = [prompt + completion.tokens for completion in completions]
    assert len(sequences) == 3

    training.forward_backward([datum()], "cross_entropy").result()
    training.optim_step(tinker.AdamParams(learning_rate=1e-2)).result()

    policy = []
    for seq in sequences:
        q = sampler.compute_logprobs(tinker.ModelInput.from_ints(seq)).result()[1:]  # at the target positions
        q = [0.0] * (len(prompt) - 1) + q[len(prompt) - 1 :]  # the prompt carries no loss
        policy.append(
            tinker.Datum(
                model_input=tinker.ModelInput.from_ints(seq[:-1]),
                loss_fn_inputs={"target_tokens": seq[1:], "logprobs": q, "advantages": [0.0] * len(q)},
            )
        )
    result = training.forward(policy, "importance_sampling").result()
    log_ratios = []
    for data, output in zip(policy, result.loss_fn_outputs, strict=True):
        q, logp = data.loss_fn_inputs["logprobs"].tolist(), output["logprobs"].tolist()
        log_ratios += [lp - s for lp, s in zip(logp[len(prompt) - 1 :], q[len(prompt) - 1 :], strict=True)]
    k1 = -sum(log_ratios) / len(log_ratios)
    k3 = sum(math.exp(lr) - lr - 1 for lr in log_ratios) / len(log_ratios)
    assert k3 > 1e-4  # the learner moved away from the sampler

    assert result.metrics["kl_sampler_k1:mean"] == pytest.approx(k1, rel=1e-3, abs=1e-6)
    assert result.metrics["kl_sampler_k3:mean"] == pytest.approx(k3, rel=1e-3, abs=1e-6)
