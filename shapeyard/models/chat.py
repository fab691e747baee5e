"""Chat rendering: messages -> token ids and per-token weights (1 on what the assistant says, 0 elsewhere).

Works with any tokenizer that has a chat template: each assistant turn is the difference between the conversation
rendered up to it (with the generation prompt) and rendered through it, so the weights cover exactly the
assistant's content and its end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Message = dict[str, str]


def _ids(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def render_chat(tokenizer: Any, messages: Sequence[Message]) -> tuple[list[int], list[float]]:
    tokens: list[int] = []
    weights: list[float] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _ids(tokenizer, messages[:index], add_generation_prompt=True)
        full = _ids(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if full[: len(prompt)] != prompt or prompt[: len(tokens)] != tokens:
            raise ValueError("the chat template does not render conversations as growing prefixes")
        weights += [0.0] * (len(prompt) - len(tokens)) + [1.0] * (len(full) - len(prompt))
        tokens = full
    tail = _ids(tokenizer, messages, add_generation_prompt=False)
    weights += [0.0] * (len(tail) - len(tokens))
    return tail, weights


def render_prompt(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """The tokens a model continues from to answer the conversation."""
    return _ids(tokenizer, messages, add_generation_prompt=True)
