"""Bundled synthetic digit tasks as chat, each with a held-out split. Neither is in the tiny model's pre-training
(`shapeyard.models.tiny_corpus`), so held-out accuracy measures what a run taught.

- addition: two-digit sums ("37+45=" -> "82"); full-parameter SFT learns it (the demo).
- flip: the digits in reverse order, asked with a word the model never saw ("flip 4821" -> "1284"); a LoRA adapter
  maps the new instruction onto the pre-trained skill in well under a minute.
- reverse: the same reversal with the word pre-training used ("reverse 4821" -> "1284"). The tiny model gets about
  a third right (greedy) and far fewer when sampling: a verifiable task on which RL raises the reward quickly.
- flip preferences: flip as pairs, the reversal preferred over the digits as given. The tiny model, which never saw
  "flip", prefers either about equally often: DPO teaches it which.
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


def reverse_splits(
    seed: int = 0, train_size: int = 4000, test_size: int = 200, instruction: str = "reverse"
) -> tuple[list[Example], list[Example]]:
    """Strings of 3-6 digits and their reversal; the held-out strings never occur in training."""
    rng = random.Random(seed)
    seen: dict[str, Example] = {}
    while len(seen) < train_size + test_size:
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 6)))
        seen.setdefault(digits, chat(f"{instruction} {digits}", digits[::-1]))
    examples = list(seen.values())
    return examples[test_size:], examples[:test_size]


def flip_splits(seed: int = 0, train_size: int = 4000, test_size: int = 200) -> tuple[list[Example], list[Example]]:
    return reverse_splits(seed, train_size, test_size, instruction="flip")


def flip_preference_splits(seed: int = 0, train_size: int = 4000, test_size: int = 200) -> tuple[list, list]:
    """`flip` as preference pairs: the reversal (chosen) over the digits as given (rejected). Palindromes, where
    the two are the same, are left out."""

    def pairs(examples: list[Example]) -> list[dict]:
        rows = []
        for example in examples:
            prompt, answer = example["messages"][0], example["messages"][-1]["content"]
            given = prompt["content"].split()[-1]
            if given != answer:
                rows.append({"prompt": [prompt], "chosen": answer, "rejected": given})
        return rows

    train, test = flip_splits(seed, train_size, test_size)
    return pairs(train), pairs(test)
