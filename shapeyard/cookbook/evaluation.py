"""Evaluators: scores of the policy a recipe trains, each an object called with no arguments, so a recipe names
them once (`{"exact_match": DeploymentExactMatch(...)}`) and scores them whenever its cadence says.

The deployment's evaluators sample the run's deployment (which serves the policy once its weights are hot-loaded);
they read the reference answer as the last (assistant) message of each chat example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from shapeyard.client.sampling import DeploymentSampler
from shapeyard.models.chat import Message, render_chat, render_prompt

Example = dict[str, list[Message]]


class Evaluator(Protocol):
    def __call__(self) -> float: ...


def answer(example: Example) -> str:
    return example["messages"][-1]["content"].strip()


@dataclass
class DeploymentExactMatch:
    """The share of examples whose greedy answer, sampled from the deployment, is the reference answer."""

    sampler: DeploymentSampler
    tokenizer: Any
    examples: list[Example]
    max_tokens: int = 8

    def __call__(self) -> float:
        prompts = [render_prompt(self.tokenizer, e["messages"][:-1]) for e in self.examples]
        stops = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        sampled = self.sampler.sample_batch(prompts, max_tokens=self.max_tokens, temperature=0.0, stop_token_ids=stops)
        answers = [self.tokenizer.decode(s.tokens, skip_special_tokens=True).strip() for s in sampled]
        return sum(a == answer(e) for a, e in zip(answers, self.examples, strict=True)) / len(self.examples)


@dataclass
class DeploymentHeldoutLoss:
    """Mean negative log-likelihood per assistant token, from the deployment's prompt logprobs."""

    sampler: DeploymentSampler
    tokenizer: Any
    examples: list[Example]

    def __call__(self) -> float:
        rendered = [render_chat(self.tokenizer, e["messages"]) for e in self.examples]
        scored = self.sampler.sample_batch([ids for ids, _ in rendered], max_tokens=0, prompt_logprobs=True)
        total = tokens = 0.0
        for (_, weights), sequence in zip(rendered, scored, strict=True):
            for logprob, weight in zip(sequence.prompt_logprobs[1:], weights[1:], strict=True):
                total -= weight * logprob
                tokens += weight
        return total / tokens
