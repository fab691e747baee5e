"""Exact-match accuracy and held-out loss: by sampling a deployment, or in-process from a sampler snapshot (plain
transformers / peft, for checking that a snapshot stands on its own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from shapeyard.client.sampling import DeploymentSampler
from shapeyard.cookbook.renderers import render_chat, render_prompt


def load_snapshot(path: Path) -> PreTrainedModel:
    """A full HF checkpoint, or a PEFT adapter on top of the base model it names."""
    if (path / "adapter_config.json").exists():
        base = AutoModelForCausalLM.from_pretrained(PeftConfig.from_pretrained(path).base_model_name_or_path)
        # Not merged: with tied embeddings, folding an lm_head adapter into the shared matrix changes the inputs too.
        return PeftModel.from_pretrained(base, path)
    return AutoModelForCausalLM.from_pretrained(path)


@torch.no_grad()
def greedy_answers(
    model: PreTrainedModel,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int = 8,
    batch_size: int = 64,
) -> list[str]:
    model.eval()
    answers: list[str] = []
    for start in range(0, len(conversations), batch_size):
        prompts = [render_prompt(tokenizer, c) for c in conversations[start : start + batch_size]]
        width = max(len(p) for p in prompts)
        pad = tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad,
        )
        answers += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
    return answers


def exact_match(model: PreTrainedModel, tokenizer: Any, examples: list[dict[str, Any]]) -> float:
    """Fraction of examples whose greedy answer equals the reference assistant message."""
    answers = greedy_answers(model, tokenizer, [e["messages"][:-1] for e in examples])
    correct = sum(a == e["messages"][-1]["content"].strip() for a, e in zip(answers, examples, strict=True))
    return correct / len(examples)


@torch.no_grad()
def heldout_loss(model: PreTrainedModel, tokenizer: Any, examples: list[dict[str, Any]]) -> float:
    """Mean negative log-likelihood per assistant token."""
    model.eval()
    total = tokens = 0.0
    for example in examples:
        ids, weights = render_chat(tokenizer, example["messages"])
        logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0]
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
        mask = torch.tensor(weights[1:])
        total += float((nll * mask).sum())
        tokens += float(mask.sum())
    return total / tokens


def snapshot_tokenizer(path: Path) -> Any:
    """A full snapshot carries its tokenizer; an adapter's is its base model's."""
    if (path / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(path)
    return AutoTokenizer.from_pretrained(PeftConfig.from_pretrained(path).base_model_name_or_path)


def deployment_exact_match(
    sampler: DeploymentSampler, tokenizer: Any, examples: list[dict[str, Any]], max_tokens: int = 8
) -> float:
    """Exact match of greedy answers sampled from a deployment."""
    prompts = [render_prompt(tokenizer, e["messages"][:-1]) for e in examples]
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    sampled = sampler.sample_batch(prompts, max_tokens=max_tokens, temperature=0.0, stop_token_ids=stops)
    answers = [tokenizer.decode(s.tokens, skip_special_tokens=True).strip() for s in sampled]
    correct = sum(a == e["messages"][-1]["content"].strip() for a, e in zip(answers, examples, strict=True))
    return correct / len(examples)


def deployment_heldout_loss(sampler: DeploymentSampler, tokenizer: Any, examples: list[dict[str, Any]]) -> float:
    """Mean negative log-likelihood per assistant token, from the deployment's prompt logprobs."""
    rendered = [render_chat(tokenizer, e["messages"]) for e in examples]
    scored = sampler.sample_batch([ids for ids, _ in rendered], max_tokens=0, prompt_logprobs=True)
    total = tokens = 0.0
    for (_, weights), sequence in zip(rendered, scored, strict=True):
        for logprob, weight in zip(sequence.prompt_logprobs[1:], weights[1:], strict=True):
            total -= weight * logprob
            tokens += weight
    return total / tokens
