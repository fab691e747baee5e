"""The task interface of the RL recipe: each data row gives a prompt, and a completion of it a reward."""

from __future__ import annotations

from typing import Any, Protocol

from shapeyard.models.chat import Message

Row = dict[str, Any]  # one line of the recipe's JSONL data


class RLTask(Protocol):
    def prompt(self, row: Row) -> list[Message]:
        """The conversation the policy answers."""

    def reward(self, completion: str, row: Row) -> float:
        """The reward of one completion (its text, without the end-of-turn token)."""


class ExactAnswer:
    """Chat rows whose last message is the reference answer: the prompt is the rest, and the reward is 1 for that
    answer, exactly (surrounding whitespace aside), else 0. The bundled digit tasks are such rows."""

    def prompt(self, row: Row) -> list[Message]:
        return row["messages"][:-1]

    def reward(self, completion: str, row: Row) -> float:
        return float(completion.strip() == row["messages"][-1]["content"].strip())
