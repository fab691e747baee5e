"""Completions as the clients read them: the fireworks form (per-token `sampling_logprob`, `raw_output` with
token ids), OpenAI's text completions and chat completions, whole or as server-sent events."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

from transformers import PreTrainedTokenizerBase

from shapeyard.serving.engine import Completion


def completion_id(prefix: str = "cmpl") -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def sse(chunks: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def _token_entries(
    tokenizer: PreTrainedTokenizerBase, tokens: list[int], logprobs: list[float], sampling: list[float]
) -> list[dict[str, Any]]:
    return [
        {"token": tokenizer.decode([token]), "token_id": token, "logprob": logprob, "sampling_logprob": sampled}
        for token, logprob, sampled in zip(tokens, logprobs, sampling, strict=True)
    ]


def _choice(
    index: int, result: Completion, tokenizer: PreTrainedTokenizerBase, echo: bool, logprobs: bool
) -> dict[str, Any]:
    tokens, logps, sampling = result.tokens, result.logprobs, result.sampling_logprobs
    text = result.text
    if echo:
        # The prompt's first token has no logprob; clients want a number there (and drop that row themselves).
        prompt_logps = [0.0 if value is None else value for value in result.prompt_logprobs or []]
        tokens, logps, sampling = result.prompt + tokens, prompt_logps + logps, prompt_logps + sampling
        text = tokenizer.decode(result.prompt) + text
    choice: dict[str, Any] = {
        "index": index,
        "text": text,
        "finish_reason": result.finish_reason,
        "raw_output": {"prompt_token_ids": result.prompt, "completion_token_ids": tokens},
    }
    if logprobs:
        entries = _token_entries(tokenizer, tokens, logps, sampling)
        choice["logprobs"] = {
            "content": entries,
            # OpenAI's legacy completions form, for the openai client
            "tokens": [entry["token"] for entry in entries],
            "token_logprobs": logps,
            "top_logprobs": None,
            "text_offset": None,
        }
    return choice


def _usage(results: list[Completion]) -> dict[str, int]:
    prompt = sum(len(result.prompt) for result in results)
    completion = sum(len(result.tokens) for result in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(
    model: str, results: list[Completion], tokenizer: PreTrainedTokenizerBase, echo: bool, logprobs: bool
) -> dict[str, Any]:
    return {
        "id": completion_id(),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [_choice(i, result, tokenizer, echo, logprobs) for i, result in enumerate(results)],
        "usage": _usage(results),
    }


def completion_chunks(
    model: str, results: list[Completion], tokenizer: PreTrainedTokenizerBase, echo: bool, logprobs: bool
) -> Iterator[dict[str, Any]]:
    """One chunk per choice with its text and logprobs, then one that closes it with the finish reason, the token
    ids and the usage (the fireworks sampler keeps the last non-empty `raw_output`)."""
    ident, created = completion_id(), int(time.time())
    for index, result in enumerate(results):
        whole = _choice(index, result, tokenizer, echo, logprobs)
        closing = {"index": index, "text": "", "finish_reason": whole.pop("finish_reason")}
        closing["raw_output"] = whole.pop("raw_output")
        yield {"id": ident, "object": "text_completion", "created": created, "model": model, "choices": [whole]}
        final = {"id": ident, "object": "text_completion", "created": created, "model": model, "choices": [closing]}
        if index == len(results) - 1:
            final["usage"] = _usage(results)
        yield final


def _chat_logprobs(tokenizer: PreTrainedTokenizerBase, result: Completion) -> dict[str, Any]:
    entries = _token_entries(tokenizer, result.tokens, result.logprobs, result.sampling_logprobs)
    return {"content": [{**entry, "bytes": list(entry["token"].encode()), "top_logprobs": []} for entry in entries]}


def _chat_text(tokenizer: PreTrainedTokenizerBase, result: Completion) -> str:
    return tokenizer.decode(result.tokens, skip_special_tokens=True) if result.finish_reason == "stop" else result.text


def chat_completion(
    model: str, results: list[Completion], tokenizer: PreTrainedTokenizerBase, logprobs: bool
) -> dict[str, Any]:
    choices = []
    for index, result in enumerate(results):
        choice: dict[str, Any] = {
            "index": index,
            "message": {"role": "assistant", "content": _chat_text(tokenizer, result)},
            "finish_reason": result.finish_reason,
            "logprobs": _chat_logprobs(tokenizer, result) if logprobs else None,
        }
        choices.append(choice)
    return {
        "id": completion_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(results),
    }


def chat_chunks(
    model: str, results: list[Completion], tokenizer: PreTrainedTokenizerBase, logprobs: bool
) -> Iterator[dict[str, Any]]:
    ident, created = completion_id("chatcmpl"), int(time.time())

    def chunk(index: int, delta: dict[str, Any], finish: str | None, extra: dict[str, Any] | None = None) -> dict:
        choice = {"index": index, "delta": delta, "finish_reason": finish, **(extra or {})}
        return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}

    for index, result in enumerate(results):
        yield chunk(index, {"role": "assistant", "content": ""}, None)
        extra = {"logprobs": _chat_logprobs(tokenizer, result)} if logprobs else None
        yield chunk(index, {"content": _chat_text(tokenizer, result)}, None, extra)
        yield chunk(index, {}, result.finish_reason)
