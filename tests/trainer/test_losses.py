"""The built-in losses, checked against an independent computation: target-token logprobs from a plain
transformers copy of the tiny model, and each loss written here from its Tinker definition (token-wise sums)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from shapeyard.models import tiny
from shapeyard.models.loading import load_model, load_tokenizer
from shapeyard.trainer.backend import BackendConfig
from shapeyard.trainer.losses import resolve_config
from shapeyard.trainer.spmd import SpmdBackend
from shapeyard.trainer.world import World
from shapeyard.wire.errors import FailedPrecondition, InvalidArgument, NotFound
from shapeyard.wire.trainer import Datum, ImageChunk, LoraConfig, ModelInput, TensorData
from tests.helpers import WireBackend, cpu_recipe

torch.set_num_threads(1)

MAX_CONTEXT = 2048
VOCAB = tiny.VOCAB_SIZE
LENGTHS = (6, 11, 8)  # unequal, so the backend pads


def make_backend(path: str, job_dir: Path, rank: int = 0) -> tuple[WireBackend, str]:
    config = BackendConfig(
        base_model="accounts/fireworks/models/tiny-qwen3",
        model_path=path,
        device="cpu",
        max_context_length=MAX_CONTEXT,
        lora_rank=rank,
        max_lora_rank=64,
        forward_only=False,
        recipe=cpu_recipe(MAX_CONTEXT),
        seed=0,
    )
    backend = WireBackend(
        SpmdBackend(config, load_model(path, "cpu"), load_tokenizer(path), World(rank=0, size=1, device="cpu")), job_dir
    )
    model_id, _ = backend.create_model(LoraConfig(rank=rank, alpha=32) if rank else LoraConfig(rank=0), base_only=False)
    return backend, model_id


def sequences(seed: int, lengths: tuple[int, ...] = LENGTHS) -> list[tuple[list[int], list[int]]]:
    """(model_input tokens, target tokens = the next tokens) per datum."""
    generator = torch.Generator().manual_seed(seed)
    result = []
    for length in lengths:
        seq = torch.randint(3, 99, (length + 1,), generator=generator).tolist()
        result.append((seq[:-1], seq[1:]))
    return result


def datum(tokens: list[int], **inputs: Any) -> Datum:
    return Datum(model_input=ModelInput.from_ints(tokens), loss_fn_inputs=inputs)


@pytest.fixture(scope="module")
def model_path() -> str:
    return str(tiny.ensure_tiny_model())


@pytest.fixture(scope="module")
def backend(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[WireBackend, str]:
    """A full-parameter backend shared by tests that only read (forward without backward, or requests that fail)."""
    return make_backend(model_path, tmp_path_factory.mktemp("losses"))


@pytest.fixture(scope="module")
def reference(model_path: str) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, local_files_only=True)
    return model.eval()


def reference_logprobs(model: torch.nn.Module, tokens: list[int], targets: list[int]) -> torch.Tensor:
    """log p(target_t | tokens[:t+1]) for one unpadded sequence."""
    logits = model(input_ids=torch.tensor([tokens])).logits[0].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(targets)[:, None])[:, 0]


# The documented defaults: DAPO's eps 0.2 / 0.28 with ratio_log_cap 20 and dual-clip PPO's c = 3; GSPO's 3e-4 / 4e-4
# with seq_ratio_log_cap 10.
DEFAULTS = {
    "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2, "ratio_log_cap": 0.0},
    "dapo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.28, "ratio_log_cap": 20.0, "eps_clip_c": 3.0},
    "gspo": {"clip_low_threshold": 1 - 3e-4, "clip_high_threshold": 1 + 4e-4, "seq_ratio_log_cap": 10.0},
}


def expected_token_losses(
    loss_fn: str, logp: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict
) -> torch.Tensor:
    """The Tinker definitions; logp = model logprob, q = sampler logprob, A = advantage, r = exp(logp - q).
    dapo: PPO with DAPO's asymmetric range and dual-clip PPO's bound; gspo: the GSPO paper's sequence-level
    objective on every loss token (its gradient is GSPO's when A is constant over the datum)."""
    if loss_fn == "cross_entropy":
        return -(inputs.get("weights", torch.ones_like(logp)) * logp)
    q, advantages = inputs["logprobs"], inputs["advantages"]
    if loss_fn == "dro":
        beta = config.get("beta", 0.05)
        return -(logp * advantages - beta / 2 * (logp - q) ** 2)
    defaults = DEFAULTS.get(loss_fn, DEFAULTS["ppo"])
    low = config.get("clip_low_threshold", defaults["clip_low_threshold"])
    high = config.get("clip_high_threshold", defaults["clip_high_threshold"])
    if loss_fn == "gspo":
        live = ((advantages != 0) | (q != 0)).to(logp.dtype)
        log_s = ((logp - q) * live).sum() / live.sum()
        cap = config.get("seq_ratio_log_cap", defaults["seq_ratio_log_cap"])
        log_s = torch.minimum(log_s, torch.tensor(cap, dtype=logp.dtype))
        s = torch.exp(log_s)
        return -torch.minimum(s * advantages, torch.clamp(s, low, high) * advantages) * live
    log_ratio = logp - q
    cap = config.get("ratio_log_cap", defaults["ratio_log_cap"])
    if cap > 0:
        log_ratio = torch.minimum(log_ratio, torch.full_like(log_ratio, cap))
    ratio = torch.exp(log_ratio)
    if loss_fn == "importance_sampling":
        return -(ratio * advantages)
    clipped = torch.clamp(ratio, low, high)
    objective = torch.minimum(ratio * advantages, clipped * advantages)
    if loss_fn == "ppo":
        return -objective
    if loss_fn == "dapo":
        dual = config.get("eps_clip_c", defaults["eps_clip_c"]) * advantages
        return -torch.where(advantages < 0, torch.maximum(objective, dual), objective)
    assert loss_fn == "cispo"
    return -(clipped.detach() * advantages * logp)


# --- data ---------------------------------------------------------------------------------------------


def cross_entropy_inputs(targets: list[int], index: int, weighted: bool) -> dict[str, list[float]]:
    if not weighted:
        return {}
    # zero prompt weights, negative, fractional and unit weights
    pattern = [0.0, 0.0, 1.0, -0.5, 2.0, 0.25, -1.0, 1.0]
    return {"weights": [pattern[(t + index) % len(pattern)] for t in range(len(targets))]}


def policy_inputs(reference_logp: torch.Tensor, index: int) -> dict[str, list[float]]:
    """Sampler logprobs near the model's (ratios on both sides of the clip range), mixed-sign advantages, and
    prompt positions (logprobs 0, advantage 0) first."""
    generator = torch.Generator().manual_seed(100 + index)
    n = len(reference_logp)
    noise = torch.rand(n, generator=generator) * 1.2 - 0.6
    q = (reference_logp.double() + noise.double()).tolist()
    advantages = (torch.randn(n, generator=generator) * 1.5).tolist()
    q[:2] = [0.0, 0.0]
    advantages[:2] = [0.0, 0.0]
    return {"logprobs": q, "advantages": advantages}


# Per datum of the "sequence" family: the mean log ratio over its loss positions, and its one advantage.
SEQUENCE_LOG_RATIOS = (-0.3, 0.05, 0.3)
SEQUENCE_ADVANTAGES = (1.1, -0.7, 0.9)


def sequence_inputs(reference_logp: torch.Tensor, index: int) -> dict[str, list[float]]:
    """GRPO-style data: one advantage over the completion, and token log ratios whose mean is set, so that with the
    range [0.8, 1.2] the first datum is clipped low (and still has a gradient), the second not, the third clipped
    high (no gradient)."""
    generator = torch.Generator().manual_seed(200 + index)
    n = len(reference_logp)
    noise = torch.rand(n - 2, generator=generator) * 0.4 - 0.2
    log_ratios = noise - noise.mean() + SEQUENCE_LOG_RATIOS[index]
    q = [0.0, 0.0, *(reference_logp[2:].double() - log_ratios.double()).tolist()]
    return {"logprobs": q, "advantages": [0.0, 0.0] + [SEQUENCE_ADVANTAGES[index]] * (n - 2)}


@pytest.fixture(scope="module")
def cases(reference: torch.nn.Module) -> dict[str, list[dict[str, Any]]]:
    """Per loss family, each datum as tokens, targets, reference logprobs and loss inputs."""
    seqs = sequences(0)
    with torch.no_grad():
        logps = [reference_logprobs(reference, tokens, targets) for tokens, targets in seqs]
    built: dict[str, list[dict[str, Any]]] = {"plain": [], "weighted": [], "policy": [], "sequence": []}
    for index, ((tokens, targets), logp) in enumerate(zip(seqs, logps, strict=True)):
        for family, extra in (
            ("plain", cross_entropy_inputs(targets, index, weighted=False)),
            ("weighted", cross_entropy_inputs(targets, index, weighted=True)),
            ("policy", policy_inputs(logp, index)),
            ("sequence", sequence_inputs(logp, index)),
        ):
            built[family].append(
                {"tokens": tokens, "targets": targets, "logp": logp, "inputs": {"target_tokens": targets, **extra}}
            )
    return built


LOSS_CASES = [
    ("cross_entropy", "plain", None),
    ("cross_entropy", "weighted", None),
    ("cross_entropy", "weighted", {"target_logprob_support": 1}),  # a fireworks client option, ignored
    ("importance_sampling", "policy", None),
    ("importance_sampling", "policy", {"ratio_log_cap": 0.2}),
    ("ppo", "policy", None),
    ("ppo", "policy", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}),
    ("ppo", "policy", {"clip_low_threshold": 0.7, "clip_high_threshold": 1.5, "ratio_log_cap": 0.3}),
    ("cispo", "policy", None),
    ("cispo", "policy", {"clip_low_threshold": 0.95, "clip_high_threshold": 1.05}),
    ("dro", "policy", None),
    ("dro", "policy", {"beta": 0.7}),
    ("dapo", "policy", None),
    ("dapo", "policy", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1, "eps_clip_c": 1.2}),
    ("dapo", "policy", {"eps_clip_c": 1.3, "ratio_log_cap": 0.3}),
    ("gspo", "policy", None),
    ("gspo", "sequence", None),
    ("gspo", "sequence", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}),
    ("gspo", "sequence", {"clip_low_threshold": 0.5, "clip_high_threshold": 2.0, "seq_ratio_log_cap": 0.1}),
]


def case_id(case: tuple) -> str:
    loss_fn, family, config = case
    return f"{loss_fn}-{family}-{'-'.join(f'{k}={v}' for k, v in (config or {}).items()) or 'defaults'}"


def as_tensors(inputs: dict[str, list]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in inputs.items() if k != "target_tokens"}


# --- values -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", LOSS_CASES, ids=case_id)
def test_loss_value_and_logprobs_match_independent_computation(backend, cases, case) -> None:
    loss_fn, family, config = case
    trainer, model_id = backend
    items = cases[family]
    out = trainer.forward(
        model_id,
        [datum(item["tokens"], **item["inputs"]) for item in items],
        loss_fn,
        config,
        backward=False,
    )

    # The logprobs the backend computed equal the independent forward pass's, per token; the loss is the loss
    # definition applied to them. (Applied to the independent logprobs instead, the per-token differences the first
    # check allows add up over a sequence, multiplied by the ratios of the policy losses, beyond the loss tolerance.)
    assert len(out.loss_fn_outputs) == len(items)
    expected = 0.0
    for item, output in zip(items, out.loss_fn_outputs, strict=True):
        got = torch.tensor(output["logprobs"].data, dtype=torch.float64)
        assert got.shape == (len(item["tokens"]),)
        torch.testing.assert_close(got, item["logp"].double(), atol=1e-5, rtol=0)
        expected += float(expected_token_losses(loss_fn, got, as_tensors(item["inputs"]), config or {}).sum())
    assert out.metrics["loss:sum"] == pytest.approx(expected, rel=1e-6, abs=1e-5)
    assert abs(expected) > 1e-2  # the check is not vacuous

    assert out.metrics, "a forward reports metrics"
    for key in out.metrics:
        assert key.count(":") == 1, f"metric key {key!r} must be name:reduction"
    if loss_fn == "cross_entropy":
        assert set(out.metrics) == {"loss:sum", "response_tokens:sum"}  # no RL metrics without sampler logprobs
        weights = [w for item in items for w in item["inputs"].get("weights", [1.0] * len(item["targets"]))]
        assert out.metrics["response_tokens:sum"] == sum(1 for w in weights if w != 0)
        if family == "weighted":
            assert out.metrics["response_tokens:sum"] < sum(len(item["targets"]) for item in items)


@pytest.mark.parametrize("loss_fn", DEFAULTS)
def test_defaults_are_the_documented_ones(loss_fn) -> None:
    assert resolve_config(loss_fn, None) == pytest.approx(DEFAULTS[loss_fn], rel=1e-12)


def test_policy_data_exercises_the_clip_range_and_the_cap(cases) -> None:
    """The policy cases above only discriminate min/max, clipping and the cap if ratios fall on every side."""
    log_ratios = []
    for item in cases["policy"]:
        inputs = as_tensors(item["inputs"])
        live = inputs["advantages"] != 0
        log_ratios.append((item["logp"].double() - inputs["logprobs"])[live])
        assert (inputs["advantages"] > 0).any() or (inputs["advantages"] < 0).any()
    ratios = torch.cat(log_ratios).exp()
    assert (ratios < 0.8).any() and (ratios > 1.2).any() and ((ratios > 0.9) & (ratios < 1.1)).any()
    assert (torch.cat(log_ratios) > 0.3).any()
    # dapo's dual clip (c = 1.2 or 1.3) binds on some negative advantages
    negative = torch.cat([as_tensors(item["inputs"])["advantages"] for item in cases["policy"]])
    negative = negative[negative != 0] < 0
    assert (negative & (ratios > 1.3)).any()


def test_sequence_data_has_the_intended_sequence_ratios(cases) -> None:
    for item, log_ratio in zip(cases["sequence"], SEQUENCE_LOG_RATIOS, strict=True):
        inputs = as_tensors(item["inputs"])
        live = inputs["advantages"] != 0
        token_log_ratios = (item["logp"].double() - inputs["logprobs"])[live]
        assert float(token_log_ratios.mean()) == pytest.approx(log_ratio, abs=1e-6)
        assert float(token_log_ratios.std()) > 0.05  # the geometric mean is not just every token's ratio


def test_ppo_clipping_changes_the_loss(backend, cases) -> None:
    """Different clip thresholds give different losses (clipping is applied at all)."""
    trainer, model_id = backend
    data = [datum(item["tokens"], **item["inputs"]) for item in cases["policy"]]
    wide = trainer.forward(model_id, data, "ppo", {"clip_low_threshold": 0.0, "clip_high_threshold": 100.0}, False)
    narrow = trainer.forward(model_id, data, "ppo", {"clip_low_threshold": 0.99, "clip_high_threshold": 1.01}, False)
    unclipped = trainer.forward(model_id, data, "importance_sampling", None, False)
    assert wide.metrics["loss:sum"] == pytest.approx(unclipped.metrics["loss:sum"], rel=1e-6, abs=1e-6)
    assert abs(wide.metrics["loss:sum"] - narrow.metrics["loss:sum"]) > 1e-3


# --- gradients ----------------------------------------------------------------------------------------

GRADIENT_CASES = [
    ("cross_entropy", "weighted", None),
    ("importance_sampling", "policy", {"ratio_log_cap": 0.2}),
    ("ppo", "policy", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}),
    ("cispo", "policy", None),
    ("dro", "policy", {"beta": 0.7}),
    ("dapo", "policy", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1, "eps_clip_c": 1.2}),
    ("gspo", "sequence", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}),
]


@pytest.mark.parametrize("case", GRADIENT_CASES, ids=case_id)
def test_loss_gradients_match_independent_autograd(model_path, tmp_path, reference, cases, case) -> None:
    """The gradient of the summed loss (cispo: the clipped ratio is a constant) equals plain autograd's."""
    loss_fn, family, config = case
    trainer, model_id = make_backend(model_path, tmp_path)
    items = cases[family]
    trainer.forward(model_id, [datum(item["tokens"], **item["inputs"]) for item in items], loss_fn, config, True)

    reference.zero_grad(set_to_none=True)
    for param in reference.parameters():
        param.requires_grad_(True)
    try:
        total = sum(
            expected_token_losses(
                loss_fn,
                reference_logprobs(reference, item["tokens"], item["targets"]),
                {k: v.float() for k, v in as_tensors(item["inputs"]).items()},
                config or {},
            ).sum()
            for item in items
        )
        total.backward()
        expected = {name: param.grad.clone() for name, param in reference.named_parameters()}
    finally:
        reference.zero_grad(set_to_none=True)
        for param in reference.parameters():
            param.requires_grad_(False)

    got = dict(trainer.base.named_parameters())
    assert set(got) == set(expected)
    for name, grad in expected.items():
        assert got[name].grad is not None, name
        torch.testing.assert_close(got[name].grad, grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    assert max(float(g.abs().max()) for g in expected.values()) > 1e-3


def test_cispo_gradient_treats_the_clipped_ratio_as_constant(model_path, tmp_path, cases) -> None:
    """With the ratio a constant, cispo's gradient is that of cross_entropy weighted by clip(r) * A."""
    items = cases["policy"]
    cispo, cispo_id = make_backend(model_path, tmp_path / "cispo")
    cispo.forward(cispo_id, [datum(item["tokens"], **item["inputs"]) for item in items], "cispo", None, True)
    weighted, weighted_id = make_backend(model_path, tmp_path / "ce")
    data = []
    for item in items:
        inputs = as_tensors(item["inputs"])
        ratio = torch.exp(item["logp"].double() - inputs["logprobs"]).clamp(0.8, 1.2)
        data.append(
            datum(item["tokens"], target_tokens=item["targets"], weights=(ratio * inputs["advantages"]).tolist())
        )
    weighted.forward(weighted_id, data, "cross_entropy", None, True)
    for (name, a), (_, b) in zip(cispo.base.named_parameters(), weighted.base.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_gspo_gradient_per_token_carries_the_sequence_ratio(model_path, tmp_path, cases) -> None:
    """GSPO-token with per-token advantages: each token's gradient is that of cross_entropy weighted by s * A_t, and
    none where the min picks the clipped ratio (s > hi with A_t > 0, s < lo with A_t < 0)."""
    items = cases["policy"]
    gspo, gspo_id = make_backend(model_path, tmp_path / "gspo")
    gspo.forward(gspo_id, [datum(item["tokens"], **item["inputs"]) for item in items], "gspo", None, True)
    weighted, weighted_id = make_backend(model_path, tmp_path / "ce")
    data, active = [], 0
    for item in items:
        inputs = as_tensors(item["inputs"])
        live = inputs["advantages"] != 0
        s = torch.exp((item["logp"].double() - inputs["logprobs"])[live].mean())
        advantages = inputs["advantages"]
        clipped = ((s > DEFAULTS["gspo"]["clip_high_threshold"]) & (advantages > 0)) | (
            (s < DEFAULTS["gspo"]["clip_low_threshold"]) & (advantages < 0)
        )
        weights = torch.where(clipped, 0.0, s * advantages)
        active += int((weights != 0).sum())
        data.append(datum(item["tokens"], target_tokens=item["targets"], weights=weights.tolist()))
    assert 0 < active < sum(int((as_tensors(i["inputs"])["advantages"] != 0).sum()) for i in items)
    weighted.forward(weighted_id, data, "cross_entropy", None, True)
    for (name, a), (_, b) in zip(gspo.base.named_parameters(), weighted.base.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


# --- RL metrics ---------------------------------------------------------------------------------------


def expected_metrics(loss_fn: str, items: list[dict[str, Any]], config: dict) -> dict[str, float]:
    """Means over every loss token of the request (token-weighted across data); gspo's clip fractions over its
    sequences. KL(sampler || learner) from the sampler's tokens: k1 = q - logp, k3 = r - 1 - log r."""
    defaults = DEFAULTS.get(loss_fn, DEFAULTS["ppo"])
    low = config.get("clip_low_threshold", defaults["clip_low_threshold"])
    high = config.get("clip_high_threshold", defaults["clip_high_threshold"])
    log_ratios, advantages, sequence_ratios = [], [], []
    for item in items:
        inputs = as_tensors(item["inputs"])
        live = (inputs["advantages"] != 0) | (inputs["logprobs"] != 0)
        log_ratios.append((item["logp"].double() - inputs["logprobs"])[live])
        advantages.append(inputs["advantages"][live])
        sequence_ratios.append(float(log_ratios[-1].mean().exp()))
    log_ratio, advantage = torch.cat(log_ratios), torch.cat(advantages)
    ratio = log_ratio.exp()
    expected = {
        "kl_sampler_k1:mean": float((-log_ratio).mean()),
        "kl_sampler_k3:mean": float((ratio - 1 - log_ratio).mean()),
        "ratio:mean": float(ratio.mean()),
    }
    if loss_fn in ("ppo", "cispo", "dapo"):
        capped = log_ratio.clamp(max=config.get("ratio_log_cap", defaults["ratio_log_cap"]) or math.inf).exp()
        expected["clip_low_frac:mean"] = float((capped < low).double().mean())
        expected["clip_high_frac:mean"] = float((capped > high).double().mean())
        if loss_fn == "dapo":
            dual = (advantage < 0) & (torch.clamp(capped, min=low) > config.get("eps_clip_c", defaults["eps_clip_c"]))
            expected["dual_clip_frac:mean"] = float(dual.double().mean())
    if loss_fn == "gspo":
        expected["seq_clip_low_frac:mean"] = sum(s < low for s in sequence_ratios) / len(items)
        expected["seq_clip_high_frac:mean"] = sum(s > high for s in sequence_ratios) / len(items)
    return expected


METRIC_CASES = [
    ("importance_sampling", "policy", None),
    ("dro", "policy", None),
    ("ppo", "policy", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}),
    ("cispo", "policy", {"ratio_log_cap": 0.1}),
    ("dapo", "policy", {"eps_clip_c": 1.2}),
    ("gspo", "sequence", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}),
]


@pytest.mark.parametrize("micro_batches", [False, True], ids=["one-batch", "a-batch-per-datum"])
@pytest.mark.parametrize("case", METRIC_CASES, ids=case_id)
def test_rl_metrics_match_independent_computation(backend, cases, case, micro_batches, monkeypatch) -> None:
    loss_fn, family, config = case
    if micro_batches:
        monkeypatch.setattr(backend[0].backend, "micro_batch_tokens", 1)  # one datum per micro-batch
    trainer, model_id = backend
    items = cases[family]
    out = trainer.forward(model_id, [datum(item["tokens"], **item["inputs"]) for item in items], loss_fn, config, False)
    expected = expected_metrics(loss_fn, items, config or {})
    assert set(out.metrics) == {"loss:sum", *expected}
    for key, value in expected.items():
        assert out.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert out.metrics["kl_sampler_k3:mean"] > 0.01 and out.metrics["ratio:mean"] != pytest.approx(1.0, abs=1e-2)
    # the datums have different numbers of loss tokens: a mean of per-datum means would differ
    per_datum = [expected_metrics(loss_fn, [item], config or {})["kl_sampler_k1:mean"] for item in items]
    assert out.metrics["kl_sampler_k1:mean"] != pytest.approx(sum(per_datum) / len(per_datum), abs=1e-4)
    clip_keys = [key for key in expected if "clip" in key]
    assert any(0 < expected[key] < 1 for key in clip_keys) or loss_fn in ("importance_sampling", "dro")


def known_ratio_datum(item: dict[str, Any], log_ratios: list[float], advantages: list[float]) -> Datum:
    """The datum's first positions are a prompt (q = 0, A = 0); then each loss token gets the given log ratio."""
    prompt = len(item["targets"]) - len(log_ratios)
    q = [0.0] * prompt + (item["logp"][prompt:].double() - torch.tensor(log_ratios, dtype=torch.float64)).tolist()
    return datum(item["tokens"], target_tokens=item["targets"], logprobs=q, advantages=[0.0] * prompt + advantages)


LN2 = math.log(2)


@pytest.mark.parametrize("loss_fn", ["ppo", "cispo", "dapo"])
def test_clip_fractions_with_known_clipping(backend, cases, loss_fn) -> None:
    """Ratios 2 and 1/2 fall outside [0.8, 1.28]; dapo's dual clip c = 1.5 binds on the ratio-2 token with A < 0."""
    trainer, model_id = backend
    first, second = cases["plain"][0], cases["plain"][1]  # 6 and 11 positions
    data = [
        known_ratio_datum(first, [LN2, 0.0, -LN2, 0.1], [-1.0, 1.0, 1.0, 0.5]),
        known_ratio_datum(second, [LN2, LN2, 0.0, 0.0, -0.1, 0.0, 0.0, 0.0], [1.0] * 8),
    ]
    config = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.28} | (
        {"eps_clip_c": 1.5} if loss_fn == "dapo" else {}
    )
    out = trainer.forward(model_id, data, loss_fn, config, False)
    assert out.metrics["clip_high_frac:mean"] == pytest.approx(3 / 12)
    assert out.metrics["clip_low_frac:mean"] == pytest.approx(1 / 12)
    # sum of the log ratios: 3 ln2 - ln2 + 0.1 - 0.1
    assert out.metrics["kl_sampler_k1:mean"] == pytest.approx(-2 * LN2 / 12, abs=1e-5)
    assert out.metrics["ratio:mean"] == pytest.approx((3 * 2 + 0.5 + math.exp(0.1) + math.exp(-0.1) + 6) / 12, abs=1e-5)
    k3 = 3 * (1 - LN2) + (LN2 - 0.5) + (math.exp(0.1) - 1.1) + (math.exp(-0.1) - 0.9)
    assert out.metrics["kl_sampler_k3:mean"] == pytest.approx(k3 / 12, abs=1e-5)
    if loss_fn == "dapo":
        assert out.metrics["dual_clip_frac:mean"] == pytest.approx(1 / 12)
        # the dual-clipped token costs c * |A| = 1.5, not |A| * r = 2; the others are PPO's
        ppo = trainer.forward(model_id, data, "ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.28}, False)
        assert out.metrics["loss:sum"] == pytest.approx(ppo.metrics["loss:sum"] - 0.5, abs=1e-5)
    else:
        assert "dual_clip_frac:mean" not in out.metrics


def test_gspo_sequence_clip_fractions_with_known_clipping(backend, cases) -> None:
    """Sequence ratios exp(0.5), exp(-0.25) and 1 against [0.8, 1.2]: geometric means (the second datum's
    arithmetic mean ratio is about 1.03, inside the range)."""
    trainer, model_id = backend
    items = cases["plain"]
    data = [
        known_ratio_datum(items[0], [0.2, 0.8], [1.0, 1.0]),
        known_ratio_datum(items[1], [-1.5, 0.5, 0.5, -0.5], [1.0, -1.0, 1.0, 1.0]),
        known_ratio_datum(items[2], [0.4, -0.4, 0.0], [1.0, 1.0, 1.0]),
    ]
    out = trainer.forward(model_id, data, "gspo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}, False)
    assert out.metrics["seq_clip_high_frac:mean"] == pytest.approx(1 / 3)
    assert out.metrics["seq_clip_low_frac:mean"] == pytest.approx(1 / 3)
    assert not any(key.startswith("clip_") or key.startswith("dual") for key in out.metrics)


def test_rl_metrics_are_left_out_without_loss_tokens(backend, cases) -> None:
    """A request with no loss positions (all advantages and sampler logprobs zero) has no mean to report."""
    trainer, model_id = backend
    item = cases["plain"][0]
    n = len(item["targets"])
    data = [datum(item["tokens"], target_tokens=item["targets"], logprobs=[0.0] * n, advantages=[0.0] * n)]
    for loss_fn in ("ppo", "gspo"):
        out = trainer.forward(model_id, data, loss_fn, None, False)
        assert set(out.metrics) == {"loss:sum"} and out.metrics["loss:sum"] == 0.0


# --- invalid requests ---------------------------------------------------------------------------------

SEQS = sequences(1, (5, 7))
TOKENS0, TARGETS0 = SEQS[0]
TOKENS1, TARGETS1 = SEQS[1]


def ce(tokens=TOKENS0, targets=TARGETS0, **extra) -> Datum:
    return datum(tokens, target_tokens=targets, **extra)


def policy(tokens=TOKENS1, targets=TARGETS1, **extra) -> Datum:
    n = len(tokens)
    inputs = {"target_tokens": targets, "logprobs": [-1.0] * n, "advantages": [0.5] * n, **extra}
    return datum(tokens, **{k: v for k, v in inputs.items() if v is not None})


def raw(values: list, dtype: str = "float32") -> TensorData:
    return TensorData(data=values, dtype=dtype, shape=[len(values)])


INVALID = [
    # (id, data, loss_fn, loss_fn_config, substrings of the message)
    ("unknown-loss", [ce()], "kl_divergence", None, ["unknown loss_fn 'kl_divergence'", "cross_entropy", "ppo"]),
    ("unknown-config-key", [policy()], "ppo", {"clip_ratio": 0.2}, ["'clip_ratio'", "ppo", "clip_low_threshold"]),
    ("config-for-configless-loss", [ce()], "cross_entropy", {"beta": 0.1}, ["'beta'", "cross_entropy", "none"]),
    ("config-nan", [policy()], "dro", {"beta": math.nan}, ["loss_fn_config.beta", "finite", "nan"]),
    ("config-inf", [policy()], "ppo", {"clip_high_threshold": math.inf}, ["clip_high_threshold", "finite", "inf"]),
    ("config-bool", [policy()], "dro", {"beta": True}, ["loss_fn_config.beta", "finite number"]),
    ("config-string", [policy()], "cispo", {"clip_low_threshold": "0.5"}, ["clip_low_threshold", "'0.5'"]),
    (
        "clip-low-above-high",
        [policy()],
        "ppo",
        {"clip_low_threshold": 1.5, "clip_high_threshold": 1.2},
        ["clip_low_threshold <= clip_high_threshold", "1.5", "1.2"],
    ),
    ("clip-low-negative", [policy()], "cispo", {"clip_low_threshold": -0.1}, ["0 <= clip_low_threshold", "-0.1"]),
    (
        "dapo-unknown-key",
        [policy()],
        "dapo",
        {"dual_clip": 3.0},
        ["'dual_clip'", "dapo", "eps_clip_c", "ratio_log_cap"],
    ),
    ("gspo-token-cap-key", [policy()], "gspo", {"ratio_log_cap": 5}, ["'ratio_log_cap'", "gspo", "seq_ratio_log_cap"]),
    ("dapo-eps-clip-c-one", [policy()], "dapo", {"eps_clip_c": 1}, ["eps_clip_c", "greater than 1", "got 1.0"]),
    ("dapo-eps-clip-c-below", [policy()], "dapo", {"eps_clip_c": 0.5}, ["eps_clip_c", "greater than 1", "0.5"]),
    (
        "gspo-clip-low-above-high",
        [policy()],
        "gspo",
        {"clip_high_threshold": 0.9},
        ["clip_low_threshold <= clip_high_threshold", "0.9997", "0.9"],
    ),
    ("dapo-clip-low-negative", [policy()], "dapo", {"clip_low_threshold": -1}, ["0 <= clip_low_threshold", "-1.0"]),
    ("empty-data", [], "cross_entropy", None, ["data is empty"]),
    ("missing-advantages", [policy(), policy(advantages=None)], "ppo", None, ["ppo", "['advantages']", "datum 1"]),
    ("missing-target-tokens", [datum(TOKENS0)], "cross_entropy", None, ["cross_entropy", "['target_tokens']"]),
    (
        "missing-logprobs",
        [policy(logprobs=None)],
        "importance_sampling",
        None,
        ["importance_sampling", "['logprobs']", "datum 0"],
    ),
    (
        "weights-too-short",
        [ce(), ce(TOKENS1, TARGETS1, weights=[1.0] * (len(TOKENS1) - 1))],
        "cross_entropy",
        None,
        ["datum 1", "'weights'", f"{len(TOKENS1) - 1} values", f"{len(TOKENS1)} positions"],
    ),
    (
        "targets-too-long",
        [ce(targets=[*TARGETS0, 5])],
        "cross_entropy",
        None,
        ["datum 0", "'target_tokens'", f"{len(TOKENS0) + 1} values", f"{len(TOKENS0)} positions"],
    ),
    (
        "advantages-too-short",
        [policy(advantages=[1.0])],
        "cispo",
        None,
        ["'advantages'", "1 values", f"{len(TOKENS1)} positions"],
    ),
    (
        "input-token-above-vocab",
        [ce(), ce([*TOKENS0[:-1], VOCAB])],
        "cross_entropy",
        None,
        ["datum 1 model_input", f"token id {VOCAB}", f"0..{VOCAB - 1}"],
    ),
    ("input-token-negative", [ce([-1, *TOKENS0[1:]])], "cross_entropy", None, ["model_input", "token id -1", "vocab"]),
    (
        "target-token-above-vocab",
        [ce(targets=[*TARGETS0[:-1], 500])],
        "cross_entropy",
        None,
        ["datum 0 target_tokens", "token id 500", f"0..{VOCAB - 1}"],
    ),
    (
        "target-token-negative",
        [policy(targets=[-3, *TARGETS1[1:]])],
        "ppo",
        None,
        ["target_tokens", "token id -3", "vocabulary"],
    ),
    (
        "target-token-fractional",
        [datum(TOKENS0, target_tokens=raw([3.5] + [4.0] * (len(TOKENS0) - 1)))],
        "cross_entropy",
        None,
        ["target_tokens", "3.5", "vocabulary"],
    ),
    (
        "nan-weight-second-datum",
        [ce(weights=[1.0] * len(TOKENS0)), ce(weights=[1.0, math.nan] + [1.0] * (len(TOKENS0) - 2))],
        "cross_entropy",
        None,
        ["datum 1", "'weights'", "NaN or infinity"],
    ),
    (
        "inf-weight",
        [ce(weights=[math.inf] + [1.0] * (len(TOKENS0) - 1))],
        "cross_entropy",
        None,
        ["datum 0", "'weights'", "NaN or infinity"],
    ),
    (
        "nan-advantage",
        [policy(advantages=[0.0, math.nan] + [1.0] * (len(TOKENS1) - 2))],
        "ppo",
        None,
        ["'advantages'", "NaN or infinity"],
    ),
    (
        "inf-advantage",
        [policy(), policy(advantages=[-math.inf] * len(TOKENS1))],
        "importance_sampling",
        None,
        ["datum 1", "'advantages'", "NaN or infinity"],
    ),
    (
        "nan-sampler-logprob",
        [policy(logprobs=[math.nan] * len(TOKENS1))],
        "dro",
        None,
        ["'logprobs'", "NaN or infinity"],
    ),
    (
        "too-long",
        [ce(), ce([7] * (MAX_CONTEXT + 1), [7] * (MAX_CONTEXT + 1))],
        "cross_entropy",
        None,
        ["datum 1", f"{MAX_CONTEXT + 1} tokens", f"maxSupportedContextLength is {MAX_CONTEXT}"],
    ),
    ("no-tokens", [datum([], target_tokens=[])], "cross_entropy", None, ["datum 0", "no tokens"]),
    (
        "input-unknown-to-every-loss",
        [ce(mask=[1.0] * len(TOKENS0))],
        "cross_entropy",
        None,
        ["datum 0", "['mask']", "not used by any built-in loss"],
    ),
    (
        "input-the-loss-does-not-take",
        [ce(advantages=[1.0] * len(TOKENS0))],
        "cross_entropy",
        None,
        ["cross_entropy does not take", "'advantages'"],
    ),
    (
        "weights-for-a-policy-loss",
        [policy(weights=[1.0] * len(TOKENS1))],
        "ppo",
        None,
        ["ppo does not take", "'weights'"],
    ),
    (
        "image-chunk",
        [Datum(model_input=ModelInput(chunks=[ImageChunk(type="image")]), loss_fn_inputs={"target_tokens": [1]})],
        "cross_entropy",
        None,
        ["image chunks are not supported", "encoded_text"],
    ),
]


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward_backward"])
@pytest.mark.parametrize(
    ("data", "loss_fn", "config", "substrings"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_request_is_refused_with_a_clear_message(backend, data, loss_fn, config, substrings, backward) -> None:
    trainer, model_id = backend
    slot = trainer.slot(model_id)
    before = [p.detach().clone() for p in slot.params[:3]]
    with pytest.raises(InvalidArgument) as caught:
        trainer.forward(model_id, data, loss_fn, config, backward=backward)
    message = str(caught.value)
    for substring in substrings:
        assert substring in message, f"{substring!r} not in {message!r}"
    assert caught.value.status == "INVALID_ARGUMENT"
    assert all(p.grad is None for p in slot.params), "a refused request leaves no gradients behind"
    assert all(torch.equal(a, b) for a, b in zip(before, slot.params[:3], strict=False))
    assert slot.loss_tokens == 0 and slot.loss_sequences == 0


def test_a_loss_that_is_not_finite_is_refused(backend) -> None:
    """Finite inputs whose loss overflows float32 are refused rather than returned as inf."""
    trainer, model_id = backend
    n = len(TOKENS0)
    with pytest.raises(InvalidArgument, match=r"the cross_entropy loss is not finite \(NaN or inf\)"):
        trainer.forward(model_id, [ce(weights=[3e38] * n)], "cross_entropy", None, backward=False)


def test_unknown_model_id_is_not_found(backend) -> None:
    trainer, _ = backend
    with pytest.raises(NotFound, match="model_id 'model-nope' is not loaded") as caught:
        trainer.forward("model-nope", [ce()], "cross_entropy", None, backward=False)
    assert caught.value.status == "NOT_FOUND"


def test_forward_only_model_refuses_backward_even_for_valid_losses(model_path, tmp_path) -> None:
    trainer, _ = make_backend(model_path, tmp_path, rank=4)
    reference_id, _ = trainer.create_model(None, base_only=True)
    for loss_fn, data in (("cross_entropy", [ce()]), ("ppo", [policy()])):
        with pytest.raises(FailedPrecondition, match="is forward-only"):
            trainer.forward(reference_id, data, loss_fn, None, backward=True)
        out = trainer.forward(reference_id, data, loss_fn, None, backward=False)
        assert math.isfinite(out.metrics["loss:sum"])
