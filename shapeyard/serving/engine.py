"""The model math of a deployment worker: batched sampling with logprobs, and hot-loaded weight snapshots.

One base model per worker. `sample` decodes all requests of a call together (left padding, one KV cache) and returns,
for every generated token, the model's raw logprob (what a trainer's forward pass computes for the same tokens) and its
logprob under the distribution actually sampled from. `load_snapshot` swaps in a trainer's snapshot (a full HF
directory or a PEFT LoRA adapter) only after reading and validating all of it, so a bad snapshot leaves the previous
weights serving. One lock serialises both, so a worker may call them from several threads.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, load_peft_weights, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from torch import Tensor
from transformers import AutoConfig, DynamicCache, PreTrainedTokenizerBase

from shapeyard.errors import InvalidArgument
from shapeyard.models.loading import load_model, load_tokenizer

# A full snapshot must agree with the base model on each of these; keys and shapes are checked separately.
ARCHITECTURE_FIELDS = (
    "model_type",
    "architectures",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "tie_word_embeddings",
)


class SnapshotError(Exception):
    """A snapshot that cannot be served: missing, unreadable, or not made for this base model."""


@dataclass
class SamplingParams:
    max_tokens: int = 16  # 0 only scores the prompt (with prompt_logprobs)
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 = off
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)  # matched on the decoded completion text

    def for_sample(self, index: int) -> SamplingParams:
        """The i-th of n samples of one request: a seeded request gives each its own seed, so that they differ
        yet stay reproducible."""
        return self if self.seed is None or index == 0 else replace(self, seed=self.seed + index)


@dataclass
class Request:
    prompt: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    prompt_logprobs: bool = False


@dataclass
class Completion:
    prompt: list[int]
    tokens: list[int]  # ends with the stop token, or with the token that completed a stop string
    logprobs: list[float]  # raw model logprobs (temperature 1, no filtering), as a trainer's forward pass computes
    sampling_logprobs: list[float]  # under the distribution sampled from; 0.0 for greedy
    finish_reason: str  # "stop" or "length"
    text: str  # decoded tokens, without a final stop token, cut before the first stop string
    prompt_logprobs: list[float | None] | None  # [None, logp(prompt[1] | prompt[:1]), ...] when requested


# --- sampling -------------------------------------------------------------------------------------------------------


class RowSampler:
    """The sampling parameters of every row as tensors, so one step samples all rows with a few batched ops.

    Sampling is by inverse CDF with one uniform per row and step, drawn up front from the row's own generator: a
    seeded request gets the same tokens whichever requests share its batch, and a step needs no per-row Python.
    """

    def __init__(self, params: Sequence[SamplingParams], vocab_size: int, device: torch.device, fresh: torch.Generator):
        sampled = [p.temperature > 0 for p in params]
        self.all_greedy = not any(sampled)
        self.any_greedy = not all(sampled)
        self.greedy = torch.tensor([not s for s in sampled], device=device)
        self.temperature = torch.tensor([[p.temperature or 1.0] for p in params], device=device)
        self.scaled = any(p.temperature not in (0.0, 1.0) for p in params)
        top_k = [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params]
        self.top_k = torch.tensor(top_k, device=device)[:, None]
        # top_p 1 becomes 2, above any cumulative sum, so that rounding never drops a token from an unfiltered row.
        self.top_p = torch.tensor([[p.top_p if p.top_p < 1 else 2.0] for p in params], device=device)
        self.nucleus = any(s and p.top_p < 1 for s, p in zip(sampled, params, strict=True))
        self.filtered = self.nucleus or any(s and k < vocab_size for s, k in zip(sampled, top_k, strict=True))
        self.ranks = torch.arange(vocab_size, device=device)
        uniforms = torch.zeros(len(params), max((p.max_tokens for p in params), default=0))
        for row, p in enumerate(params):
            if sampled[row] and p.max_tokens:
                generator = fresh if p.seed is None else torch.Generator().manual_seed(p.seed % 2**64)
                uniforms[row, : p.max_tokens] = torch.rand(p.max_tokens, generator=generator)
        self.uniforms = uniforms.to(device)

    def __call__(self, logits: Tensor, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """logits [rows, vocab] float32 -> (tokens, raw logprobs, sampling logprobs), each [rows]."""
        logprobs = logits.log_softmax(-1)
        if self.all_greedy:
            tokens = logits.argmax(-1)
            return tokens, logprobs.gather(1, tokens[:, None]).squeeze(1), torch.zeros_like(logits[:, 0])
        scores = logits / self.temperature if self.scaled else logits
        if self.filtered:
            scores = self._filter(scores)
        sampling = scores.log_softmax(-1)
        cdf = sampling.exp().cumsum(-1)
        total = cdf[:, -1:]
        # u < 1, yet u * total may round up to total; staying below it never picks a zero-probability tail token.
        target = torch.minimum(self.uniforms[:, step, None] * total, total.nextafter(torch.zeros_like(total)))
        tokens = torch.searchsorted(cdf, target, right=True).squeeze(1)
        sampling_logprobs = sampling.gather(1, tokens[:, None]).squeeze(1)
        if self.any_greedy:
            tokens = torch.where(self.greedy, logits.argmax(-1), tokens)
            sampling_logprobs = sampling_logprobs.masked_fill(self.greedy, 0.0)
        return tokens, logprobs.gather(1, tokens[:, None]).squeeze(1), sampling_logprobs

    def _filter(self, scores: Tensor) -> Tensor:
        """Top-k, then top-p on the top-k renormalised distribution: -inf for every token dropped."""
        ordered, order = scores.sort(-1, descending=True)
        keep = self.ranks < self.top_k
        if self.nucleus:
            probs = ordered.masked_fill(~keep, -math.inf).softmax(-1)
            # keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is short of it
            keep &= probs.cumsum(-1) - probs < self.top_p
        return scores.masked_fill(~torch.empty_like(keep).scatter_(1, order, keep), -math.inf)


class StopWatch:
    """Host-side bookkeeping for rows that may stop early; rows without stop conditions cost nothing per step."""

    def __init__(self, params: Sequence[SamplingParams], tokenizer: PreTrainedTokenizerBase) -> None:
        self.params = params
        self.tokenizer = tokenizer
        self.lengths = [p.max_tokens for p in params]
        self.stopped = [False] * len(params)
        self.watching = [row for row, p in enumerate(params) if p.max_tokens and (p.stop_token_ids or p.stop)]
        self.stop_ids = [set(p.stop_token_ids) for p in params]
        self.generated: list[list[int]] = [[] for _ in params]
        # Enough trailing tokens to hold any stop string, even at 4 byte-level tokens per character.
        self.windows = [4 * max(map(len, p.stop), default=0) + 8 for p in params]

    def update(self, tokens: list[int], step: int) -> int:
        """Records this step's tokens; returns how many steps the batch still needs in total."""
        for row in list(self.watching):
            token = tokens[row]
            stop = self.params[row].stop
            hit = token in self.stop_ids[row]
            if stop:
                self.generated[row].append(token)
                tail = self.tokenizer.decode(self.generated[row][-self.windows[row] :])
                hit = hit or any(s in tail for s in stop)
            if hit:
                self.lengths[row], self.stopped[row] = step + 1, True
            if hit or step + 1 >= self.lengths[row]:
                self.watching.remove(row)
        return max(self.lengths)


def validate(request: Request, index: int, vocab_size: int, max_context_length: int) -> None:
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


# --- the engine -----------------------------------------------------------------------------------------------------


class SamplingEngine:
    """The base model of `base_dir`, and at most one snapshot on it (`identity`; None while serving the base)."""

    def __init__(self, base_dir: str | Path, device: str = "cpu", max_context_length: int | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.device = torch.device(device)
        self.base = load_model(str(self.base_dir), device).eval()
        self.base.requires_grad_(False)
        self.tokenizer = load_tokenizer(str(self.base_dir))
        self.vocab_size: int = self.base.get_output_embeddings().weight.shape[0]
        self.max_context_length: int = max_context_length or self.base.config.max_position_embeddings
        self.identity: str | None = None
        self.peft: PeftModel | None = None
        self.adapter: str | None = None
        # Tensors the weights of a full snapshot are copied into, by name; tied names share one tensor. peft leaves
        # these objects in place when it wraps their modules, so they stay valid whatever is loaded.
        self.weights: dict[str, Tensor] = dict(self.base.state_dict(keep_vars=True))
        self.base_modified = False  # a snapshot's weights (full, or an adapter's base layers) replace the base's
        self.pad_token_id = self.tokenizer.pad_token_id or 0
        self._lock = threading.Lock()
        self._fresh = torch.Generator().manual_seed(secrets.randbits(63))
        self._adapter_names = (f"snapshot-{n}" for n in itertools.count(1))
        # transformers 5 renamed past_key_values to cache; use whichever this version takes.
        parameters = inspect.signature(self.base.forward).parameters
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"

    @property
    def network(self) -> torch.nn.Module:
        return self.peft if self.peft is not None else self.base

    def sample(self, requests: list[Request]) -> list[Completion]:
        """Decodes all requests in one batch. Raises InvalidArgument, before any work, for a bad request."""
        for index, request in enumerate(requests):
            validate(request, index, self.vocab_size, self.max_context_length)
        if not requests:
            return []
        with self._lock, torch.inference_mode():
            return self._sample(requests)

    def _sample(self, requests: list[Request]) -> list[Completion]:
        device, rows = self.device, len(requests)
        params = [request.params for request in requests]
        lengths = [len(request.prompt) for request in requests]
        width, steps = max(lengths), max(p.max_tokens for p in params)
        # Left padding puts every row's last prompt token in the last column; position ids count real tokens only,
        # so each row is computed at the positions an unpadded forward pass would use.
        ids = torch.full((rows, width), self.pad_token_id, dtype=torch.long)
        mask = torch.ones((rows, width + steps), dtype=torch.bool)
        for row, request in enumerate(requests):
            ids[row, width - lengths[row] :] = torch.tensor(request.prompt)
            mask[row, : width - lengths[row]] = False
        padded = min(lengths) < width
        attention_mask = mask.to(device) if padded else None  # no mask lets attention take its plain causal path
        positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        scored = [row for row, request in enumerate(requests) if request.prompt_logprobs]
        cache = DynamicCache(config=self.base.config)
        logits = self._forward(
            ids.to(device),
            attention_mask[:, :width] if padded else None,
            positions.to(device),
            cache,
            keep=max((lengths[row] for row in scored), default=1),
        )
        prompt_logprobs = self._prompt_logprobs(requests, logits, scored)

        sampler = RowSampler(params, self.vocab_size, device, self._fresh)
        watch = StopWatch(params, self.tokenizer)
        tokens = torch.zeros((rows, steps), dtype=torch.long, device=device)
        logprobs = torch.zeros((rows, steps), device=device)
        sampling_logprobs = torch.zeros((rows, steps), device=device)
        next_positions = torch.tensor(lengths, device=device)[:, None]
        last, done, horizon = logits[:, -1].float(), 0, steps
        for step in range(steps):
            if step:
                mask_now = attention_mask[:, : width + step] if padded else None
                last = self._forward(tokens[:, step - 1 : step], mask_now, next_positions + (step - 1), cache)[:, -1]
                last = last.float()
            tokens[:, step], logprobs[:, step], sampling_logprobs[:, step] = sampler(last, step)
            done = step + 1
            # Finished rows keep decoding with the batch; only their recorded length stops growing.
            if watch.watching:
                horizon = watch.update(tokens[:, step].tolist(), step)
            if done >= horizon:
                break

        token_rows, logprob_rows = tokens[:, :done].tolist(), logprobs[:, :done].tolist()
        sampling_rows = sampling_logprobs[:, :done].tolist()
        completions = []
        for row, request in enumerate(requests):
            n = watch.lengths[row]
            completions.append(
                Completion(
                    prompt=list(request.prompt),
                    tokens=token_rows[row][:n],
                    logprobs=logprob_rows[row][:n],
                    sampling_logprobs=sampling_rows[row][:n],
                    finish_reason="stop" if watch.stopped[row] else "length",
                    text=self._text(token_rows[row][:n], request.params, watch.stopped[row]),
                    prompt_logprobs=prompt_logprobs.get(row),
                )
            )
        return completions

    def _forward(
        self, ids: Tensor, attention_mask: Tensor | None, positions: Tensor, cache: DynamicCache, keep: int = 1
    ) -> Tensor:
        return self.network(
            input_ids=ids,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=keep,
            **{self._cache_arg: cache},
        ).logits

    def _prompt_logprobs(
        self, requests: list[Request], logits: Tensor, scored: list[int]
    ) -> dict[int, list[float | None]]:
        """logits hold the last `keep` columns, enough for the longest prompt that asked."""
        result: dict[int, list[float | None]] = {}
        for row in scored:
            prompt = requests[row].prompt
            predicting = logits[row, logits.shape[1] - len(prompt) : -1].float().log_softmax(-1)
            targets = torch.tensor(prompt[1:], device=logits.device)[:, None]
            result[row] = [None, *predicting.gather(1, targets).squeeze(1).tolist()]
        return result

    def _text(self, tokens: list[int], params: SamplingParams, stopped: bool) -> str:
        if stopped and tokens and tokens[-1] in params.stop_token_ids:
            tokens = tokens[:-1]
        text = self.tokenizer.decode(tokens)
        cuts = [cut for cut in (text.find(s) for s in params.stop) if cut >= 0]
        return text[: min(cuts)] if cuts else text

    # --- snapshots ----------------------------------------------------------------------------------------------------

    def load_snapshot(self, directory: str | Path, identity: str) -> None:
        """Serves a trainer's snapshot: a full HF directory or a LoRA adapter on the base model. Raises SnapshotError,
        with the previous weights still serving, when the snapshot cannot be served."""
        path = Path(directory)
        with self._lock, torch.no_grad():
            if not path.is_dir():
                raise SnapshotError(f"snapshot {identity!r}: {path} is not a directory")
            if (path / "adapter_config.json").is_file():
                self._load_adapter(path, identity)
            elif (path / "config.json").is_file():
                self._load_full(path, identity)
            else:
                raise SnapshotError(
                    f"snapshot {identity!r}: {path} holds neither adapter_config.json (a LoRA adapter) nor "
                    "config.json (full weights)"
                )
            self.identity = identity

    def reset(self) -> None:
        """Back to the base model's weights. Raises SnapshotError, changing nothing, if they cannot be re-read."""
        with self._lock, torch.no_grad():
            base = self._read_weights(self.base_dir, "the base model") if self.base_modified else None
            self._drop_adapter()
            if base is not None:
                self._copy_in(base)
            self.base_modified = False
            self.identity = None

    def _load_full(self, path: Path, identity: str) -> None:
        what = f"snapshot {identity!r} ({path})"
        try:
            config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:
            raise SnapshotError(f"{what}: unreadable config.json: {exc}") from exc
        differences = [
            f"{key} {getattr(config, key, None)!r} (the base model's is {getattr(self.base.config, key, None)!r})"
            for key in ARCHITECTURE_FIELDS
            if getattr(config, key, None) != getattr(self.base.config, key, None)
        ]
        if differences:
            raise SnapshotError(f"{what} is not of the base model's architecture: " + "; ".join(differences))
        weights = self._read_weights(path, what)
        self._drop_adapter()
        self._copy_in(weights)
        self.base_modified = True

    def _load_adapter(self, path: Path, identity: str) -> None:
        what = f"snapshot {identity!r} ({path})"
        try:
            peft_type = json.loads((path / "adapter_config.json").read_text()).get("peft_type")
            if peft_type != "LORA":
                raise SnapshotError(f"{what} is a {peft_type} adapter; only LoRA adapters can be served")
            config = LoraConfig.from_pretrained(str(path))
            adapter_weights = load_peft_weights(str(path), device="cpu")
        except SnapshotError:
            raise
        except Exception as exc:
            raise SnapshotError(f"{what}: unreadable LoRA adapter: {exc}") from exc
        # peft saves whole base layers next to the adapter when it targets tied embeddings (lm_head), and loading
        # them overwrites the base weights. They go in like a full snapshot's, after the adapter has loaded.
        overrides = {}
        for key in list(adapter_weights):
            base_key = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
            if base_key in self.weights:
                overrides[base_key] = adapter_weights.pop(key)
        overrides = self._checked(overrides, what, complete=False)
        # The adapter was trained on the base weights; read them back first if a full snapshot replaced them.
        base = self._read_weights(self.base_dir, "the base model") if self.base_modified else None
        name = next(self._adapter_names)
        config.inference_mode = True
        try:
            if self.peft is None:
                self.peft = PeftModel(self.base, config, adapter_name=name)
            else:
                self.peft.add_adapter(name, config)
            result = set_peft_model_state_dict(self.peft, adapter_weights, adapter_name=name)
            missing = [key for key in result.missing_keys if f".{name}." in key and "lora_" in key]
            if missing or result.unexpected_keys:
                raise SnapshotError(
                    f"{what} does not fit the base model: missing {missing[:3]}, unexpected "
                    f"{list(result.unexpected_keys)[:3]}"
                )
        except Exception as exc:
            self._discard_adapter(name)
            if isinstance(exc, SnapshotError):
                raise
            raise SnapshotError(f"{what} does not fit the base model: {exc}") from exc
        if base is not None:
            self._copy_in(base)
        self._copy_in(overrides)
        self.base_modified = bool(overrides)
        self.peft.set_adapter(name)
        if self.adapter is not None:
            self.peft.delete_adapter(self.adapter)  # replaced, not stacked
        self.adapter = name

    def _discard_adapter(self, name: str) -> None:
        """Undoes a failed adapter load, leaving the previous adapter (or none) active."""
        if self.adapter is None:
            self._drop_adapter()
            return
        if name in self.peft.peft_config:
            self.peft.delete_adapter(name)
        self.peft.set_adapter(self.adapter)

    def _drop_adapter(self) -> None:
        """Removes every LoRA layer, leaving the plain base model (whatever weights it holds)."""
        if self.peft is not None:
            self.peft.unload()
        # What an injection that failed halfway may have left behind, where there is no PeftModel to unload it.
        for module_name, module in list(self.base.named_modules()):
            if isinstance(module, BaseTunerLayer):
                parent, _, child = module_name.rpartition(".")
                setattr(self.base.get_submodule(parent), child, module.get_base_layer())
        if hasattr(self.base, "peft_config"):
            del self.base.peft_config  # set by peft; a stale one would confuse the next PeftModel
        self.peft, self.adapter = None, None

    def _read_weights(self, directory: Path, what: str) -> dict[str, Tensor]:
        """A directory's safetensors weights, on the CPU and checked."""
        index = directory / "model.safetensors.index.json"
        try:
            if index.is_file():
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                files = [directory / shard for shard in shards]
            else:
                files = [directory / "model.safetensors"]
            state = {key: value for file in files for key, value in load_file(file, device="cpu").items()}
        except Exception as exc:
            raise SnapshotError(f"{what}: unreadable safetensors weights in {directory}: {exc}") from exc
        return self._checked(state, what, complete=True)

    def _checked(self, state: dict[str, Tensor], what: str, complete: bool) -> dict[str, Tensor]:
        """Base-model weights checked against the base model's names and shapes (all of them, if complete), and
        cast to its dtypes, so that copying them in cannot fail halfway."""
        unexpected = sorted(set(state) - set(self.weights))
        if unexpected:
            raise SnapshotError(f"{what} has weights the base model lacks: {unexpected[:5]}")
        if complete:
            # Tied weights are saved once, under either name.
            aliases: dict[int, list[str]] = {}
            for key, tensor in self.weights.items():
                aliases.setdefault(id(tensor), []).append(key)
            missing = [names[0] for names in aliases.values() if not any(name in state for name in names)]
            if missing:
                raise SnapshotError(f"{what} lacks weights of the base model: {missing[:5]}")
        for key, tensor in state.items():
            if tensor.shape != self.weights[key].shape:
                raise SnapshotError(
                    f"{what}: {key} has shape {list(tensor.shape)}, the base model's is {list(self.weights[key].shape)}"
                )
        return {key: tensor.to(self.weights[key].dtype) for key, tensor in state.items()}

    def _copy_in(self, state: dict[str, Tensor]) -> None:
        for key, tensor in state.items():
            self.weights[key].copy_(tensor)
