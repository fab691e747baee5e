"""The trainer backend: one program on every rank of the job's world (SPMD), transformers and peft underneath.

At world size 1 the whole model sits on one device. Beyond, FSDP2 shards it over the ranks (`World.shard`: each
transformer block and the root; HSDP across replicas), and every rank runs every call, in the order rank 0
received them (`shapeyard.trainer.compute`). Each call's batch is split over the ranks by tokens; a rank whose
share needs fewer micro-batches than another's runs empty ones, because FSDP's collectives need every rank in
every forward and backward. Loss sums, metric shares and logprobs are gathered back in the caller's order.

LoRA adapters are peft adapters on the base model, one per model id, created on request after the base was
sharded: their parameters stay whole on every rank and their gradients are summed over the ranks. Base-only
references run with the adapter disabled. Batches are split into micro-batches of at most one maximum-length
sequence's tokens, the loss's logits exist a chunk of tokens at a time, and gradients accumulate apart from the
pending ones until the whole request has succeeded (see `TrainerBackend`). Checkpoints are DCP checkpoints
keyed by parameter name (`shapeyard.trainer.checkpoints`), so they load at any world size.
"""

from __future__ import annotations

import itertools
import secrets
import shutil
from array import array
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import Tensor
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from shapeyard.store.layout import CheckpointMeta, read_meta
from shapeyard.trainer.backend import (
    AdamStep,
    AdapterSpec,
    BackendConfig,
    Example,
    ForwardResult,
    ModelInfo,
    ModelKind,
    Normalization,
)
from shapeyard.trainer.checkpoints import TrainingState, load_training, save_training, stored_keys
from shapeyard.trainer.losses import LossSpec, loss_spec, resolve_config
from shapeyard.trainer.world import World, full, local, partition
from shapeyard.wire.errors import FailedPrecondition, InvalidArgument, NotFound
from shapeyard.wire.shapes import Precision

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
DTYPES = {Precision.FLOAT32: torch.float32, Precision.BFLOAT16: torch.bfloat16}
INT_INPUTS = frozenset({"target_tokens"})
KNOWN_INPUTS = frozenset({"target_tokens", "weights", "logprobs", "advantages"})


@dataclass
class Slot:
    """What a model id trains, and what it has accumulated since its last optim_step. Clients re-attaching to a
    full-parameter trainer get new model ids for the same slot."""

    kind: ModelKind
    adapter: str | None = None
    lora: AdapterSpec | None = None
    optimizer: torch.optim.AdamW | None = None
    params: list[torch.nn.Parameter] = field(default_factory=list)
    loss_tokens: int = 0
    loss_sequences: int = 0
    steps: int = 0


@dataclass
class Prepared:
    """One validated datum, as tensors."""

    tokens: Tensor  # int64, one per position
    inputs: dict[str, Tensor]


def transformer_blocks(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The repeated blocks FSDP shards one by one: the modules transformers itself never splits across devices."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in names]


class SpmdBackend:
    """A `TrainerBackend` on one rank of the world (all of it at world size 1)."""

    def __init__(
        self, config: BackendConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, world: World
    ) -> None:
        self.config = config
        self.world = world
        self.base = model
        self.tokenizer = tokenizer
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.peft: PeftModel | None = None
        self.slots: dict[str, Slot] = {}
        self._ids = itertools.count(1)
        recipe = config.recipe
        self.micro_batch_tokens, self.loss_chunk_tokens = recipe.micro_batch_tokens, recipe.loss_chunk_tokens
        compute_dtype = DTYPES[recipe.compute_precision]
        # the master weights stay in their precision and the forward runs in the compute one: FSDP casts what it
        # gathers beyond one rank; autocast does it on one
        self._autocast = world.size == 1 and model.dtype != compute_dtype
        self._compute_dtype = compute_dtype
        # every rank names models alike; the random part keeps a restarted trainer's ids apart from the last one's
        self._id_suffix = world.broadcast(secrets.token_hex(3))
        for param in model.parameters():
            param.requires_grad_(False)
        if recipe.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train(recipe.activation_checkpointing)  # checkpointing runs in train mode; no dropout either way
        world.shard(model, transformer_blocks(model), compute_dtype)

    # --- models ----------------------------------------------------------------------------------------

    @property
    def network(self) -> torch.nn.Module:
        return self.peft if self.peft is not None else self.base

    def slot(self, model_id: str) -> Slot:
        if model_id not in self.slots:
            raise NotFound(f"model_id {model_id!r} is not loaded on this trainer")
        return self.slots[model_id]

    def create_model(self, lora: AdapterSpec | None, base_only: bool) -> tuple[str, ModelKind]:
        rank = lora.rank if lora else 0
        model_id = f"model-{next(self._ids)}-{self._id_suffix}"
        if base_only or self.config.forward_only:
            if base_only and self.config.lora_rank == 0 and not self.config.forward_only:
                raise FailedPrecondition(
                    "base_only needs a LoRA or forward-only trainer: this full-parameter trainer changes its base "
                    "weights; run the reference as a separate forward-only job"
                )
            if self.config.forward_only and rank not in (0, self.config.lora_rank):
                raise InvalidArgument(
                    f"lora_config.rank {rank} disagrees with the job's loraRank {self.config.lora_rank}"
                )
            slot = Slot(ModelKind.FROZEN)
        elif rank != self.config.lora_rank:
            raise InvalidArgument(
                f"lora_config.rank {rank} disagrees with the job's loraRank {self.config.lora_rank}: "
                + (
                    "this is a full-parameter trainer, send rank 0"
                    if self.config.lora_rank == 0
                    else f"send rank {self.config.lora_rank}"
                )
            )
        elif rank == 0:
            full = next((s for s in self.slots.values() if s.kind == ModelKind.FULL), None)
            if full is not None:  # a client re-attaching: it continues the same weights and optimizer
                self.slots[model_id] = full
                return model_id, full.kind
            slot = Slot(ModelKind.FULL, params=list(self.base.parameters()))
            for param in slot.params:
                param.requires_grad_(True)
        else:
            slot = self._add_adapter(lora)
        if slot.params:
            slot.optimizer = torch.optim.AdamW(slot.params, lr=1e-4, foreach=False)
        self.slots[model_id] = slot
        return model_id, slot.kind

    def _add_adapter(self, lora: AdapterSpec) -> Slot:
        targets = [*(ATTENTION_MODULES if lora.train_attn else ()), *(MLP_MODULES if lora.train_mlp else ())]
        if lora.train_unembed:
            targets.append("lm_head")
        if not targets:
            raise InvalidArgument("lora_config trains nothing: set one of train_attn, train_mlp, train_unembed")
        peft_config = PeftLoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            target_modules=targets,
            lora_dropout=0.0,
            bias="none",
        )
        adapter = f"adapter-{next(self._ids)}"
        torch.manual_seed(lora.seed if lora.seed is not None else self.config.seed)
        if self.peft is None:
            self.peft = get_peft_model(self.base, peft_config, adapter_name=adapter)
        else:
            self.peft.add_adapter(adapter, peft_config)
        params = [p for name, p in self.peft.named_parameters() if f".{adapter}." in name]
        for param in params:
            param.requires_grad_(True)
        return Slot(ModelKind.LORA, adapter=adapter, lora=lora, params=params)

    def info(self, model_id: str) -> ModelInfo:
        slot = self.slot(model_id)
        return ModelInfo(slot.kind, slot.lora.rank if slot.lora else 0, self.base.config.model_type)

    def unload(self, model_id: str) -> None:
        slot = self.slot(model_id)
        del self.slots[model_id]
        if slot in self.slots.values():  # another client still uses it
            return
        if slot.kind == ModelKind.LORA and self.peft is not None:
            self.peft.delete_adapter(slot.adapter)
        for param in slot.params:
            param.grad = None
            param.requires_grad_(False)

    # --- validation ------------------------------------------------------------------------------------

    def prepare(self, examples: list[Example], spec: LossSpec, loss_fn: str) -> list[Prepared]:
        if not examples:
            raise InvalidArgument("data is empty: send at least one Datum")
        prepared = []
        for index, example in enumerate(examples):
            tokens = example.tokens
            where = f"datum {index}"
            if not tokens:
                raise InvalidArgument(f"{where} has no tokens")
            if len(tokens) > self.config.max_context_length:
                raise InvalidArgument(
                    f"{where} has {len(tokens)} tokens; the shape's maxSupportedContextLength is "
                    f"{self.config.max_context_length}"
                )
            token_ids = self._token_ids(tokens, f"{where} model_input")
            unknown = set(example.inputs) - KNOWN_INPUTS
            missing = [key for key in spec.required if key not in example.inputs]
            if unknown:
                raise InvalidArgument(f"{where}: loss_fn_inputs {sorted(unknown)} are not used by any built-in loss")
            if missing:
                raise InvalidArgument(f"loss_fn {loss_fn} needs loss_fn_inputs {missing} ({where} lacks them)")
            inputs = {}
            for key, values in example.inputs.items():
                if key not in spec.required and key not in spec.optional:
                    raise InvalidArgument(f"{where}: loss_fn {loss_fn} does not take loss_fn_inputs[{key!r}]")
                inputs[key] = self._tensor(key, values, len(tokens), where)
            prepared.append(Prepared(token_ids, inputs))
        return prepared

    def _token_ids(self, values: list[int] | list[float], where: str) -> Tensor:
        # through an array: torch.tensor(list) takes ~7x as long (0.6 ms more per step of the benchmark's batch)
        try:
            ids = array("q", values)
        except (TypeError, OverflowError):  # floats (whole ones are fine) or ints beyond int64
            ids = None
            if all(float(v).is_integer() and abs(v) < 2**63 for v in values):
                ids = array("q", map(int, values))
        if ids is None or min(ids) < 0 or max(ids) >= self.vocab_size:
            bad = next(v for v in values if not float(v).is_integer() or not 0 <= v < self.vocab_size)
            raise InvalidArgument(f"{where}: token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})")
        return torch.frombuffer(ids, dtype=torch.int64).to(self.config.device)

    def _tensor(self, key: str, values: list[float] | list[int], length: int, where: str) -> Tensor:
        if len(values) != length:
            raise InvalidArgument(
                f"{where}: loss_fn_inputs[{key!r}] has {len(values)} values; the datum has {length} positions"
            )
        if key in INT_INPUTS:
            return self._token_ids(values, f"{where} {key}")
        tensor = torch.tensor(values, dtype=torch.float32, device=self.config.device)
        if not bool(torch.isfinite(tensor).all()):
            raise InvalidArgument(f"{where}: loss_fn_inputs[{key!r}] contains NaN or infinity")
        return tensor

    # --- forward and backward ------------------------------------------------------------------------

    def _micro_batches(self, data: list[Prepared], indices: list[int]) -> list[list[tuple[int, Prepared]]]:
        """The data at `indices`, in micro-batches of at most `micro_batch_tokens` (padded) tokens: one sequence of
        the shape's maxSupportedContextLength, what its memory plan is made for."""
        budget = self.micro_batch_tokens
        batches: list[list[tuple[int, Prepared]]] = []
        batch: list[tuple[int, Prepared]] = []
        longest = 0
        for index in indices:
            item = data[index]
            longest_after = max(longest, len(item.tokens))
            if batch and longest_after * (len(batch) + 1) > budget:
                batches.append(batch)
                batch, longest_after = [], len(item.tokens)
            batch.append((index, item))
            longest = longest_after
        if batch:
            batches.append(batch)
        return batches

    def _rank_batches(self, data: list[Prepared]) -> list[list[tuple[int, Prepared]] | None]:
        """This rank's micro-batches of the data, padded with None to the most any rank has (every rank computes
        every rank's split, so they agree without talking)."""
        shares = partition([len(item.tokens) for item in data], self.world.size)
        every = [self._micro_batches(data, share) for share in shares]
        mine: list[list[tuple[int, Prepared]] | None] = [*every[self.world.rank]]
        return mine + [None] * (max(map(len, every)) - len(mine))

    def _target_logprobs(self, slot: Slot, batch: list[tuple[int, Prepared]]) -> list[Tensor]:
        width = max(len(item.tokens) for _, item in batch)
        device = self.config.device
        ids = torch.zeros(len(batch), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(batch), width, dtype=torch.long, device=device)
        targets = torch.zeros(len(batch), width, dtype=torch.long, device=device)
        for row, (_, item) in enumerate(batch):
            n = len(item.tokens)
            ids[row, :n] = item.tokens
            mask[row, :n] = 1
            targets[row, :n] = item.inputs["target_tokens"]
        # Equal lengths need no padding mask; without one, attention takes its faster causal path.
        hidden = self._run(slot, ids, None if bool(mask.all()) else mask)
        logp = self._chunked_logprobs(slot, hidden.flatten(0, 1), targets.flatten()).view_as(targets)
        return [logp[row, : len(item.tokens)] for row, (_, item) in enumerate(batch)]

    def _chunked_logprobs(self, slot: Slot, hidden: Tensor, targets: Tensor) -> Tensor:
        """Each target's logprob, `loss_chunk_tokens` at a time. With several chunks each is recomputed in the
        backward pass rather than kept, so no more than one chunk's logits ever exist."""
        head = self.base.get_output_embeddings()  # peft's LoRA layer around the head, when it trains it

        def logprobs(states: Tensor, chosen: Tensor) -> Tensor:
            with self._compute():
                logits = head(states)
            return -F.cross_entropy(logits.float(), chosen, reduction="none")

        with self._adapter(slot):
            chunk = self.loss_chunk_tokens
            if len(targets) <= chunk:
                return logprobs(hidden, targets)
            return torch.cat(
                [
                    checkpoint(
                        logprobs,
                        hidden[start : start + chunk],
                        targets[start : start + chunk],
                        use_reentrant=False,
                    )
                    for start in range(0, len(targets), chunk)
                ]
            )

    @contextmanager
    def _adapter(self, slot: Slot) -> Iterator[None]:
        """The slot's adapter on (a LoRA slot), or every adapter off (the base, and frozen views of it)."""
        if slot.kind == ModelKind.LORA:
            if self.peft.active_adapters != [slot.adapter]:  # switching walks every module: ~1.5 % of a tiny step
                self.peft.set_adapter(slot.adapter)
            yield
        elif self.peft is not None:
            with self.peft.disable_adapter():
                yield
        else:
            yield

    @contextmanager
    def _without_head(self) -> Iterator[None]:
        """The model's forward ends at the final norm: the head runs in `_chunked_logprobs`, a chunk at a time."""
        head = self.base.get_output_embeddings()
        self.base.set_output_embeddings(torch.nn.Identity())
        try:
            yield
        finally:
            self.base.set_output_embeddings(head)

    def _run(self, slot: Slot, ids: Tensor, mask: Tensor | None) -> Tensor:
        """The last hidden states ([batch, positions, hidden]) of the slot's model."""
        # use_cache=False: a training forward has no next token to decode, so a KV cache is only wasted copies
        with self._adapter(slot), self._without_head(), self._compute():
            return self.network(input_ids=ids, attention_mask=mask, use_cache=False).logits

    @contextmanager
    def _compute(self) -> Iterator[None]:
        """The recipe's compute precision (autocast, where FSDP does not cast), and the activations the backward
        pass keeps in host memory when the recipe offloads them."""
        with ExitStack() as stack:
            if self._autocast:
                stack.enter_context(torch.autocast(self.world.device.split(":")[0], dtype=self._compute_dtype))
            if self.config.recipe.activation_offloading:
                stack.enter_context(torch.autograd.graph.save_on_cpu(pin_memory=True))
            yield

    def _idle_pass(self, slot: Slot, backward: bool) -> None:
        """A forward (and backward) that changes nothing, for a rank with no data left in this round: FSDP gathers
        and reduces every block on every rank, so every rank must run every pass."""
        ids = torch.zeros(1, 1, dtype=torch.long, device=self.world.device)
        idle = self._chunked_logprobs(slot, self._run(slot, ids, None)[0], ids[0]).sum() * 0
        if backward:
            idle.backward()

    def forward(
        self,
        model_id: str,
        examples: list[Example],
        loss_fn: str,
        loss_fn_config: dict[str, Any] | None,
        backward: bool,
    ) -> ForwardResult:
        slot = self.slot(model_id)
        spec = loss_spec(loss_fn)
        config = resolve_config(loss_fn, loss_fn_config)
        if backward and slot.kind == ModelKind.FROZEN:
            raise FailedPrecondition(
                f"model {model_id} is forward-only (a reference or forward-only job): it has no gradients or "
                "optimizer; use forward"
            )
        prepared = self.prepare(examples, spec, loss_fn)
        logprobs: dict[int, list[float]] = {}
        total = torch.zeros((), dtype=torch.float64, device=self.world.device)
        shares: dict[str, Tensor] = {}
        with self._fresh_gradients(slot) if backward else nullcontext(), torch.set_grad_enabled(backward):
            for batch in self._rank_batches(prepared):
                if batch is None:
                    self._idle_pass(slot, backward)
                    continue
                logps = self._target_logprobs(slot, batch)
                losses = [spec.fn(logp, item.inputs, config) for logp, (_, item) in zip(logps, batch, strict=True)]
                for logp, (_, item) in zip(logps, batch, strict=True):
                    for key, share in spec.metric_shares(logp, item.inputs, config).items():
                        shares[key] = shares.get(key, 0) + share
                loss = torch.stack([token_loss.sum() for token_loss in losses]).sum()
                if backward:
                    loss.backward()
                total += loss.detach()
                for logp, (index, _) in zip(logps, batch, strict=True):
                    logprobs[index] = logp.detach().float().cpu().tolist()
            if not self.world.all_finite(total):
                raise InvalidArgument(f"the {loss_fn} loss is not finite (NaN or inf); nothing was applied")
            parts = self.world.all_gather(
                (logprobs, float(total), {key: share.tolist() for key, share in shares.items()})
            )
        masks = [spec.loss_mask(item.inputs, len(item.tokens)) for item in prepared]
        loss_tokens = sum(int(mask.sum()) for mask in masks)
        if backward:
            slot.loss_tokens += loss_tokens
            slot.loss_sequences += sum(1 for mask in masks if bool(mask.any()))
        merged: dict[int, list[float]] = {}
        sums: dict[str, list[float]] = {}
        for rank_logprobs, _, rank_shares in parts:
            merged.update(rank_logprobs)
            for key, (value, count) in rank_shares.items():
                value_sum, count_sum = sums.get(key, (0.0, 0.0))
                sums[key] = [value_sum + value, count_sum + count]
        metrics = {"loss:sum": sum(rank_total for _, rank_total, _ in parts)}
        if loss_fn == "cross_entropy":
            metrics["response_tokens:sum"] = float(loss_tokens)
        for key, (value, count) in sums.items():
            if count:  # a mean over no tokens is left out rather than made up
                metrics[key] = value / count
        return ForwardResult([merged[index] for index in range(len(prepared))], metrics)

    @contextmanager
    def _fresh_gradients(self, slot: Slot) -> Iterator[None]:
        """New gradients accumulate apart from the pending ones and join them only if the whole request succeeded
        with finite values; otherwise the pending gradients are put back as they were. Every rank reaches the same
        verdict: the gradients are summed over the ranks first and the norm is the whole model's."""
        params = slot.params
        saved = [param.grad for param in params]
        for param in params:
            param.grad = None
        try:
            yield
            self.world.sum_gradients(params)
            grads = [param.grad for param in params if param.grad is not None]
            if grads and not bool(torch.isfinite(full(torch.nn.utils.get_total_norm(grads)))):
                raise InvalidArgument("the gradients are not finite (NaN or inf); nothing was applied")
        except BaseException:
            for param, grad in zip(params, saved, strict=True):
                param.grad = grad
            raise
        for param, grad in zip(params, saved, strict=True):
            if grad is not None:
                param.grad = grad if param.grad is None else param.grad.add_(grad)

    # --- optimizer -----------------------------------------------------------------------------------

    def optim_step(self, model_id: str, adam: AdamStep, normalization: Normalization) -> dict[str, float]:
        slot = self.slot(model_id)
        if slot.optimizer is None:
            raise FailedPrecondition(f"model {model_id} is forward-only: it has no optimizer to step")
        divisor = {"num_loss_tokens": slot.loss_tokens, "num_sequences": slot.loss_sequences}.get(normalization, 1)
        grads = [param.grad for param in slot.params if param.grad is not None]
        if divisor > 1:
            for grad in grads:
                local(grad).div_(divisor)
        # the norm is a metric whether or not it clips; without a limit the grads are not rescaled by 1
        norm = full(torch.nn.utils.get_total_norm(grads, foreach=False)) if grads else None
        if norm is not None and adam.grad_clip_norm > 0:
            # torch's clip_grads_with_norm_, on each rank's shards
            scale = torch.clamp(adam.grad_clip_norm / (norm + 1e-6), max=1.0)
            for grad in grads:
                local(grad).mul_(scale)
        grad_norm = float(norm) if norm is not None else 0.0
        for group in slot.optimizer.param_groups:
            group.update(
                lr=adam.learning_rate, betas=(adam.beta1, adam.beta2), eps=adam.eps, weight_decay=adam.weight_decay
            )
        slot.optimizer.step()
        slot.optimizer.zero_grad(set_to_none=True)
        slot.steps += 1
        slot.loss_tokens = slot.loss_sequences = 0
        return {"grad_norm": grad_norm, "learning_rate": adam.learning_rate, "step": float(slot.steps)}

    # --- checkpoints ---------------------------------------------------------------------------------

    def _named_params(self, slot: Slot) -> dict[str, torch.nn.Parameter]:
        """The slot's trainable parameters by a name that does not depend on the adapter's name in this process."""
        if slot.kind == ModelKind.LORA:
            tag = f".{slot.adapter}."
            return {name.replace(tag, "."): p for name, p in self.peft.named_parameters() if tag in name}
        return dict(self.base.named_parameters())

    def _training_state(self, slot: Slot, with_optimizer: bool) -> TrainingState:
        """The tensors of a checkpoint, as the live ones (saved from, or loaded into, in place). Loading needs
        the optimizer's state to exist: a fresh AdamW's is created as zeros first."""
        params = self._named_params(slot)
        state: TrainingState = {"weights": {name: param.detach() for name, param in params.items()}}
        if with_optimizer:
            optimizer = {}
            for name, param in params.items():
                if param not in slot.optimizer.state:
                    slot.optimizer.state[param] = {
                        "step": torch.tensor(0.0),
                        "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
                    }
                optimizer[name] = slot.optimizer.state[param]
            state["optimizer"] = optimizer
        return state

    def save_state(self, model_id: str, directory: Path) -> None:
        slot = self.slot(model_id)
        if slot.kind == ModelKind.FROZEN:
            raise FailedPrecondition(f"model {model_id} is forward-only: it has no trainable state to save")
        meta = CheckpointMeta(
            kind=slot.kind.value,
            rank=slot.lora.rank if slot.lora else 0,
            steps=slot.steps,
            base_model=self.config.base_model,
            loss_tokens=slot.loss_tokens,
            loss_sequences=slot.loss_sequences,
            optimizer=slot.steps > 0,
        )
        save_training(directory, self._training_state(slot, with_optimizer=meta.optimizer), meta, self.world)

    def load_state(self, model_id: str, directory: Path, with_optimizer: bool) -> None:
        slot = self.slot(model_id)
        if slot.kind == ModelKind.FROZEN:
            raise FailedPrecondition(f"model {model_id} is forward-only: it cannot load trainable state")
        meta = read_meta(directory)
        rank = slot.lora.rank if slot.lora else 0
        if meta.kind != slot.kind.value or meta.rank != rank or meta.base_model != self.config.base_model:
            raise FailedPrecondition(
                f"checkpoint {directory.name} holds a {meta.kind} rank-{meta.rank} state of "
                f"{meta.base_model}; model {model_id} is {slot.kind.value} rank-{rank} of {self.config.base_model}"
            )
        names = set(self._named_params(slot))
        if {key.removeprefix("weights.") for key in stored_keys(directory) if key.startswith("weights.")} != names:
            raise FailedPrecondition(f"checkpoint {directory.name} does not match this model's parameters")
        # a checkpoint of a model that never stepped has no optimizer state: a fresh optimizer is its state
        with_optimizer = with_optimizer and meta.optimizer
        for param in slot.params:  # gradients pending from before the load belong to other weights
            param.grad = None
        slot.optimizer = torch.optim.AdamW(slot.params, lr=1e-4, foreach=False)
        with torch.no_grad():
            load_training(directory, self._training_state(slot, with_optimizer))
        slot.loss_tokens = slot.loss_sequences = 0
        slot.steps = meta.steps if with_optimizer else 0

    def save_for_sampler(self, model_id: str, directory: Path) -> None:
        """Rank 0 writes the directory; for full weights every rank first gives its shards to rank 0."""
        slot = self.slot(model_id)
        weights = None
        if slot.kind != ModelKind.LORA:
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            weights = get_model_state_dict(self.base, options=options)
        if not self.world.leader:
            return
        staging = directory.with_name(f".{directory.name}.staging")
        if slot.kind == ModelKind.LORA:
            # the base's embeddings never change here, so the adapter holds only its own weights (peft would add
            # the whole embedding matrix when the head is a target)
            self.peft.save_pretrained(staging, selected_adapters=[slot.adapter], save_embedding_layers=False)
            nested = staging / slot.adapter
            for item in nested.iterdir():
                item.rename(staging / item.name)
            nested.rmdir()
        else:
            self.base.save_pretrained(staging, state_dict=weights)
            self.tokenizer.save_pretrained(staging)
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)
