"""The built-in losses, checked against an independent computation: target-token logprobs from a plain
transformers copy of the tiny model, and each loss written here from its Tinker definition (token-wise sums)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from shapeyard.errors import FailedPrecondition, InvalidArgument, NotFound
from shapeyard.models import tiny
from shapeyard.models.loading import load_model, load_tokenizer
from shapeyard.trainer.backend import BackendConfig, TrainerBackend
from shapeyard.wire.trainer import Datum, ImageChunk, LoraConfig, ModelInput, TensorData

torch.set_num_threads(1)

MAX_CONTEXT = 2048
VOCAB = tiny.VOCAB_SIZE
LENGTHS = (6, 11, 8)  # unequal, so the backend pads


def make_backend(path: str, job_dir: Path, rank: int = 0) -> tuple[TrainerBackend, str]:
    config = BackendConfig(
        base_model="accounts/fireworks/models/tiny-qwen3",
        model_path=path,
        device="cpu",
        max_context_length=MAX_CONTEXT,
        lora_rank=rank,
        max_lora_rank=64,
        forward_only=False,
        activation_checkpointing=False,
        job_dir=job_dir,
        seed=0,
    )
    backend = TrainerBackend(config, load_model(path, "cpu"), load_tokenizer(path))
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
def backend(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainerBackend, str]:
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


def expected_token_losses(
    loss_fn: str, logp: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict
) -> torch.Tensor:
    """The Tinker definitions; logp = model logprob, q = sampler logprob, A = advantage, r = exp(logp - q)."""
    if loss_fn == "cross_entropy":
        return -(inputs.get("weights", torch.ones_like(logp)) * logp)
    q, advantages = inputs["logprobs"], inputs["advantages"]
    if loss_fn == "dro":
        beta = config.get("beta", 0.05)
        return -(logp * advantages - beta / 2 * (logp - q) ** 2)
    log_ratio = logp - q
    cap = config.get("ratio_log_cap", 0.0)
    if cap > 0:
        log_ratio = torch.minimum(log_ratio, torch.full_like(log_ratio, cap))
    ratio = torch.exp(log_ratio)
    if loss_fn == "importance_sampling":
        return -(ratio * advantages)
    clipped = torch.clamp(ratio, config.get("clip_low_threshold", 0.8), config.get("clip_high_threshold", 1.2))
    if loss_fn == "ppo":
        return -torch.minimum(ratio * advantages, clipped * advantages)
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


@pytest.fixture(scope="module")
def cases(reference: torch.nn.Module) -> dict[str, list[dict[str, Any]]]:
    """Per loss family, each datum as tokens, targets, reference logprobs and loss inputs."""
    seqs = sequences(0)
    with torch.no_grad():
        logps = [reference_logprobs(reference, tokens, targets) for tokens, targets in seqs]
    built: dict[str, list[dict[str, Any]]] = {"plain": [], "weighted": [], "policy": []}
    for index, ((tokens, targets), logp) in enumerate(zip(seqs, logps, strict=True)):
        for family, extra in (
            ("plain", cross_entropy_inputs(targets, index, weighted=False)),
            ("weighted", cross_entropy_inputs(targets, index, weighted=True)),
            ("policy", policy_inputs(logp, index)),
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

    expected = 0.0
    for item in items:
        expected += float(
            expected_token_losses(loss_fn, item["logp"].double(), as_tensors(item["inputs"]), config or {}).sum()
        )
    assert out.metrics["loss:sum"] == pytest.approx(expected, rel=1e-6, abs=1e-5)
    assert abs(expected) > 1e-2  # the check is not vacuous

    assert len(out.loss_fn_outputs) == len(items)
    for item, output in zip(items, out.loss_fn_outputs, strict=True):
        got = torch.tensor(output["logprobs"].data, dtype=torch.float64)
        assert got.shape == (len(item["tokens"]),)
        torch.testing.assert_close(got, item["logp"].double(), atol=1e-5, rtol=0)

    assert out.metrics, "a forward reports metrics"
    for key in out.metrics:
        assert key.count(":") == 1, f"metric key {key!r} must be name:reduction"
    if loss_fn == "cross_entropy":
        weights = [w for item in items for w in item["inputs"].get("weights", [1.0] * len(item["targets"]))]
        assert out.metrics["response_tokens:sum"] == sum(1 for w in weights if w != 0)
        if family == "weighted":
            assert out.metrics["response_tokens:sum"] < sum(len(item["targets"]) for item in items)


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
