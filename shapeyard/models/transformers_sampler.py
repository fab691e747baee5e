"""The transformers sampling backend: batched decoding with a KV cache on one device.

All requests of a call decode together (left padding, one KV cache). Rows sample by inverse CDF from uniforms drawn
up front from each row's own generator, so a seeded request gets the same tokens whichever requests share its batch.
One lock serialises decoding and snapshot loading, so a worker may call both from several threads.
"""

from __future__ import annotations

import inspect
import math
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedTokenizerBase

from shapeyard.models.loading import load_model, load_tokenizer
from shapeyard.models.sampling import DecodingParams, Generation, GenerationRequest, validate
from shapeyard.models.snapshots import SnapshotSlot


class RowSampler:
    """The sampling parameters of every row as tensors, so one step samples all rows with a few batched ops.

    Sampling is by inverse CDF with one uniform per row and step, drawn up front from the row's own generator: a
    seeded request gets the same tokens whichever requests share its batch, and a step needs no per-row Python.
    """

    def __init__(self, params: Sequence[DecodingParams], vocab_size: int, device: torch.device, fresh: torch.Generator):
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

    def __init__(self, params: Sequence[DecodingParams], tokenizer: PreTrainedTokenizerBase) -> None:
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


class TransformersSampler:
    """A `SamplingBackend` (`shapeyard.models.sampling`) on the base model of `base_dir`."""

    def __init__(self, base_dir: str | Path, device: str = "cpu", max_context_length: int | None = None) -> None:
        self.device = torch.device(device)
        base = load_model(str(base_dir), device).eval()
        base.requires_grad_(False)
        self.slot = SnapshotSlot(base, Path(base_dir))
        self.tokenizer = load_tokenizer(str(base_dir))
        self.vocab_size: int = base.get_output_embeddings().weight.shape[0]
        self.max_context_length: int = max_context_length or base.config.max_position_embeddings
        self.pad_token_id = self.tokenizer.pad_token_id or 0
        self._config = base.config
        self._lock = threading.Lock()
        self._fresh = torch.Generator().manual_seed(secrets.randbits(63))
        # transformers 5 renamed past_key_values to cache; use whichever this version takes.
        parameters = inspect.signature(base.forward).parameters
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"

    @property
    def identity(self) -> str | None:
        return self.slot.identity

    def load_snapshot(self, directory: str | Path, identity: str) -> None:
        with self._lock:
            self.slot.load(directory, identity)

    def sample(self, requests: list[GenerationRequest]) -> list[Generation]:
        for index, request in enumerate(requests):
            validate(request, index, self.vocab_size, self.max_context_length)
        if not requests:
            return []
        with self._lock, torch.inference_mode():
            return self._sample(requests)

    def _sample(self, requests: list[GenerationRequest]) -> list[Generation]:
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
        cache = DynamicCache(config=self._config)
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
                Generation(
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
        return self.slot.network(
            input_ids=ids,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=keep,
            **{self._cache_arg: cache},
        ).logits

    def _prompt_logprobs(
        self, requests: list[GenerationRequest], logits: Tensor, scored: list[int]
    ) -> dict[int, list[float | None]]:
        """logits hold the last `keep` columns, enough for the longest prompt that asked."""
        result: dict[int, list[float | None]] = {}
        for row in scored:
            prompt = requests[row].prompt
            predicting = logits[row, logits.shape[1] - len(prompt) : -1].float().log_softmax(-1)
            targets = torch.tensor(prompt[1:], device=logits.device)[:, None]
            result[row] = [None, *predicting.gather(1, targets).squeeze(1).tolist()]
        return result

    def _text(self, tokens: list[int], params: DecodingParams, stopped: bool) -> str:
        if stopped and tokens and tokens[-1] in params.stop_token_ids:
            tokens = tokens[:-1]
        text = self.tokenizer.decode(tokens)
        cuts = [cut for cut in (text.find(s) for s in params.stop) if cut >= 0]
        return text[: min(cuts)] if cuts else text
