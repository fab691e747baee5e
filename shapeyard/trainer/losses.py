"""Built-in losses, token-wise and summed (never averaged), as the Tinker docs define them.

Notation per datum: logp = the model's log-probability of each target token, q = `logprobs` input (the sampler's),
A = `advantages`, r = exp(logp - q).

    cross_entropy        -sum(w * logp)                          w = `weights` (default 1; may be negative)
    importance_sampling  -sum(r * A)
    ppo                  -sum(min(r * A, clip(r, lo, hi) * A))
    cispo                -sum(stopgrad(clip(r, lo, hi)) * A * logp)
    dro                  -sum(logp * A - beta/2 * (logp - q)^2)

Each loss validates its inputs and config, so bad input fails before anything is computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from shapeyard.errors import InvalidArgument

Inputs = Mapping[str, Tensor]
TokenLoss = Callable[[Tensor, Inputs, Mapping[str, float]], Tensor]


@dataclass(frozen=True)
class LossSpec:
    fn: TokenLoss
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    config: Mapping[str, float] = field(default_factory=dict)  # accepted keys and their defaults

    def loss_mask(self, inputs: Inputs, length: int) -> Tensor:
        """Positions that carry loss: nonzero weight (cross-entropy) or nonzero advantage / sampler logprob."""
        if "weights" in inputs:
            return inputs["weights"] != 0
        if "advantages" in inputs:
            return (inputs["advantages"] != 0) | (inputs["logprobs"] != 0)
        return torch.ones(length, dtype=torch.bool)


def _ratio(logp: Tensor, inputs: Inputs, config: Mapping[str, float]) -> Tensor:
    log_ratio = logp - inputs["logprobs"]
    cap = config.get("ratio_log_cap")
    if cap is not None and cap > 0:
        log_ratio = log_ratio.clamp(max=cap)
    return log_ratio.exp()


def _cross_entropy(logp: Tensor, inputs: Inputs, config: Mapping[str, float]) -> Tensor:
    weights = inputs.get("weights")
    return -logp if weights is None else -(weights * logp)


def _importance_sampling(logp: Tensor, inputs: Inputs, config: Mapping[str, float]) -> Tensor:
    return -(_ratio(logp, inputs, config) * inputs["advantages"])


def _ppo(logp: Tensor, inputs: Inputs, config: Mapping[str, float]) -> Tensor:
    ratio, advantages = _ratio(logp, inputs, config), inputs["advantages"]
    clipped = ratio.clamp(config["clip_low_threshold"], config["clip_high_threshold"])
    return -torch.minimum(ratio * advantages, clipped * advantages)


def _cispo(logp: Tensor, inputs: Inputs, config: Mapping[str, float]) -> Tensor:
    ratio = _ratio(logp, inputs, config).clamp(config["clip_low_threshold"], config["clip_high_threshold"])
    return -(ratio.detach() * inputs["advantages"] * logp)


def _dro(logp: Tensor, inputs: Inputs, config: Mapping[str, float]) -> Tensor:
    return -(logp * inputs["advantages"] - 0.5 * config["beta"] * (logp - inputs["logprobs"]) ** 2)


_POLICY_INPUTS = ("target_tokens", "logprobs", "advantages")
_CLIP = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
LOSSES: dict[str, LossSpec] = {
    "cross_entropy": LossSpec(_cross_entropy, ("target_tokens",), ("weights",)),
    "importance_sampling": LossSpec(_importance_sampling, _POLICY_INPUTS, config={"ratio_log_cap": 0.0}),
    "ppo": LossSpec(_ppo, _POLICY_INPUTS, config={**_CLIP, "ratio_log_cap": 0.0}),
    "cispo": LossSpec(_cispo, _POLICY_INPUTS, config={**_CLIP, "ratio_log_cap": 0.0}),
    "dro": LossSpec(_dro, _POLICY_INPUTS, config={"beta": 0.05}),
}
# Options of the fireworks client that ride in loss_fn_config and change nothing here.
_IGNORED_CONFIG = frozenset({"target_logprob_support"})


def loss_spec(name: str) -> LossSpec:
    if name not in LOSSES:
        raise InvalidArgument(f"unknown loss_fn {name!r}; built-in losses: {', '.join(LOSSES)}")
    return LOSSES[name]


def resolve_config(name: str, config: Mapping[str, Any] | None) -> dict[str, float]:
    spec = loss_spec(name)
    resolved = dict(spec.config)
    for key, value in (config or {}).items():
        if key in _IGNORED_CONFIG:
            continue
        if key not in spec.config:
            allowed = ", ".join(spec.config) or "none"
            raise InvalidArgument(f"loss_fn_config key {key!r} is not used by {name}; accepted keys: {allowed}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidArgument(f"loss_fn_config.{key} must be a finite number, got {value!r}")
        resolved[key] = float(value)
    if "clip_low_threshold" in resolved and not 0 <= resolved["clip_low_threshold"] <= resolved["clip_high_threshold"]:
        raise InvalidArgument(
            "loss_fn_config needs 0 <= clip_low_threshold <= clip_high_threshold, got "
            f"{resolved['clip_low_threshold']} and {resolved['clip_high_threshold']}"
        )
    return resolved
