"""Sampling as the trainer's sampling sessions and the deployment workers need it: the request and result types,
their validation, and the interface a sampling backend implements.

A backend holds one base model and at most one snapshot on it (a trainer's sampler weights: a full HF directory or
a PEFT LoRA adapter). It decodes all requests of a `sample` call together and returns, for every generated token,
the model's raw logprob (what a trainer's forward pass computes for the same tokens) and its logprob under the
distribution actually sampled from. `load_snapshot` swaps a snapshot in only after reading and validating all of
it, so a bad snapshot leaves the previous weights serving. The transformers backend is
`shapeyard.models.transformers_sampler`; another engine (vLLM) is another implementation of `SamplingBackend`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

from transformers import PreTrainedTokenizerBase

from shapeyard.wire.errors import InvalidArgument


class SnapshotError(Exception):
    """A snapshot that cannot be served: missing, unreadable, or not made for this base model."""


class DecodingFields(Protocol):
    """What both wire forms of sampling parameters (the trainer protocol's and the completions API's) carry."""

    temperature: float
    top_p: float
    top_k: int
    seed: int | None

    def stop_strings(self) -> list[str]: ...

    def stop_ids(self) -> list[int]: ...


@dataclass
class DecodingParams:
    max_tokens: int = 16  # 0 only scores the prompt (with prompt_logprobs)
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 = off
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)  # matched on the decoded completion text

    @classmethod
    def of(cls, fields: DecodingFields, max_tokens: int, extra_stop_ids: Sequence[int] = ()) -> DecodingParams:
        """From a request's wire fields; `extra_stop_ids` stop decoding too (the chat template's end of turn)."""
        return cls(
            max_tokens=max_tokens,
            temperature=fields.temperature,
            top_p=fields.top_p,
            top_k=max(fields.top_k, 0),
            seed=fields.seed,
            stop_token_ids=[*fields.stop_ids(), *extra_stop_ids],
            stop=fields.stop_strings(),
        )

    def for_sample(self, index: int) -> DecodingParams:
        """The i-th of n samples of one request: a seeded request gives each its own seed, so that they differ
        yet stay reproducible."""
        return self if self.seed is None or index == 0 else replace(self, seed=self.seed + index)


@dataclass
class GenerationRequest:
    prompt: list[int]
    params: DecodingParams = field(default_factory=DecodingParams)
    prompt_logprobs: bool = False


@dataclass
class Generation:
    prompt: list[int]
    tokens: list[int]  # ends with the stop token, or with the token that completed a stop string
    logprobs: list[float]  # raw model logprobs (temperature 1, no filtering), as a trainer's forward pass computes
    sampling_logprobs: list[float]  # under the distribution sampled from; 0.0 for greedy
    finish_reason: Literal["stop", "length"]
    text: str  # decoded tokens, without a final stop token, cut before the first stop string
    prompt_logprobs: list[float | None] | None  # [None, logp(prompt[1] | prompt[:1]), ...] when requested


class SamplingBackend(Protocol):
    tokenizer: PreTrainedTokenizerBase
    vocab_size: int
    max_context_length: int

    @property
    def identity(self) -> str | None:
        """The snapshot served; None while serving the base model."""

    def sample(self, requests: list[GenerationRequest]) -> list[Generation]:
        """Decodes all requests in one batch. Raises InvalidArgument, before any work, for a bad request."""

    def load_snapshot(self, directory: Path, identity: str) -> None:
        """Serves a snapshot from now on. Raises SnapshotError, with the previous weights still serving, when it
        cannot be served."""


def validate(request: GenerationRequest, index: int, vocab_size: int, max_context_length: int) -> None:
    where = f"request {index}"
    params = request.params
    if not request.prompt:
        raise InvalidArgument(f"{where}: prompt is empty; send at least one token")
    _check_token_ids(request.prompt, f"{where}: prompt", vocab_size)
    _check_token_ids(params.stop_token_ids, f"{where}: stop_token_ids", vocab_size)
    if not isinstance(params.max_tokens, int) or params.max_tokens < 0:
        raise InvalidArgument(f"{where}: max_tokens must be an integer >= 0, got {params.max_tokens!r}")
    if len(request.prompt) + params.max_tokens > max_context_length:
        raise InvalidArgument(
            f"{where}: prompt ({len(request.prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the max "
            f"context length {max_context_length}"
        )
    if not math.isfinite(params.temperature) or params.temperature < 0:
        raise InvalidArgument(f"{where}: temperature must be >= 0 (0 is greedy), got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise InvalidArgument(f"{where}: top_p must be in (0, 1], got {params.top_p}")
    if not isinstance(params.top_k, int) or params.top_k < -1:
        raise InvalidArgument(f"{where}: top_k must be a positive integer, or 0 or -1 for off, got {params.top_k!r}")
    if params.seed is not None and not isinstance(params.seed, int):
        raise InvalidArgument(f"{where}: seed must be an integer, got {params.seed!r}")
    if any(not isinstance(s, str) or not s for s in params.stop):
        raise InvalidArgument(f"{where}: stop strings must be non-empty strings, got {params.stop!r}")


def _check_token_ids(tokens: Sequence[int], where: str, vocab_size: int) -> None:
    bad = next((t for t in tokens if not isinstance(t, int) or not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidArgument(f"{where}: token id {bad!r} is outside the vocabulary (0..{vocab_size - 1})")
