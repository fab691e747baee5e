"""The embedded tiny model: a real Qwen3-architecture model at tiny size, built here, never downloaded.

- Config: hidden 128, 2 layers, 4 query / 2 KV heads of 32, MLP 512, 128-token vocabulary (508,672 parameters).
- Tokenizer: one token per character (printable ASCII, newline, tab) plus ChatML special tokens, with a
  ChatML chat template; built from the definitions below with the `tokenizers` library.
- Weights: pre-trained briefly on synthetic digit tasks (`shapeyard.models.tiny_corpus`) so that LoRA, which
  barely moves a random base, can learn new tasks on top. Built once per machine and cached (`cache_dir()`),
  deterministically from a fixed seed; a file lock keeps concurrent workers from building it twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from shapeyard.models import tiny_corpus

NAME = "tiny-qwen3"
VOCAB_SIZE = 128
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHARACTERS = ["\n", "\t", *(chr(code) for code in range(32, 127))]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONFIG = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 8192,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
PRETRAIN = {"seed": 0, "steps": 400, "batch_size": 32, "learning_rate": 3e-3}
# Bump when the tokenizer, config, corpus or recipe change: it names the cache directory.
RECIPE_VERSION = 1


def vocabulary() -> dict[str, int]:
    tokens = SPECIAL_TOKENS + CHARACTERS
    tokens += [f"<|reserved_{i}|>" for i in range(VOCAB_SIZE - len(tokens))]
    return {token: index for index, token in enumerate(tokens)}


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = vocabulary()
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_untrained(seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(Qwen3Config(**CONFIG))


def cache_dir() -> Path:
    root = Path(os.environ.get("SHAPEYARD_CACHE", Path.home() / ".cache" / "shapeyard"))
    digest = hashlib.sha256(json.dumps([RECIPE_VERSION, CONFIG, PRETRAIN], sort_keys=True).encode()).hexdigest()
    return root / f"{NAME}-{digest[:12]}"


def pretrain(model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast) -> list[float]:
    """Next-token training on assistant answers of synthetic digit tasks; returns the loss curve."""
    rng = random.Random(PRETRAIN["seed"])
    torch.manual_seed(PRETRAIN["seed"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN["learning_rate"], weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, PRETRAIN["learning_rate"], total_steps=PRETRAIN["steps"])
    losses = []
    model.train()
    for _ in range(PRETRAIN["steps"]):
        batch = [tiny_corpus.sample(rng) for _ in range(PRETRAIN["batch_size"])]
        encoded = [tiny_corpus.encode_example(tokenizer, prompt, answer) for prompt, answer in batch]
        width = max(len(tokens) for tokens, _ in encoded)
        inputs = torch.zeros(len(encoded), width, dtype=torch.long)
        labels = torch.full((len(encoded), width), -100, dtype=torch.long)
        for row, (tokens, mask) in enumerate(encoded):
            inputs[row, : len(tokens)] = torch.tensor(tokens)
            labels[row, : len(tokens)] = torch.tensor([t if m else -100 for t, m in zip(tokens, mask, strict=True)])
        loss = model(input_ids=inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses


def ensure_tiny_model() -> Path:
    """The pre-trained tiny model as an HF directory (config, safetensors weights, tokenizer), built if needed."""
    target = cache_dir()
    if (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "model.safetensors").exists():
            _build(target)
    return target


def _build(target: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and fair to the other processes on a small machine
    try:
        tokenizer = build_tokenizer()
        model = build_untrained(PRETRAIN["seed"])
        losses = pretrain(model, tokenizer)
    finally:
        torch.set_num_threads(threads)
    staging = target.with_name(target.name + ".staging")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "pretraining.json").write_text(
        json.dumps({"recipe": PRETRAIN, "first_loss": losses[0], "final_loss": sum(losses[-20:]) / 20}, indent=2)
    )
    staging.rename(target)


if __name__ == "__main__":
    print(ensure_tiny_model())
