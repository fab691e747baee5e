"""Sampling from a deployment, and keeping it on the trainer's latest weights.

sampler = DeploymentSampler(base_url, api_key, "accounts/local/deployments/my-dep")
syncer = WeightSyncer(training_client, control_client, "my-dep")
syncer.save_and_hotload("step-10")            # snapshot -> every replica serves it
sampler.sample(prompt_tokens, n=4, max_tokens=32, temperature=1.0)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from shapeyard.client.control import ControlClient
from shapeyard.client.http import check, session
from shapeyard.client.training import TrainingClient
from shapeyard.wire import routes
from shapeyard.wire.inference import CompletionChoice, CompletionRequest, CompletionResponse

RETRY_STATUSES = {425, 503}  # hot-load in progress; no replica ready yet


@dataclass
class Completion:
    """One sampled completion of a prompt."""

    tokens: list[int]
    logprobs: list[float]  # the model's (temperature 1) logprob of each token: what the trainer's forward computes
    sampling_logprobs: list[float]  # under the distribution sampled from (temperature, top-k, top-p)
    finish_reason: str  # "stop" or "length"
    text: str
    prompt_logprobs: list[float | None] | None = None


class DeploymentSampler:
    """Completions of a deployment, with the logprobs a trainer needs. Errors raise `shapeyard.client.ApiError`;
    425 (hot-load in progress) and 503 (no replica ready yet) are retried for `retry_for` seconds."""

    def __init__(self, base_url: str, api_key: str, deployment: str, timeout: float = 300.0) -> None:
        self.deployment = deployment
        self._http = session(base_url, api_key, timeout)

    def close(self) -> None:
        self._http.close()

    def sample(self, prompt: list[int], **options: Any) -> list[Completion]:
        """`n` samples of one prompt."""
        return self.sample_batch([prompt], **options)

    def sample_batch(
        self,
        prompts: list[list[int]],
        *,
        n: int = 1,
        max_tokens: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: list[str] | None = None,
        stop_token_ids: list[int] | None = None,
        prompt_logprobs: bool = False,
        retry_for: float = 120.0,
    ) -> list[Completion]:
        """One request for all prompts (the replica decodes them as one batch): `n` samples per prompt, in order."""
        request = CompletionRequest(
            model=self.deployment,
            prompt=prompts,
            n=n,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=stop,
            stop_token_ids=stop_token_ids,
            logprobs=True,
            echo=prompt_logprobs,
        )
        answer = self._post(request, retry_for)
        lengths = [len(prompt) for prompt in prompts for _ in range(n)]
        return [
            _completion(choice, length, prompt_logprobs) for choice, length in zip(answer.choices, lengths, strict=True)
        ]

    def _post(self, request: CompletionRequest, retry_for: float) -> CompletionResponse:
        deadline = time.monotonic() + retry_for
        while True:
            response = self._http.post(routes.COMPLETIONS, json=request.to_json_dict())
            if response.status_code in RETRY_STATUSES and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            return CompletionResponse.model_validate(check(response))


def _completion(choice: CompletionChoice, prompt_length: int, echoed: bool) -> Completion:
    assert choice.logprobs is not None and choice.raw_output is not None, "requested with logprobs"
    entries = choice.logprobs.content
    tokens = choice.raw_output.completion_token_ids
    prompt_logprobs = None
    if echoed:  # the prompt's tokens come first, the first of them without a logprob
        prompt_logprobs = [None] + [entry.logprob for entry in entries[1:prompt_length]]
        tokens, entries = tokens[prompt_length:], entries[prompt_length:]
    return Completion(
        tokens=tokens,
        logprobs=[entry.logprob for entry in entries],
        sampling_logprobs=[entry.sampling_logprob for entry in entries],
        finish_reason=choice.finish_reason,
        text=choice.text,
        prompt_logprobs=prompt_logprobs,
    )


class HotLoadError(RuntimeError):
    pass


def hot_load_and_wait(control: ControlClient, deployment_id: str, identity: str, timeout: float = 600.0) -> None:
    """Returns once every replica serves `identity`; raises with the replica's error if a load failed."""
    control.hot_load(deployment_id, identity)
    deadline = time.monotonic() + timeout
    while True:
        first = control.hot_load_status(deployment_id).replicas[:1]  # the replica furthest behind
        if not first:
            return  # scaled to zero: replicas load it when they start
        replica = first[0]
        if replica.loading_state.stage == "error" and replica.loading_state.target_snapshot_identity == identity:
            raise HotLoadError(f"replica {replica.replica} could not load {identity}: {replica.loading_state.error}")
        if replica.readiness and replica.current_snapshot_identity == identity:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{deployment_id} did not load {identity} within {timeout:.0f} s")
        time.sleep(0.2)


class WeightSyncer:
    """Saves a sampler snapshot on the trainer and hot-loads it into the job's deployment."""

    def __init__(self, training: TrainingClient, control: ControlClient, deployment_id: str) -> None:
        self.training, self.control, self.deployment_id = training, control, deployment_id

    def save_and_hotload(self, name: str, timeout: float = 600.0) -> str:
        identity = self.training.save_weights_for_sampler(name).result().path
        self.hotload(identity, timeout)
        return identity

    def hotload(self, identity: str, timeout: float = 600.0) -> None:
        hot_load_and_wait(self.control, self.deployment_id, identity, timeout)
