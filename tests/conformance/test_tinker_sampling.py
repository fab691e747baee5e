"""The official tinker client samples through shapeyard: sample with logprobs, compute_logprobs, and
save_weights_and_get_sampling_client on the weights the trainer just wrote."""

from __future__ import annotations

import pytest
import tinker

from tests.helpers import RunningServer

PROMPT = [1, 20, 21, 22, 23]


def test_sampling_logprobs_match_the_trainer(training_server: RunningServer):
    service = tinker.ServiceClient(base_url=training_server.base_url, api_key=training_server.tinker_key)
    training = service.create_lora_training_client(base_model="tiny-qwen3", rank=8)
    target = [*PROMPT, 30, 31, 32]
    weights = [0.0] * (len(PROMPT) - 1) + [1.0] * 3  # learn the continuation only
    datum = tinker.Datum(
        model_input=tinker.ModelInput.from_ints(target[:-1]),
        loss_fn_inputs={"target_tokens": target[1:], "weights": weights},
    )
    for _ in range(30):
        training.forward_backward([datum], "cross_entropy")
        training.optim_step(tinker.AdamParams(learning_rate=2e-2))

    sampler = training.save_weights_and_get_sampling_client()
    params = tinker.SamplingParams(max_tokens=3, temperature=1.0, seed=3)
    response = sampler.sample(tinker.ModelInput.from_ints(PROMPT), 2, params, include_prompt_logprobs=True).result()
    assert len(response.sequences) == 2
    assert response.prompt_logprobs[0] is None and len(response.prompt_logprobs) == len(PROMPT)
    sequence = response.sequences[0]
    assert sequence.stop_reason == "length" and len(sequence.tokens) == len(sequence.logprobs) == 3

    # the trainer's forward logprobs of the same tokens, under the weights the sampler loaded
    full = PROMPT + sequence.tokens
    forward = training.forward(
        [tinker.Datum(model_input=tinker.ModelInput.from_ints(full[:-1]), loss_fn_inputs={"target_tokens": full[1:]})],
        "cross_entropy",
    ).result()
    trainer_logprobs = forward.loss_fn_outputs[0]["logprobs"].tolist()
    assert sequence.logprobs == pytest.approx(trainer_logprobs[len(PROMPT) - 1 :], abs=1e-4)
    assert response.prompt_logprobs[1:] == pytest.approx(trainer_logprobs[: len(PROMPT) - 1], abs=1e-4)

    computed = sampler.compute_logprobs(tinker.ModelInput.from_ints(full)).result()
    assert computed[0] is None and computed[1:] == pytest.approx(trainer_logprobs, abs=1e-4)

    greedy = tinker.SamplingParams(max_tokens=4, temperature=0)
    greedy_tokens = sampler.sample(tinker.ModelInput.from_ints(PROMPT), 1, greedy).result().sequences[0].tokens

    # a sampler on a saved path, and one on the untouched base model
    path = training.save_weights_for_sampler("trained").result().path
    assert path.startswith("tinker://sl-") and path.endswith("/sampler_weights/trained")
    by_path = service.create_sampling_client(model_path=path)
    assert by_path.sample(tinker.ModelInput.from_ints(PROMPT), 1, greedy).result().sequences[0].tokens == greedy_tokens
    assert by_path.compute_logprobs(tinker.ModelInput.from_ints(full)).result() == pytest.approx(computed, abs=1e-5)
    base = service.create_sampling_client(base_model="tiny-qwen3")
    base_logprobs = base.compute_logprobs(tinker.ModelInput.from_ints(full)).result()
    assert base_logprobs[1:] != pytest.approx(trainer_logprobs, abs=1e-3)
