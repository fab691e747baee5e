"""Recipe data: JSONL files (one JSON object per line; chat examples are `{"messages": [{"role", "content"}, ...]}`),
rendered sequences as trainer datums, and the batches of each step."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from shapeyard.wire.trainer import Datum, ModelInput

T = TypeVar("T")


def write_jsonl(records: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def supervised_datum(tokens: list[int], weights: list[float]) -> Datum:
    """Position i predicts token i+1: inputs drop the last token, targets and weights drop the first."""
    return Datum(
        model_input=ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights[1:]},
    )


def epoch_batches(items: list[T], batch_size: int, seed: int) -> Callable[[int], list[T]]:
    """The items of step `step`: epoch-wise shuffles from the seed, so a resumed run sees the same batches."""

    @cache
    def order(epoch: int) -> list[int]:
        indices = list(range(len(items)))
        random.Random(seed * 1_000_003 + epoch).shuffle(indices)
        return indices

    def batch(step: int) -> list[T]:
        positions = range(step * batch_size, (step + 1) * batch_size)
        return [items[order(p // len(items))[p % len(items)]] for p in positions]

    return batch
