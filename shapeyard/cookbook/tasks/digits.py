"""Bundled synthetic digit tasks as chat, each with a held-out split. Neither is in the tiny model's pre-training
(`shapeyard.models.tiny_corpus`), so held-out accuracy measures what a run taught.

- addition: two-digit sums ("37+45=" -> "82"); full-parameter SFT learns it (the demo).
- flip: the digits in reverse order, asked with a word the model never saw ("flip 4821" -> "1284"); a LoRA adapter
  maps the new instruction onto the pre-trained skill in well under a minute.
"""

from __future__ import annotations

import random

Example = dict[str, list[dict[str, str]]]


def chat(prompt: str, answer: str) -> Example:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def addition_splits(seed: int = 0, test_size: int = 200) -> tuple[list[Example], list[Example]]:
    """Every pair of two-digit numbers, shuffled; the first `test_size` pairs are held out."""
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(seed).shuffle(pairs)
    examples = [chat(f"{a}+{b}=", str(a + b)) for a, b in pairs]
    return examples[test_size:], examples[:test_size]


def flip_splits(seed: int = 0, train_size: int = 4000, test_size: int = 200) -> tuple[list[Example], list[Example]]:
    """Strings of 3-6 digits; the held-out strings never occur in training."""
    rng = random.Random(seed)
    seen: dict[str, Example] = {}
    while len(seen) < train_size + test_size:
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 6)))
        seen.setdefault(digits, chat(f"flip {digits}", digits[::-1]))
    examples = list(seen.values())
    return examples[test_size:], examples[:test_size]
