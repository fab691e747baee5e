"""The trainer backend's training math against plain PyTorch / peft: optimizer steps, LoRA, gradient accumulation,
atomicity of failed calls, checkpoints, and forward-only models."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model, get_peft_model_state_dict

from shapeyard.models import tiny
from shapeyard.models.loading import load_model, load_tokenizer
from shapeyard.trainer.backend import BackendConfig
from shapeyard.trainer.losses import loss_spec
from shapeyard.trainer.spmd import SpmdBackend
from shapeyard.trainer.world import World
from shapeyard.wire.errors import FailedPrecondition, InvalidArgument
from shapeyard.wire.trainer import AdamParams, Datum, GradNormalization, LoraConfig, ModelInput, TensorData
from tests.helpers import WireBackend, cpu_recipe

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
# eps is large on purpose: Adam is otherwise (nearly) invariant to the scale of the gradients, so a wrong
# normalization divisor or clip factor would go unnoticed.
ADAM = AdamParams(learning_rate=1e-3, beta1=0.9, beta2=0.95, eps=1e-2, weight_decay=0.01)
RANK, ALPHA = 4, 16

# A batch: (tokens, targets, weights) per datum.
Batch = list[tuple[list[int], list[int], list[float]]]


def make_batch(seed: int, lengths: tuple[int, ...]) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for index, length in enumerate(lengths):
        seq = torch.randint(3, 99, (length + 1,), generator=generator).tolist()
        weights = [0.0, 0.0] + [[1.0, 0.5, -0.25, 1.0, 0.0][(t + index) % 5] for t in range(length - 2)]
        batch.append((seq[:-1], seq[1:], weights))
    # one datum carries no loss at all (it counts toward no sequence)
    tokens, targets, weights = batch[-1]
    batch[-1] = (tokens, targets, [0.0] * len(weights))
    return batch


# Equal lengths for the comparisons with plain PyTorch, which then runs the batch as one unpadded tensor as the
# backend does: Adam's per-element normalization would otherwise magnify float noise of a different batching past
# 1e-6. (The padded path is checked against unpadded sequences in test_losses.) Ragged batches elsewhere.
BATCHES = [make_batch(seed, (8, 8, 8, 8)) for seed in range(4)]
RAGGED = [make_batch(seed, (6, 9, 7, 5)) for seed in range(10, 14)]


def data(batch: Batch) -> list[Datum]:
    return [
        Datum(model_input=ModelInput.from_ints(tokens), loss_fn_inputs={"target_tokens": targets, "weights": weights})
        for tokens, targets, weights in batch
    ]


def bare_backend(path: str, job_dir: Path, rank: int = 0, *, forward_only: bool = False, seed: int = 0) -> WireBackend:
    config = BackendConfig(
        base_model="accounts/fireworks/models/tiny-qwen3",
        model_path=path,
        device="cpu",
        max_context_length=2048,
        lora_rank=rank,
        max_lora_rank=64,
        forward_only=forward_only,
        recipe=cpu_recipe(2048),
        seed=seed,
    )
    return WireBackend(
        SpmdBackend(config, load_model(path, "cpu"), load_tokenizer(path), World(rank=0, size=1, device="cpu")), job_dir
    )


def make_backend(
    path: str, job_dir: Path, rank: int = 0, *, seed: int = 0, lora_seed: int | None = None
) -> tuple[WireBackend, str]:
    """A backend with its trainable model: full-parameter for rank 0, else a LoRA adapter."""
    backend = bare_backend(path, job_dir, rank, seed=seed)
    lora = LoraConfig(rank=rank, alpha=ALPHA, seed=lora_seed) if rank else LoraConfig(rank=0)
    model_id, _ = backend.create_model(lora, base_only=False)
    return backend, model_id


def trainable(backend: WireBackend, model_id: str) -> dict[str, torch.Tensor]:
    """The model's trainable state, detached copies, by name."""
    slot = backend.slot(model_id)
    if slot.kind == "lora":
        state = get_peft_model_state_dict(backend.peft, adapter_name=slot.adapter)
    else:
        state = dict(backend.base.named_parameters())
    return {name: tensor.detach().clone() for name, tensor in state.items()}


def grads(backend: WireBackend, model_id: str) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in backend.slot(model_id).params]


def step(
    backend: WireBackend, model_id: str, batch: Batch, normalization: GradNormalization | None = None
) -> tuple[float, dict[str, float]]:
    out = backend.forward(model_id, data(batch), "cross_entropy", None, backward=True)
    return out.metrics["loss:sum"], backend.optim_step(model_id, ADAM, normalization)


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert set(a) == set(b)
    for name in a:
        if atol:
            torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
        else:
            assert torch.equal(a[name], b[name]), name


def differs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], by: float = 1e-6) -> bool:
    return any(float((a[name] - b[name]).abs().max()) > by for name in a)


@pytest.fixture(scope="module")
def model_path() -> str:
    return str(tiny.ensure_tiny_model())


# --- plain PyTorch ---------------------------------------------------------------------------------------


def plain_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """-sum(w * logp) over a batch of equal-length sequences."""
    tokens = torch.tensor([tokens for tokens, _, _ in batch])
    targets = torch.tensor([targets for _, targets, _ in batch])
    weights = torch.tensor([weights for _, _, weights in batch])
    logits = model(input_ids=tokens).logits.float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
    return -(weights * logp).sum()


def plain_divisor(batch: Batch, normalization: GradNormalization | None) -> int:
    if normalization == GradNormalization.NUM_LOSS_TOKENS:
        return sum(1 for _, _, weights in batch for w in weights if w != 0)
    if normalization == GradNormalization.NUM_SEQUENCES:
        return sum(1 for _, _, weights in batch if any(w != 0 for w in weights))
    return 1


def plain_step(
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    normalization: GradNormalization | None,
    clip: float,
) -> tuple[float, float]:
    optimizer.zero_grad(set_to_none=True)
    loss = plain_loss(model, batch)
    (loss / plain_divisor(batch, normalization)).backward()
    if clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(params, clip, foreach=False))
    else:
        norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
    optimizer.step()
    return loss.item(), norm


def plain_adamw(params: list[torch.nn.Parameter]) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        params,
        lr=ADAM.learning_rate,
        betas=(ADAM.beta1, ADAM.beta2),
        eps=ADAM.eps,
        weight_decay=ADAM.weight_decay,
        foreach=False,
    )


STEP_CASES = [
    (None, 0.0),
    (GradNormalization.NONE, 0.0),
    (GradNormalization.NUM_LOSS_TOKENS, 0.0),
    (GradNormalization.NUM_SEQUENCES, 0.0),
    (None, 1.0),
    (GradNormalization.NUM_LOSS_TOKENS, 0.05),
]


def step_id(case: tuple) -> str:
    normalization, clip = case
    return f"{normalization or 'default'}-clip{clip}"


@pytest.mark.parametrize("case", STEP_CASES, ids=step_id)
def test_full_parameter_steps_match_plain_pytorch(model_path, tmp_path, case) -> None:
    normalization, clip = case
    adam = ADAM.model_copy(update={"grad_clip_norm": clip})
    backend, model_id = make_backend(model_path, tmp_path)
    initial = trainable(backend, model_id)
    plain = load_model(model_path, "cpu")
    params = list(plain.parameters())
    optimizer = plain_adamw(params)
    assert_same_state(initial, {n: p.detach() for n, p in plain.named_parameters()})

    for batch in BATCHES[:2]:
        out = backend.forward(model_id, data(batch), "cross_entropy", None, backward=True)
        metrics = backend.optim_step(model_id, adam, normalization)
        loss, norm = plain_step(plain, params, optimizer, batch, normalization, clip)
        assert out.metrics["loss:sum"] == pytest.approx(loss, rel=1e-6, abs=1e-5)
        assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-5)
        if clip:
            assert norm > clip, "the clip threshold must bite for this case to test clipping"

    after = trainable(backend, model_id)
    assert_same_state(after, {n: p.detach() for n, p in plain.named_parameters()}, atol=1e-6)
    assert differs(after, initial, by=1e-4), "the steps moved the weights"


def test_full_parameter_normalization_and_clipping_change_the_step(model_path, tmp_path) -> None:
    """The cases above are not all the same step in disguise."""
    results = []
    for index, (normalization, clip) in enumerate(
        [(None, 0.0), (GradNormalization.NUM_LOSS_TOKENS, 0.0), (GradNormalization.NUM_SEQUENCES, 0.0), (None, 1e-3)]
    ):
        backend, model_id = make_backend(model_path, tmp_path / str(index))
        backend.forward(model_id, data(BATCHES[0]), "cross_entropy", None, backward=True)
        backend.optim_step(model_id, ADAM.model_copy(update={"grad_clip_norm": clip}), normalization)
        backend.forward(model_id, data(BATCHES[1]), "cross_entropy", None, backward=True)
        backend.optim_step(model_id, ADAM.model_copy(update={"grad_clip_norm": clip}), normalization)
        results.append(trainable(backend, model_id))
    for i in range(len(results)):
        for j in range(i + 1, len(results)):
            assert differs(results[i], results[j], by=1e-4), (i, j)


# --- LoRA --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lora_seed", "normalization", "clip"),
    [(None, None, 0.0), (7, GradNormalization.NUM_LOSS_TOKENS, 0.0), (None, None, 0.5)],
    ids=["job-seed", "own-seed-num_loss_tokens", "job-seed-clip"],
)
def test_lora_steps_match_plain_peft(model_path, tmp_path, lora_seed, normalization, clip) -> None:
    adam = ADAM.model_copy(update={"grad_clip_norm": clip})
    backend, model_id = make_backend(model_path, tmp_path, rank=RANK, seed=3, lora_seed=lora_seed)

    plain_base = load_model(model_path, "cpu")
    torch.manual_seed(lora_seed if lora_seed is not None else 3)
    plain = get_peft_model(
        plain_base,
        PeftLoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0, bias="none"),
    )
    params = [p for p in plain.parameters() if p.requires_grad]
    assert len(params) == len(backend.slot(model_id).params)
    optimizer = plain_adamw(params)
    initial = trainable(backend, model_id)
    assert_same_state(initial, get_peft_model_state_dict(plain))  # same seed, same initial adapter

    # two steps: the first moves only lora_B (lora_B starts at zero), the second lora_A too
    for batch in BATCHES[:2]:
        out = backend.forward(model_id, data(batch), "cross_entropy", None, backward=True)
        metrics = backend.optim_step(model_id, adam, normalization)
        loss, norm = plain_step(plain, params, optimizer, batch, normalization, clip)
        assert out.metrics["loss:sum"] == pytest.approx(loss, rel=1e-6, abs=1e-5)
        assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-5)
        if clip:
            assert norm > clip

    after = trainable(backend, model_id)
    assert_same_state(after, {k: v.detach() for k, v in get_peft_model_state_dict(plain).items()}, atol=1e-6)
    moved = {name for name in after if not torch.equal(after[name], initial[name])}
    assert any("lora_A" in name for name in moved) and any("lora_B" in name for name in moved)


def test_lora_seed_decides_the_initial_adapter(model_path, tmp_path) -> None:
    a, a_id = make_backend(model_path, tmp_path / "a", rank=RANK, seed=0)
    b, b_id = make_backend(model_path, tmp_path / "b", rank=RANK, seed=0, lora_seed=1)
    c, c_id = make_backend(model_path, tmp_path / "c", rank=RANK, seed=1)
    assert differs(trainable(a, a_id), trainable(b, b_id))
    assert_same_state(trainable(b, b_id), trainable(c, c_id))


# --- gradient accumulation -------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [0, RANK], ids=["full", "lora"])
@pytest.mark.parametrize(
    "normalization",
    [None, GradNormalization.NUM_LOSS_TOKENS, GradNormalization.NUM_SEQUENCES],
    ids=["sum", "num_loss_tokens", "num_sequences"],
)
def test_two_half_batches_equal_one_whole_batch(model_path, tmp_path, rank, normalization) -> None:
    batch = BATCHES[0] + BATCHES[1]
    halves = [batch[: len(batch) // 2], batch[len(batch) // 2 :]]

    whole, whole_id = make_backend(model_path, tmp_path / "whole", rank)
    whole_loss, _ = step(whole, whole_id, batch, normalization)
    # a second step brings LoRA's lora_A into play
    step(whole, whole_id, BATCHES[2], normalization)

    split, split_id = make_backend(model_path, tmp_path / "split", rank)
    losses = [split.forward(split_id, data(half), "cross_entropy", None, True).metrics["loss:sum"] for half in halves]
    split.optim_step(split_id, ADAM, normalization)
    step(split, split_id, BATCHES[2], normalization)

    assert sum(losses) == pytest.approx(whole_loss, rel=1e-6, abs=1e-5)
    assert_same_state(trainable(split, split_id), trainable(whole, whole_id), atol=1e-6)


def test_forward_without_backward_keeps_accumulated_gradients(model_path, tmp_path) -> None:
    """A forward (e.g. a reference or an eval) between forward_backward and optim_step must not touch the
    gradients waiting for the step."""
    backend, model_id = make_backend(model_path, tmp_path)
    backend.forward(model_id, data(RAGGED[0]), "cross_entropy", None, backward=True)
    pending = grads(backend, model_id)
    assert all(g is not None for g in pending)

    backend.forward(model_id, data(RAGGED[1]), "cross_entropy", None, backward=False)

    after = grads(backend, model_id)
    assert all(g is not None for g in after), "forward(backward=False) dropped the accumulated gradients"
    assert all(torch.equal(a, b) for a, b in zip(pending, after, strict=True))


# --- atomicity ---------------------------------------------------------------------------------------


def failing_call(kind: str, batch: Batch, sampler_logp: list[float]) -> tuple[list[Datum], str, dict | None, str]:
    """A forward_backward that must fail: (data, loss_fn, loss_fn_config, message substring)."""
    good = data(batch)
    tokens, targets, weights = batch[1]
    if kind == "nan-weight-second-datum":
        bad = [*weights[:-1], math.nan]
        second = Datum(
            model_input=ModelInput.from_ints(tokens), loss_fn_inputs={"target_tokens": targets, "weights": bad}
        )
        return [good[0], second, *good[2:]], "cross_entropy", None, "datum 1: loss_fn_inputs['weights'] contains NaN"
    if kind == "out-of-vocab-target":
        second = Datum(
            model_input=ModelInput.from_ints(tokens),
            loss_fn_inputs={"target_tokens": [*targets[:-1], tiny.VOCAB_SIZE], "weights": weights},
        )
        return [good[0], second], "cross_entropy", None, f"token id {tiny.VOCAB_SIZE} is outside the vocabulary"
    if kind == "out-of-vocab-input":
        second = Datum(
            model_input=ModelInput.from_ints([*tokens[:-1], 10_000]),
            loss_fn_inputs={"target_tokens": targets, "weights": weights},
        )
        return [good[0], second], "cross_entropy", None, "token id 10000 is outside the vocabulary"
    # Finite inputs whose gradients overflow: this one fails after backward has run, so the backend must put the
    # gradients back. q is the model's logprob but on one token, where (logp - q)^2 = 1: the loss,
    # beta/2 * sum((logp - q)^2), stays finite; its gradient, beta * (logp - q) * dlogp, does not.
    assert kind == "non-finite-gradients"
    tokens, targets, _ = batch[0]
    q = list(sampler_logp)
    q[2] -= 1.0
    datum = Datum(
        model_input=ModelInput.from_ints(tokens),
        loss_fn_inputs={"target_tokens": targets, "logprobs": q, "advantages": [0.0] * len(tokens)},
    )
    return [datum], "dro", {"beta": 3e38}, "the gradients are not finite"


@pytest.mark.parametrize("rank", [0, RANK], ids=["full", "lora"])
@pytest.mark.parametrize(
    "kind", ["nan-weight-second-datum", "out-of-vocab-target", "out-of-vocab-input", "non-finite-gradients"]
)
def test_failed_forward_backward_changes_nothing(model_path, tmp_path, rank, kind) -> None:
    normalization = GradNormalization.NUM_LOSS_TOKENS  # the step also sees the loss-token count
    # Reference run: a step, a forward_backward, a step.
    clean, clean_id = make_backend(model_path, tmp_path / "clean", rank)
    step(clean, clean_id, RAGGED[0], normalization)
    # the logprobs of the weights after one step, for the failing dro call (nothing pending here to disturb)
    sampler_logp = logprobs(clean, clean_id, RAGGED[2][:1])[0]
    clean.forward(clean_id, data(RAGGED[1]), "cross_entropy", None, True)
    clean.optim_step(clean_id, ADAM, normalization)

    backend, model_id = make_backend(model_path, tmp_path / "failing", rank)
    step(backend, model_id, RAGGED[0], normalization)
    backend.forward(model_id, data(RAGGED[1]), "cross_entropy", None, True)
    slot = backend.slot(model_id)
    pending, weights = grads(backend, model_id), trainable(backend, model_id)
    counts = (slot.loss_tokens, slot.loss_sequences)

    bad, loss_fn, config, message = failing_call(kind, RAGGED[2], sampler_logp)
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        backend.forward(model_id, bad, loss_fn, config, backward=True)

    after = grads(backend, model_id)
    assert all(g is not None for g in after)
    assert all(torch.equal(a, b) for a, b in zip(pending, after, strict=True)), "gradients changed"
    assert_same_state(trainable(backend, model_id), weights)
    assert (slot.loss_tokens, slot.loss_sequences) == counts

    backend.optim_step(model_id, ADAM, normalization)
    assert_same_state(trainable(backend, model_id), trainable(clean, clean_id))


@pytest.mark.parametrize(
    ("last", "refused"),
    [(7, None), (7.0, None), (7.5, "7.5"), (math.nan, "nan"), (-1, "-1"), (2**70, str(2**70))],
    ids=["int", "whole-float", "fraction", "nan", "negative", "beyond-int64"],
)
def test_target_token_ids_are_whole_numbers_in_the_vocabulary(model_path, tmp_path, last, refused) -> None:
    backend = bare_backend(model_path, tmp_path)
    tokens, targets, _ = BATCHES[0][0]
    values = [*targets[:-1], last]
    dtype = "float32" if isinstance(last, float) else "int64"
    datum = Datum(
        model_input=ModelInput.from_ints(tokens),
        loss_fn_inputs={"target_tokens": TensorData(data=values, dtype=dtype)},
    )
    spec = loss_spec("cross_entropy")
    if refused is None:
        (prepared,) = backend.prepare([datum], spec, "cross_entropy")
        assert prepared.inputs["target_tokens"].tolist() == [int(v) for v in values]
        assert prepared.inputs["target_tokens"].dtype == torch.int64
    else:
        message = f"datum 0 target_tokens: token id {refused} is outside the vocabulary (0..{tiny.VOCAB_SIZE - 1})"
        with pytest.raises(InvalidArgument, match=re.escape(message)):
            backend.prepare([datum], spec, "cross_entropy")


def test_failed_forward_backward_on_fresh_model_leaves_no_gradients(model_path, tmp_path) -> None:
    backend, model_id = make_backend(model_path, tmp_path)
    before = trainable(backend, model_id)
    bad, loss_fn, config, _ = failing_call("nan-weight-second-datum", RAGGED[0], [])
    with pytest.raises(InvalidArgument):
        backend.forward(model_id, bad, loss_fn, config, backward=True)
    assert all(g is None for g in grads(backend, model_id))
    metrics = backend.optim_step(model_id, ADAM, GradNormalization.NUM_LOSS_TOKENS)
    assert metrics["grad_norm"] == 0.0
    assert_same_state(trainable(backend, model_id), before)


# --- checkpoints -------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [0, RANK], ids=["full", "lora"])
def test_load_with_optimizer_resumes_bit_for_bit(model_path, tmp_path, rank) -> None:
    backend, model_id = make_backend(model_path, tmp_path, rank)
    step(backend, model_id, RAGGED[0])
    backend.save_state(model_id, "resume")
    first = [step(backend, model_id, batch, GradNormalization.NUM_LOSS_TOKENS) for batch in RAGGED[1:4]]
    first_state = trainable(backend, model_id)

    backend.load_state(model_id, backend.checkpoints.resolve("resume"), with_optimizer=True)
    second = [step(backend, model_id, batch, GradNormalization.NUM_LOSS_TOKENS) for batch in RAGGED[1:4]]

    assert second == first  # losses, grad norms and step numbers, exactly
    assert_same_state(trainable(backend, model_id), first_state)
    assert len({loss for loss, _ in first}) == 3


@pytest.mark.parametrize("rank", [0, RANK], ids=["full", "lora"])
def test_load_without_optimizer_resets_the_optimizer(model_path, tmp_path, rank) -> None:
    backend, model_id = make_backend(model_path, tmp_path / "a", rank)
    step(backend, model_id, RAGGED[0])
    backend.save_state(model_id, "weights-only")
    step(backend, model_id, RAGGED[1])
    directory = backend.checkpoints.resolve("weights-only")

    backend.load_state(model_id, directory, with_optimizer=True)
    step(backend, model_id, RAGGED[2])
    continued = trainable(backend, model_id)

    backend.load_state(model_id, directory, with_optimizer=False)
    step(backend, model_id, RAGGED[2])
    reset = trainable(backend, model_id)

    # a backend that never stepped, loading the same weights: its optimizer is fresh by construction
    fresh, fresh_id = make_backend(model_path, tmp_path / "b", rank)
    fresh.load_state(fresh_id, directory, with_optimizer=False)
    step(fresh, fresh_id, RAGGED[2])

    assert_same_state(reset, trainable(fresh, fresh_id))
    assert differs(reset, continued, by=1e-6), "the optimizer moments survived a load without optimizer"


def test_load_discards_gradients_accumulated_before_it(model_path, tmp_path) -> None:
    """A load drops the pending gradients, so the next step must not count their loss tokens either."""
    normalization = GradNormalization.NUM_LOSS_TOKENS
    backend, model_id = make_backend(model_path, tmp_path / "a")
    step(backend, model_id, RAGGED[0])
    backend.save_state(model_id, "mid")
    backend.forward(model_id, data(RAGGED[1]), "cross_entropy", None, True)  # pending, then abandoned
    backend.load_state(model_id, backend.checkpoints.resolve("mid"), with_optimizer=True)
    assert all(g is None for g in grads(backend, model_id))
    step(backend, model_id, RAGGED[2], normalization)

    clean, clean_id = make_backend(model_path, tmp_path / "b")
    step(clean, clean_id, RAGGED[0])
    step(clean, clean_id, RAGGED[2], normalization)

    assert_same_state(trainable(backend, model_id), trainable(clean, clean_id))


def test_checkpoint_of_another_kind_or_rank_is_refused(model_path, tmp_path) -> None:
    full, full_id = make_backend(model_path, tmp_path / "full", 0)
    step(full, full_id, RAGGED[0])
    full.save_state(full_id, "full-ckpt")
    lora4, lora4_id = make_backend(model_path, tmp_path / "lora4", RANK)
    step(lora4, lora4_id, RAGGED[0])
    lora4.save_state(lora4_id, "lora-ckpt")
    lora8, lora8_id = make_backend(model_path, tmp_path / "lora8", 8)

    refusals = [
        (lora4, lora4_id, full.checkpoints.resolve("full-ckpt"), ["full rank-0", f"lora rank-{RANK}"]),
        (full, full_id, lora4.checkpoints.resolve("lora-ckpt"), [f"lora rank-{RANK}", "full rank-0"]),
        (lora8, lora8_id, lora4.checkpoints.resolve("lora-ckpt"), [f"lora rank-{RANK}", "lora rank-8"]),
    ]
    for backend, model_id, directory, substrings in refusals:
        before = trainable(backend, model_id)
        for with_optimizer in (True, False):
            with pytest.raises(FailedPrecondition) as caught:
                backend.load_state(model_id, directory, with_optimizer=with_optimizer)
            for substring in substrings:
                assert substring in str(caught.value), (substring, str(caught.value))
            assert directory.name in str(caught.value)
        assert_same_state(trainable(backend, model_id), before)


# --- forward-only ------------------------------------------------------------------------------------


def logprobs(backend: WireBackend, model_id: str, batch: Batch) -> list[list[float]]:
    out = backend.forward(model_id, data(batch), "cross_entropy", None, backward=False)
    return [output["logprobs"].data for output in out.loss_fn_outputs]


def base_logprobs(model_path: str, batch: Batch) -> list[torch.Tensor]:
    model = load_model(model_path, "cpu")
    result = []
    with torch.no_grad():
        for tokens, targets, _ in batch:
            logits = model(input_ids=torch.tensor([tokens])).logits[0].float()
            result.append(torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(targets)[:, None])[:, 0])
    return result


def assert_forward_only_refusals(backend: WireBackend, model_id: str) -> None:
    with pytest.raises(FailedPrecondition, match=f"model {model_id} is forward-only"):
        backend.forward(model_id, data(RAGGED[0]), "cross_entropy", None, backward=True)
    with pytest.raises(FailedPrecondition, match=f"model {model_id} is forward-only"):
        backend.optim_step(model_id, ADAM, None)
    with pytest.raises(FailedPrecondition, match="forward-only"):
        backend.save_state(model_id, "nothing")


@pytest.mark.parametrize("lora", [None, LoraConfig(rank=0)], ids=["no-lora-config", "rank-0"])
def test_forward_only_job_refuses_training(model_path, tmp_path, lora) -> None:
    backend = bare_backend(model_path, tmp_path, forward_only=True)
    model_id, _ = backend.create_model(lora, base_only=False)
    before = trainable(backend, model_id)
    assert_forward_only_refusals(backend, model_id)
    assert all(not p.requires_grad and p.grad is None for p in backend.base.parameters())
    assert_same_state(trainable(backend, model_id), before)
    for got, expected in zip(logprobs(backend, model_id, RAGGED[0]), base_logprobs(model_path, RAGGED[0]), strict=True):
        torch.testing.assert_close(torch.tensor(got), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("reference_first", [False, True], ids=["adapter-first", "reference-first"])
def test_base_only_reference_ignores_the_trained_adapter(model_path, tmp_path, reference_first) -> None:
    backend = bare_backend(model_path, tmp_path, RANK)
    if reference_first:  # created while the backend has no peft model yet
        reference_id, _ = backend.create_model(None, base_only=True)
        policy_id, _ = backend.create_model(LoraConfig(rank=RANK, alpha=ALPHA), base_only=False)
    else:
        policy_id, _ = backend.create_model(LoraConfig(rank=RANK, alpha=ALPHA), base_only=False)
        reference_id, _ = backend.create_model(None, base_only=True)
    expected = base_logprobs(model_path, RAGGED[0])

    for batch in RAGGED[:3]:
        backend.forward(policy_id, data(batch), "cross_entropy", None, True)
        backend.optim_step(policy_id, ADAM.model_copy(update={"learning_rate": 1e-2}), None)

    policy = logprobs(backend, policy_id, RAGGED[0])
    assert (
        max(float((torch.tensor(got) - want).abs().max()) for got, want in zip(policy, expected, strict=True)) > 1e-3
    ), "the adapter must have changed the policy for this test to mean anything"
    for got, want in zip(logprobs(backend, reference_id, RAGGED[0]), expected, strict=True):
        torch.testing.assert_close(torch.tensor(got), want, atol=1e-5, rtol=0)
    assert_forward_only_refusals(backend, reference_id)


def test_base_only_reference_on_full_parameter_trainer_never_drifts(model_path, tmp_path) -> None:
    """A full-parameter trainer changes its base weights, so a base-only reference there is refused; creating the
    reference before the trainable model must not slip past that and hand out a reference that drifts."""
    backend = bare_backend(model_path, tmp_path / "a")
    # the documented order is refused
    other = bare_backend(model_path, tmp_path / "b")
    other.create_model(LoraConfig(rank=0), base_only=False)
    with pytest.raises(FailedPrecondition, match="base_only needs a LoRA or forward-only trainer"):
        other.create_model(None, base_only=True)

    try:
        reference_id, _ = backend.create_model(None, base_only=True)
        policy_id, _ = backend.create_model(LoraConfig(rank=0), base_only=False)
    except FailedPrecondition as refused:
        assert "base_only" in str(refused)
        return
    expected = base_logprobs(model_path, RAGGED[0])
    step(backend, policy_id, RAGGED[0])
    for got, want in zip(logprobs(backend, reference_id, RAGGED[0]), expected, strict=True):
        torch.testing.assert_close(
            torch.tensor(got), want, atol=1e-5, rtol=0, msg=lambda m: f"the base-only reference drifted: {m}"
        )


@pytest.mark.parametrize("rank", [0, RANK], ids=["full", "lora"])
def test_the_loss_in_chunks_of_tokens_equals_the_loss_in_one_piece(model_path, tmp_path, rank):
    """Chunks of 5 tokens (recomputed in the backward pass) against the whole batch's logits at once: the same
    logprobs, loss and gradients."""
    runs = []
    for chunk in (4096, 5):
        trainer, model_id = make_backend(model_path, tmp_path / str(chunk), rank)
        trainer.backend.loss_chunk_tokens = chunk
        trainer.forward(model_id, data(RAGGED[0]), "cross_entropy", None, True)  # B of LoRA moves off zero
        trainer.optim_step(model_id, ADAM, None)
        out = trainer.forward(model_id, data(RAGGED[1]), "cross_entropy", None, True)
        grads = [param.grad.clone() for param in trainer.slot(model_id).params]
        runs.append(([o["logprobs"].data for o in out.loss_fn_outputs], out.metrics["loss:sum"], grads))
    (whole_logprobs, whole_loss, whole_grads), (logprobs, loss, grads) = runs
    assert sum(len(row) for row in logprobs) > 5  # several chunks
    for ours, theirs in zip(logprobs, whole_logprobs, strict=True):
        assert ours == pytest.approx(theirs, abs=1e-5)
    assert loss == pytest.approx(whole_loss, rel=1e-6)
    assert any(grad.abs().max() > 0 for grad in whole_grads)
    for ours, theirs in zip(grads, whole_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)  # the chunks sum in another order
