"""Built-in losses, token-wise and summed (never averaged), as the Tinker docs define them.

Notation per datum: logp = the model's log-probability of each target token, q = `logprobs` input (the sampler's),
A = `advantages`, r = exp(logp - q), sg = stop-gradient, M = the loss positions (A != 0 or q != 0).

    cross_entropy        -sum(w * logp)                          w = `weights` (default 1; may be negative)
    importance_sampling  -sum(r * A)
    ppo                  -sum(ppo_t),  ppo_t = min(r * A, clip(r, lo, hi) * A)
    cispo                -sum(sg(clip(r, lo, hi)) * A * logp)
    dro                  -sum(logp * A - beta/2 * (logp - q)^2)
    dapo                 -sum(max(ppo_t, c * A) where A < 0, else ppo_t)       c = eps_clip_c (dual clip)
    gspo                 -sum over M of min(s_t * A, clip(s_t, lo, hi) * A)     s_t = sg(s) * exp(logp - sg(logp)),
                         s = exp(mean over M of (logp - q)), the geometric mean of the datum's token ratios

gspo is GSPO-token: each token carries the sequence ratio s, its gradient flowing through that token's logprob;
with an advantage constant over the datum this is GSPO's sequence-level objective times |M|. `ratio_log_cap` and
`seq_ratio_log_cap` cap log r and log s before exp (0: off).

Metrics of the losses that take `logprobs`, means over the loss positions M of all the request's data (gspo's
clip fractions: over its sequences with any loss position). The official clients merge the `:mean` metrics of a
chunked request weighted by each chunk's number of data.
    kl_sampler_k1:mean   q - logp                      estimates KL(sampler || learner) from the sampler's tokens
    kl_sampler_k3:mean   r - 1 - log r                 the same KL, unbiased and never negative
    ratio:mean           r (uncapped)
    clip_low_frac:mean   r < lo      clip_high_frac:mean   r > hi      (ppo, cispo, dapo; r as the loss caps it)
    dual_clip_frac:mean  A < 0 and max(r, lo) > c: the dual clip set the loss (dapo)
    seq_clip_low_frac:mean   s < lo      seq_clip_high_frac:mean   s > hi      (gspo)

Each loss validates its inputs and config, so bad input fails before anything is computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from shapeyard.wire.errors import InvalidArgument

Inputs = Mapping[str, Tensor]
TokenLoss = Callable[[Tensor, Inputs, Mapping[str, float]], Tensor]
# A datum's share of each metric: metric key -> tensor([sum over its units, number of units]). Shares add up over a
# request's data, and the metric is their quotient; they stay tensors so that no datum waits on the device.
Shares = dict[str, Tensor]
ClipShares = Callable[[Tensor, Inputs, Mapping[str, float], Tensor], Shares]


def _policy_mask(inputs: Inputs) -> Tensor:
    return (inputs["advantages"] != 0) | (inputs["logprobs"] != 0)


def _share(values: Tensor, mask: Tensor) -> Tensor:
    return torch.stack([torch.where(mask, values, 0).double().sum(), mask.double().sum()])


@dataclass(frozen=True)
class LossSpec:
    fn: TokenLoss
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    config: Mapping[str, float] = field(default_factory=dict)  # accepted keys and their defaults
    clip_shares: ClipShares | None = None  # the loss's clip fractions

    def loss_mask(self, inputs: Inputs, length: int) -> Tensor:
        """Positions that carry loss: nonzero weight (cross-entropy) or nonzero advantage / sampler logprob."""
        if "weights" in inputs:
            return inputs["weights"] != 0
        if "advantages" in inputs:
            return _policy_mask(inputs)
        return torch.ones(length, dtype=torch.bool)

    def metric_shares(self, logp: Tensor, inputs: Inputs, config: Mapping[str, float]) -> Shares:
        """One datum's shares of the RL metrics (see the module docstring); none for cross-entropy."""
        if "logprobs" not in self.required:
            return {}
        logp = logp.detach()
        mask = _policy_mask(inputs)
        log_ratio = logp.double() - inputs["logprobs"].double()
        ratio = log_ratio.exp()
        shares = {
            "kl_sampler_k1:mean": _share(-log_ratio, mask),
            "kl_sampler_k3:mean": _share(ratio - 1 - log_ratio, mask),
            "ratio:mean": _share(ratio, mask),
        }
        if self.clip_shares is not None:
            shares.update(self.clip_shares(logp, inputs, config, mask))
        return shares


def _capped(log_ratio: Tensor, cap: float | None) -> Tensor:
    return log_ratio.clamp(max=cap) if cap is not None and cap > 0 else log_ratio


def _ratio(logp: Tensor, inputs: Inputs, config: Mapping[str, float]) -> Tensor:
    return _capped(logp - inputs["logprobs"], config.get("ratio_log_cap")).exp()


def _clipped_objective(ratio: Tensor, advantages: Tensor, config: Mapping[str, float]) -> Tensor:
    clipped = ratio.clamp(config["clip_low_threshold"], config["clip_high_threshold"])
    return torch.minimum(ratio * advantages, clipped * advantages)


def _sequence_log_ratio(logp: Tensor, inputs: Inputs, config: Mapping[str, float]) -> Tensor:
    """log s: the mean of log r over the loss positions (0 when there are none), capped."""
    mask = _policy_mask(inputs)
    mean = torch.where(mask, logp - inputs["logprobs"], 0).sum() / mask.sum().clamp(min=1)
    return _capped(mean, config["seq_ratio_log_cap"])


def _cross_entropy(logp: Tensor, inputs: Inputs, config: Mapping[str, float]) -> Tensor:
    weights = inputs.get("weights")
    return -logp if weights is None else -(weights * logp)


def _importance_sampling(logp: Tensor, inputs: Inputs, config: Mapping[str, float]) -> Tensor:
    return -(_ratio(logp, inputs, config) * inputs["advantages"])


def _ppo(logp: Tensor, inputs: Inputs, config: Mapping[str, float]) -> Tensor:
    return -_clipped_objective(_ratio(logp, inputs, config), inputs["advantages"], config)


def _cispo(logp: Tensor, inputs: Inputs, config: Mapping[str, float]) -> Tensor:
    ratio = _ratio(logp, inputs, config).clamp(config["clip_low_threshold"], config["clip_high_threshold"])
    return -(ratio.detach() * inputs["advantages"] * logp)


def _dro(logp: Tensor, inputs: Inputs, config: Mapping[str, float]) -> Tensor:
    return -(logp * inputs["advantages"] - 0.5 * config["beta"] * (logp - inputs["logprobs"]) ** 2)


def _dapo(logp: Tensor, inputs: Inputs, config: Mapping[str, float]) -> Tensor:
    # The dual clip bounds a negative advantage's loss by c * |A|: a token the learner already prefers far more
    # than the sampler did is not pushed down ever harder.
    advantages = inputs["advantages"]
    loss = _ppo(logp, inputs, config)
    return torch.where(advantages < 0, torch.minimum(loss, -config["eps_clip_c"] * advantages), loss)


def _gspo(logp: Tensor, inputs: Inputs, config: Mapping[str, float]) -> Tensor:
    sequence_ratio = _sequence_log_ratio(logp.detach(), inputs, config).exp()
    ratio = sequence_ratio * (logp - logp.detach()).exp()  # the value s, the gradient of this token's ratio
    return -_clipped_objective(ratio, inputs["advantages"], config)  # A = 0 off the loss positions


def _token_clip_shares(logp: Tensor, inputs: Inputs, config: Mapping[str, float], mask: Tensor) -> Shares:
    ratio = _ratio(logp, inputs, config)
    return {
        "clip_low_frac:mean": _share(ratio < config["clip_low_threshold"], mask),
        "clip_high_frac:mean": _share(ratio > config["clip_high_threshold"], mask),
    }


def _dapo_clip_shares(logp: Tensor, inputs: Inputs, config: Mapping[str, float], mask: Tensor) -> Shares:
    # For A < 0 the PPO loss is |A| * max(r, lo): the dual clip's c * |A| is below it exactly when max(r, lo) > c
    ratio = _ratio(logp, inputs, config).clamp(min=config["clip_low_threshold"])
    dual = (inputs["advantages"] < 0) & (ratio > config["eps_clip_c"])
    return {**_token_clip_shares(logp, inputs, config, mask), "dual_clip_frac:mean": _share(dual, mask)}


def _sequence_clip_shares(logp: Tensor, inputs: Inputs, config: Mapping[str, float], mask: Tensor) -> Shares:
    ratio = _sequence_log_ratio(logp, inputs, config).exp()
    return {
        "seq_clip_low_frac:mean": _share(ratio < config["clip_low_threshold"], mask.any()),
        "seq_clip_high_frac:mean": _share(ratio > config["clip_high_threshold"], mask.any()),
    }


_POLICY_INPUTS = ("target_tokens", "logprobs", "advantages")
_CLIP = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
LOSSES: dict[str, LossSpec] = {
    "cross_entropy": LossSpec(_cross_entropy, ("target_tokens",), ("weights",)),
    "importance_sampling": LossSpec(_importance_sampling, _POLICY_INPUTS, config={"ratio_log_cap": 0.0}),
    "ppo": LossSpec(_ppo, _POLICY_INPUTS, config={**_CLIP, "ratio_log_cap": 0.0}, clip_shares=_token_clip_shares),
    "cispo": LossSpec(_cispo, _POLICY_INPUTS, config={**_CLIP, "ratio_log_cap": 0.0}, clip_shares=_token_clip_shares),
    "dro": LossSpec(_dro, _POLICY_INPUTS, config={"beta": 0.05}),
    # DAPO's clip-higher (eps 0.2 / 0.28) and the dual-clip PPO paper's c = 3
    "dapo": LossSpec(
        _dapo,
        _POLICY_INPUTS,
        config={"clip_low_threshold": 0.8, "clip_high_threshold": 1.28, "ratio_log_cap": 20.0, "eps_clip_c": 3.0},
        clip_shares=_dapo_clip_shares,
    ),
    # The GSPO paper's range: a sequence ratio drifts far less than a token's
    "gspo": LossSpec(
        _gspo,
        _POLICY_INPUTS,
        config={"clip_low_threshold": 1 - 3e-4, "clip_high_threshold": 1 + 4e-4, "seq_ratio_log_cap": 10.0},
        clip_shares=_sequence_clip_shares,
    ),
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
    if "eps_clip_c" in resolved and not resolved["eps_clip_c"] > 1:
        raise InvalidArgument(
            f"loss_fn_config.eps_clip_c (the dual clip) must be greater than 1, got {resolved['eps_clip_c']}"
        )
    return resolved
