"""The transformers sampling backend against plain transformers / peft on the tiny model: logprobs, greedy decoding,
seeds, sampling filters, stops, parameter validation, and hot-loading of LoRA and full snapshots (bad ones too)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from shapeyard.models import tiny
from shapeyard.models.loading import load_model, load_tokenizer
from shapeyard.models.sampling import DecodingParams, Generation, GenerationRequest, SnapshotError
from shapeyard.models.transformers_sampler import TransformersSampler
from shapeyard.wire.errors import InvalidArgument

torch.set_num_threads(1)
pytestmark = [
    pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning"),
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),  # raised in peft
    pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers` to `True`:UserWarning"),
]

CONTEXT = 256
EOS = 2  # <|im_end|>
TEXTS = [
    "<|im_start|>user\nadd 3 and 4<|im_end|>\n<|im_start|>assistant\n",
    "hello world",
    "12345",
    "The quick brown fox jumps",
    "x",
]


@pytest.fixture(scope="module")
def base_dir() -> str:
    return str(tiny.ensure_tiny_model())


@pytest.fixture(scope="module")
def sampler(base_dir: str) -> TransformersSampler:
    return TransformersSampler(base_dir, max_context_length=CONTEXT)


@pytest.fixture(scope="module")
def model(base_dir: str) -> PreTrainedModel:
    return load_model(base_dir, "cpu").eval()


@pytest.fixture(scope="module")
def prompts(sampler: TransformersSampler) -> list[list[int]]:
    return [sampler.tokenizer.encode(text) for text in TEXTS]


def forward_logprobs(model: torch.nn.Module, tokens: list[int]) -> list[float]:
    """logp(tokens[i] | tokens[:i]) for i >= 1, from one plain unpadded forward pass."""
    ids = torch.tensor([tokens])
    with torch.inference_mode():
        logprobs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    return logprobs.gather(1, ids[0, 1:, None]).squeeze(1).tolist()


def assert_close(actual: list[float], expected: list[float], tol: float = 1e-4) -> None:
    assert len(actual) == len(expected)
    assert max((abs(a - b) for a, b in zip(actual, expected, strict=True)), default=0.0) < tol


def greedy(sampler: TransformersSampler, prompt: list[int], max_tokens: int = 16) -> Generation:
    return sampler.sample([GenerationRequest(prompt, DecodingParams(max_tokens=max_tokens, temperature=0))])[0]


# --- logprobs and decoding ------------------------------------------------------------------------------------------


def test_logprobs_equal_a_full_forward_pass(
    sampler: TransformersSampler, model: PreTrainedModel, prompts: list[list[int]]
):
    # Mixed lengths (left padding) and mixed sampling parameters: logprobs are always the raw model's.
    params = [
        DecodingParams(max_tokens=12, seed=1),
        DecodingParams(max_tokens=9, temperature=0.7, top_k=5, seed=2),
        DecodingParams(max_tokens=12, temperature=0),
        DecodingParams(max_tokens=5, top_p=0.8, seed=3),
        DecodingParams(max_tokens=12, temperature=1.3, seed=4),
    ]
    requests = [
        GenerationRequest(prompt, p, prompt_logprobs=row != 2)
        for row, (prompt, p) in enumerate(zip(prompts, params, strict=True))
    ]
    for request, completion in zip(requests, sampler.sample(requests), strict=True):
        assert completion.prompt == request.prompt
        assert len(completion.tokens) == request.params.max_tokens
        expected = forward_logprobs(model, completion.prompt + completion.tokens)
        n = len(completion.prompt)
        assert_close(completion.logprobs, expected[n - 1 :])
        if request.prompt_logprobs:
            assert completion.prompt_logprobs[0] is None
            assert_close(completion.prompt_logprobs[1:], expected[: n - 1])
        else:
            assert completion.prompt_logprobs is None


def test_greedy_equals_generate(sampler: TransformersSampler, model: PreTrainedModel, prompts: list[list[int]]):
    params = DecodingParams(max_tokens=16, temperature=0, stop_token_ids=[EOS])
    completions = sampler.sample([GenerationRequest(prompt, params) for prompt in prompts])
    for prompt, completion in zip(prompts, completions, strict=True):
        with torch.inference_mode():
            generated = model.generate(
                input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=16, eos_token_id=EOS, pad_token_id=0
            )
        assert completion.tokens == generated[0, len(prompt) :].tolist()
        assert completion.finish_reason == ("stop" if completion.tokens[-1] == EOS else "length")
        assert completion.sampling_logprobs == [0.0] * len(completion.tokens)


def test_seeded_samples_do_not_depend_on_the_batch(sampler: TransformersSampler, prompts: list[list[int]]):
    mine = GenerationRequest(prompts[1], DecodingParams(max_tokens=24, seed=1234))
    alone = sampler.sample([mine])[0]
    companions = [
        GenerationRequest(prompts[0], DecodingParams(max_tokens=30, top_k=3)),
        GenerationRequest(prompts[3], DecodingParams(max_tokens=4, temperature=0)),
    ]
    together = sampler.sample([companions[0], mine, companions[1]])[1]
    assert together.tokens == alone.tokens
    assert_close(together.logprobs, alone.logprobs, 1e-5)


def test_different_seeds_and_no_seed_sample_differently(sampler: TransformersSampler, prompts: list[list[int]]):
    for prompt in (prompts[0], prompts[1], prompts[3]):
        samples = sampler.sample(
            [GenerationRequest(prompt, DecodingParams(max_tokens=16, seed=seed)) for seed in range(4)]
        )
        assert len({tuple(sample.tokens) for sample in samples}) > 1
    unseeded = [
        sampler.sample([GenerationRequest(prompts[1], DecodingParams(max_tokens=32))])[0].tokens for _ in range(2)
    ]
    assert unseeded[0] != unseeded[1]


def test_top_k_1_is_greedy(sampler: TransformersSampler, prompts: list[list[int]]):
    for temperature in (1.0, 0.6):
        params = DecodingParams(max_tokens=16, temperature=temperature, top_k=1, seed=5)
        completions = sampler.sample([GenerationRequest(prompt, params) for prompt in prompts])
        for prompt, completion in zip(prompts, completions, strict=True):
            assert completion.tokens == greedy(sampler, prompt).tokens
            assert completion.sampling_logprobs == [0.0] * 16  # the only token left has probability 1


# --- stops ----------------------------------------------------------------------------------------------------------


def test_stop_token_ids(sampler: TransformersSampler, prompts: list[list[int]]):
    reference = greedy(sampler, prompts[0]).tokens
    stop_at = 3  # the first occurrence of a token after a few others
    token = reference[stop_at]
    assert token not in reference[:stop_at]
    long_row = GenerationRequest(prompts[1], DecodingParams(max_tokens=20, seed=0))
    stopped, other = sampler.sample(
        [GenerationRequest(prompts[0], DecodingParams(max_tokens=16, temperature=0, stop_token_ids=[token])), long_row]
    )
    assert stopped.tokens == reference[: stop_at + 1]
    assert stopped.finish_reason == "stop"
    assert stopped.text == sampler.tokenizer.decode(reference[:stop_at])
    assert len(stopped.logprobs) == len(stopped.sampling_logprobs) == stop_at + 1
    assert (len(other.tokens), other.finish_reason) == (20, "length")


def test_stop_strings(sampler: TransformersSampler, prompts: list[list[int]]):
    reference = greedy(sampler, prompts[3], max_tokens=24)
    stop = reference.text[5:7]
    start = reference.text.find(stop)
    # The completion ends with the token that completed the stop string; the text ends before the string.
    expected = next(n for n in range(1, 25) if stop in sampler.tokenizer.decode(reference.tokens[:n]))
    completion = sampler.sample(
        [GenerationRequest(prompts[3], DecodingParams(max_tokens=24, temperature=0, stop=["never here", stop]))]
    )[0]
    assert completion.finish_reason == "stop"
    assert completion.tokens == reference.tokens[:expected]
    assert completion.text == reference.text[:start]


def test_max_tokens_finishes_with_length(sampler: TransformersSampler, prompts: list[list[int]]):
    completions = sampler.sample(
        [GenerationRequest(prompts[1], DecodingParams(max_tokens=n, seed=n)) for n in (1, 7, 0)]
    )
    assert [len(c.tokens) for c in completions] == [1, 7, 0]
    assert [c.finish_reason for c in completions] == ["length"] * 3
    assert completions[1].text == sampler.tokenizer.decode(completions[1].tokens)


# --- the sampling distribution --------------------------------------------------------------------------------------


def test_sampling_logprobs(sampler: TransformersSampler, model: PreTrainedModel, prompts: list[list[int]]):
    plain = sampler.sample([GenerationRequest(prompt, DecodingParams(max_tokens=12, seed=7)) for prompt in prompts])
    for completion in plain:
        assert completion.sampling_logprobs == completion.logprobs

    for completion in sampler.sample(
        [GenerationRequest(prompt, DecodingParams(max_tokens=12, top_k=2)) for prompt in prompts]
    ):
        tokens = completion.prompt + completion.tokens
        with torch.inference_mode():
            logprobs = model(input_ids=torch.tensor([tokens])).logits[0].float().log_softmax(-1)
        for step, token in enumerate(completion.tokens):
            position = len(completion.prompt) - 1 + step
            top2 = logprobs[position].topk(2)
            assert token in top2.indices.tolist()
            assert completion.sampling_logprobs[step] >= completion.logprobs[step]
            # renormalised over the two tokens kept
            expected = completion.logprobs[step] - torch.logsumexp(top2.values, 0).item()
            assert math.isclose(completion.sampling_logprobs[step], expected, abs_tol=1e-4)


def test_top_p_keeps_the_smallest_nucleus(
    sampler: TransformersSampler, model: PreTrainedModel, prompts: list[list[int]]
):
    top_p, temperature = 0.7, 0.8
    params = DecodingParams(max_tokens=12, temperature=temperature, top_p=top_p, seed=11)
    for completion in sampler.sample([GenerationRequest(prompt, params) for prompt in prompts]):
        tokens = completion.prompt + completion.tokens
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([tokens])).logits[0].float() / temperature
        for step, token in enumerate(completion.tokens):
            probs = logits[len(completion.prompt) - 1 + step].softmax(-1)
            ordered, order = probs.sort(descending=True)
            size = int((ordered.cumsum(0) < top_p).sum()) + 1  # the smallest prefix reaching top_p
            assert token in order[:size].tolist()
            expected = math.log(probs[token] / ordered[:size].sum())
            assert math.isclose(completion.sampling_logprobs[step], expected, abs_tol=1e-4)


# --- validation -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ([], DecodingParams(), "prompt is empty"),
        ([5, 128], DecodingParams(), "prompt: token id 128 is outside the vocabulary (0..127)"),
        ([5, -1], DecodingParams(), "token id -1 is outside the vocabulary (0..127)"),
        ([5] * 10, DecodingParams(max_tokens=CONTEXT - 9), f"exceeds the max context length {CONTEXT}"),
        ([5], DecodingParams(max_tokens=-1), "max_tokens must be an integer >= 0"),
        ([5], DecodingParams(temperature=-0.5), "temperature must be >= 0"),
        ([5], DecodingParams(top_p=0.0), "top_p must be in (0, 1]"),
        ([5], DecodingParams(top_p=1.5), "top_p must be in (0, 1]"),
        ([5], DecodingParams(top_k=-2), "top_k must be a positive integer, or 0 or -1 for off"),
        ([5], DecodingParams(stop_token_ids=[200]), "stop_token_ids: token id 200 is outside the vocabulary (0..127)"),
        ([5], DecodingParams(stop=[""]), "stop strings must be non-empty"),
    ],
)
def test_bad_params_are_invalid_arguments(
    sampler: TransformersSampler, prompt: list[int], params: DecodingParams, message: str
):
    good = GenerationRequest([5, 6, 7], DecodingParams(max_tokens=2))
    with pytest.raises(InvalidArgument) as raised:
        sampler.sample([good, GenerationRequest(prompt, params)])
    assert raised.value.message.startswith("request 1: ")
    assert message in raised.value.message


# --- snapshots ------------------------------------------------------------------------------------------------------


def save_lora(
    base_dir: str, target: Path, seed: int, modules: tuple[str, ...] = ("q_proj", "v_proj", "down_proj")
) -> Path:
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=list(modules), init_lora_weights=False, lora_dropout=0.0)
    model = get_peft_model(load_model(base_dir, "cpu"), config)
    if "lm_head" in modules:
        # peft saves the tied embedding with such an adapter, and loading it replaces the base's: make that visible.
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(1.5)
    model.save_pretrained(target)
    return target


def save_full(base_dir: str, target: Path) -> Path:
    model = load_model(base_dir, "cpu")
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(target)
    load_tokenizer(base_dir).save_pretrained(target)
    return target


def broken_copy(source: Path, target: Path, weights: str, how: str) -> Path:
    shutil.copytree(source, target)
    path = target / weights
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "wrong shape":
        state = load_file(path)
        key = sorted(state)[0]
        state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
        save_file(state, path, metadata={"format": "pt"})
    elif how == "other architecture":
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, "intermediate_size": 256}))
    return target


@pytest.fixture(scope="module")
def snapshots(base_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("snapshots")
    made = {
        "lora-a": save_lora(base_dir, root / "lora-a", seed=1),
        "lora-b": save_lora(base_dir, root / "lora-b", seed=2),
        "lora-unembed": save_lora(base_dir, root / "lora-unembed", seed=3, modules=("q_proj", "lm_head")),
        "full": save_full(base_dir, root / "full"),
    }
    (root / "empty").mkdir()
    broken = {
        "missing": root / "does-not-exist",
        "empty": root / "empty",
        "lora-truncated": broken_copy(made["lora-a"], root / "lt", "adapter_model.safetensors", "truncated"),
        "lora-wrong-shape": broken_copy(made["lora-a"], root / "ls", "adapter_model.safetensors", "wrong shape"),
        "full-truncated": broken_copy(made["full"], root / "ft", "model.safetensors", "truncated"),
        "full-wrong-shape": broken_copy(made["full"], root / "fs", "model.safetensors", "wrong shape"),
        "full-other-architecture": broken_copy(made["full"], root / "fa", "model.safetensors", "other architecture"),
    }
    return made | broken


@pytest.fixture
def swapping(base_dir: str) -> TransformersSampler:
    """A sampler of its own for each test, since these tests change its weights."""
    return TransformersSampler(base_dir, max_context_length=CONTEXT)


PROBE = "<|im_start|>user\nadd 12 and 30<|im_end|>\n<|im_start|>assistant\n42"


def probe(sampler: TransformersSampler) -> list[float]:
    """What the sampler serves, as the logprobs of a fixed sequence (a prompt scored without sampling)."""
    tokens = sampler.tokenizer.encode(PROBE)
    return sampler.sample([GenerationRequest(tokens, DecodingParams(max_tokens=0), prompt_logprobs=True)])[
        0
    ].prompt_logprobs[1:]


def reference(base_dir: str, snapshot: Path | None) -> list[float]:
    """The same logprobs from a model plain transformers / peft load from the snapshot's directory."""
    if snapshot is None:
        model = load_model(base_dir, "cpu")
    elif (snapshot / "adapter_config.json").exists():
        model = PeftModel.from_pretrained(load_model(base_dir, "cpu"), snapshot)
    else:
        model = load_model(str(snapshot), "cpu")
    return forward_logprobs(model.eval(), load_tokenizer(base_dir).encode(PROBE))


def test_snapshots_serve_what_transformers_and_peft_load(
    swapping: TransformersSampler, snapshots: dict[str, Path], base_dir: str
):
    base = probe(swapping)
    assert_close(base, reference(base_dir, None))
    # LoRA, a second LoRA (replacing the first, not stacked on it), full weights, then LoRA on the base weights again;
    # a LoRA that brings its own embedding, then one that must not see it.
    for name in ("lora-a", "lora-b", "full", "lora-a", "lora-unembed", "lora-b"):
        swapping.load_snapshot(snapshots[name], identity=name)
        assert swapping.identity == name
        served = probe(swapping)
        assert_close(served, reference(base_dir, snapshots[name]))
        assert max(abs(a - b) for a, b in zip(served, base, strict=True)) > 1e-2


BAD_SNAPSHOTS = {
    "missing": "is not a directory",
    "empty": "holds neither adapter_config.json",
    "lora-truncated": "unreadable LoRA adapter",
    "lora-wrong-shape": "does not fit the base model",
    "full-truncated": "unreadable safetensors weights",
    "full-wrong-shape": r"has shape \[\d+, \d+\], the base model's is",
    "full-other-architecture": r"architecture: intermediate_size 256 \(the base model's is 512\)",
}


@pytest.mark.parametrize("serving", [None, "lora-a", "full"])
def test_bad_snapshots_leave_the_previous_weights_serving(
    swapping: TransformersSampler, snapshots: dict[str, Path], serving: str | None
):
    if serving is not None:
        swapping.load_snapshot(snapshots[serving], identity=serving)
    before = probe(swapping)
    for bad, reason in BAD_SNAPSHOTS.items():
        with pytest.raises(SnapshotError, match=reason):
            swapping.load_snapshot(snapshots[bad], identity=bad)
        assert swapping.identity == serving
        assert probe(swapping) == before, bad
