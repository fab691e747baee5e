"""Synthetic digit tasks the tiny model is pre-trained on. Two-digit addition is left out on purpose: it is the
task the demo teaches, so the demo measures learning, not recall."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from shapeyard.models.chat import render_chat


def _digits(rng: random.Random, low: int = 2, high: int = 6) -> str:
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(low, high)))


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "copy": lambda rng: (lambda s: (f"copy {s}", s))(_digits(rng)),
    "reverse": lambda rng: (lambda s: (f"reverse {s}", s[::-1]))(_digits(rng)),
    "sort": lambda rng: (lambda s: (f"sort {s}", "".join(sorted(s))))(_digits(rng)),
    "next": lambda rng: (lambda n: (f"next {n}", str(n + 1)))(rng.randint(0, 998)),
    "add": lambda rng: (lambda a, b: (f"{a}+{b}=", str(a + b)))(rng.randint(0, 9), rng.randint(0, 9)),
    "max": lambda rng: (lambda xs: (f"max {' '.join(map(str, xs))}", str(max(xs))))(
        [rng.randint(0, 99) for _ in range(rng.randint(2, 4))]
    ),
}


def sample(rng: random.Random) -> tuple[str, str]:
    return TASKS[rng.choice(sorted(TASKS))](rng)


def encode_example(tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], list[float]]:
    return render_chat(tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])
