"""Generations as the clients read them (`shapeyard.wire.inference`): the fireworks form (per-token
`sampling_logprob`, `raw_output` with token ids), OpenAI's text completions and chat completions, whole or as
server-sent events."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

from transformers import PreTrainedTokenizerBase

from shapeyard.models.sampling import Generation
from shapeyard.wire.base import WireModel
from shapeyard.wire.inference import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatMessage,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    RawOutput,
    TokenLogprob,
    Usage,
)


def completion_id(prefix: str = "cmpl") -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def sse(chunks: Iterator[WireModel]) -> Iterator[bytes]:
    for chunk in chunks:
        yield b"data: " + chunk.model_dump_json(exclude_none=True).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


def _token_logprobs(
    tokenizer: PreTrainedTokenizerBase, tokens: list[int], logprobs: list[float], sampling: list[float]
) -> list[TokenLogprob]:
    return [
        TokenLogprob(token=tokenizer.decode([token]), token_id=token, logprob=logprob, sampling_logprob=sampled)
        for token, logprob, sampled in zip(tokens, logprobs, sampling, strict=True)
    ]


def _choice(
    index: int, result: Generation, tokenizer: PreTrainedTokenizerBase, echo: bool, logprobs: bool
) -> CompletionChoice:
    tokens, logps, sampling = result.tokens, result.logprobs, result.sampling_logprobs
    text = result.text
    if echo:
        # The prompt's first token has no logprob; clients want a number there (and drop that row themselves).
        prompt_logps = [0.0 if value is None else value for value in result.prompt_logprobs or []]
        tokens, logps, sampling = result.prompt + tokens, prompt_logps + logps, prompt_logps + sampling
        text = tokenizer.decode(result.prompt) + text
    choice = CompletionChoice(
        index=index,
        text=text,
        finish_reason=result.finish_reason,
        raw_output=RawOutput(prompt_token_ids=result.prompt, completion_token_ids=tokens),
    )
    if logprobs:
        entries = _token_logprobs(tokenizer, tokens, logps, sampling)
        choice.logprobs = CompletionLogprobs(
            content=entries, tokens=[entry.token for entry in entries], token_logprobs=logps
        )
    return choice


def _usage(results: list[Generation]) -> Usage:
    prompt = sum(len(result.prompt) for result in results)
    completion = sum(len(result.tokens) for result in results)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def completion(
    model: str, results: list[Generation], tokenizer: PreTrainedTokenizerBase, echo: bool, logprobs: bool
) -> CompletionResponse:
    return CompletionResponse(
        id=completion_id(),
        created=int(time.time()),
        model=model,
        choices=[_choice(i, result, tokenizer, echo, logprobs) for i, result in enumerate(results)],
        usage=_usage(results),
    )


def completion_chunks(
    model: str, results: list[Generation], tokenizer: PreTrainedTokenizerBase, echo: bool, logprobs: bool
) -> Iterator[CompletionResponse]:
    """One chunk per choice with its text and logprobs, then one that closes it with the finish reason, the token
    ids and the usage (the fireworks sampler keeps the last non-empty `raw_output`)."""
    ident, created = completion_id(), int(time.time())
    for index, result in enumerate(results):
        whole = _choice(index, result, tokenizer, echo, logprobs)
        closing = CompletionChoice(index=index, text="", finish_reason=whole.finish_reason, raw_output=whole.raw_output)
        opening = whole.model_copy(update={"finish_reason": None, "raw_output": None})
        yield CompletionResponse(id=ident, created=created, model=model, choices=[opening])
        usage = _usage(results) if index == len(results) - 1 else None
        yield CompletionResponse(id=ident, created=created, model=model, choices=[closing], usage=usage)


def _chat_logprobs(tokenizer: PreTrainedTokenizerBase, result: Generation) -> ChatLogprobs:
    entries = _token_logprobs(tokenizer, result.tokens, result.logprobs, result.sampling_logprobs)
    return ChatLogprobs(
        content=[ChatTokenLogprob(**entry.model_dump(), bytes=list(entry.token.encode())) for entry in entries]
    )


def _chat_text(tokenizer: PreTrainedTokenizerBase, result: Generation) -> str:
    return tokenizer.decode(result.tokens, skip_special_tokens=True) if result.finish_reason == "stop" else result.text


def chat_completion(
    model: str, results: list[Generation], tokenizer: PreTrainedTokenizerBase, logprobs: bool
) -> ChatCompletionResponse:
    choices = [
        ChatChoice(
            index=index,
            message=ChatMessage(role="assistant", content=_chat_text(tokenizer, result)),
            finish_reason=result.finish_reason,
            logprobs=_chat_logprobs(tokenizer, result) if logprobs else None,
        )
        for index, result in enumerate(results)
    ]
    return ChatCompletionResponse(
        id=completion_id("chatcmpl"), created=int(time.time()), model=model, choices=choices, usage=_usage(results)
    )


def chat_chunks(
    model: str, results: list[Generation], tokenizer: PreTrainedTokenizerBase, logprobs: bool
) -> Iterator[ChatCompletionChunk]:
    ident, created = completion_id("chatcmpl"), int(time.time())

    def chunk(choice: ChatChunkChoice) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=ident, created=created, model=model, choices=[choice])

    for index, result in enumerate(results):
        yield chunk(ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content="")))
        text = ChatDelta(content=_chat_text(tokenizer, result))
        scores = _chat_logprobs(tokenizer, result) if logprobs else None
        yield chunk(ChatChunkChoice(index=index, delta=text, logprobs=scores))
        yield chunk(ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=result.finish_reason))
