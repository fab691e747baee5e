"""A bundled synthetic task: two-digit addition as chat ("37+45=" -> "82"), with a held-out test split.

The tiny model never sees two-digit sums in pre-training, so accuracy on the test split measures learning.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

Example = dict[str, list[dict[str, str]]]


def problem(a: int, b: int) -> Example:
    return {"messages": [{"role": "user", "content": f"{a}+{b}="}, {"role": "assistant", "content": str(a + b)}]}


def splits(seed: int = 0, test_size: int = 200) -> tuple[list[Example], list[Example]]:
    """Every pair of two-digit numbers, shuffled; the first `test_size` pairs are held out."""
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(seed).shuffle(pairs)
    return [problem(a, b) for a, b in pairs[test_size:]], [problem(a, b) for a, b in pairs[:test_size]]


def write_jsonl(examples: list[Example], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(example) + "\n" for example in examples))
    return path


def read_jsonl(path: Path) -> list[Example]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
