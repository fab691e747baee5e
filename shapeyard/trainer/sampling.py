"""The tinker client's sampling sessions, served by the trainer worker itself.

A session samples from the base model or from a sampler snapshot (`tinker://<job>/sampler_weights/<name>`) that
this job or another job of the account wrote. Each distinct snapshot gets its own sampling engine, so sessions
never disturb the trainer's weights; the least recently used engines are dropped beyond `MAX_ENGINES`.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from shapeyard.errors import InvalidArgument, NotFound
from shapeyard.serving.engine import Request, SamplingEngine, SamplingParams, SnapshotError
from shapeyard.trainer.checkpoints import CheckpointStore
from shapeyard.wire.trainer import (
    GetSamplerResponse,
    SampledSequence,
    SampleRequest,
    SampleResponse,
)
from shapeyard.wire.trainer import SamplingParams as WireSamplingParams

MAX_ENGINES = 2
DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True)
class _Session:
    model_path: str | None  # as the client named it
    directory: Path | None  # the snapshot; None: the base model


def _params(wire: WireSamplingParams) -> SamplingParams:
    stop = wire.stop
    strings = [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str)]
    ids = [s for s in stop or [] if isinstance(s, int)] if not isinstance(stop, str) else []
    return SamplingParams(
        max_tokens=DEFAULT_MAX_TOKENS if wire.max_tokens is None else wire.max_tokens,
        temperature=wire.temperature,
        top_p=wire.top_p,
        top_k=max(wire.top_k, 0),
        seed=wire.seed,
        stop_token_ids=ids,
        stop=strings,
    )


class SamplingSessions:
    def __init__(
        self, base_model: str, base_dir: str, device: str, max_context_length: int, checkpoints: CheckpointStore
    ) -> None:
        self.base_model, self.base_dir, self.device = base_model, base_dir, device
        self.max_context_length, self.checkpoints = max_context_length, checkpoints
        self._sessions: dict[str, _Session] = {}
        self._engines: OrderedDict[Path | None, SamplingEngine] = OrderedDict()

    def create(self, model_path: str | None, base_model: str | None) -> str:
        if model_path is None and base_model not in (None, self.base_model):
            raise NotFound(f"base_model {base_model} is not served here; this trainer samples {self.base_model}")
        directory = None
        if model_path is not None:
            directory = self.checkpoints.resolve(model_path, "sampler")
            if not directory.exists():
                raise NotFound(f"sampler weights {model_path} not found (save_weights_for_sampler writes them)")
        session_id = f"samp-{secrets.token_hex(6)}"
        self._sessions[session_id] = _Session(model_path, directory)
        return session_id

    def info(self, session_id: str) -> GetSamplerResponse:
        session = self._session(session_id)
        return GetSamplerResponse(sampler_id=session_id, base_model=self.base_model, model_path=session.model_path)

    def _session(self, session_id: str | None) -> _Session:
        if session_id not in self._sessions:
            raise NotFound(f"sampling_session_id {session_id!r} not found; create a sampling client first")
        return self._sessions[session_id]

    def _engine(self, directory: Path | None) -> SamplingEngine:
        if directory in self._engines:
            self._engines.move_to_end(directory)
            return self._engines[directory]
        engine = SamplingEngine(self.base_dir, self.device, self.max_context_length)
        if directory is not None:
            try:
                engine.load_snapshot(directory, directory.name)
            except SnapshotError as exc:
                raise InvalidArgument(f"sampler weights {directory.name} cannot be loaded: {exc}") from None
        self._engines[directory] = engine
        while len(self._engines) > MAX_ENGINES:
            self._engines.popitem(last=False)
        return engine

    def sample(self, body: SampleRequest) -> SampleResponse:
        if body.sampling_session_id is not None:
            directory = self._session(body.sampling_session_id).directory
        elif body.model_path is not None:
            directory = self.checkpoints.resolve(body.model_path, "sampler")
        else:
            directory = None
        params = _params(body.sampling_params)
        prompt = body.prompt.to_ints()
        requests = [
            Request(
                prompt,
                params.for_sample(i),
                prompt_logprobs=bool(body.prompt_logprobs) and i == 0,
            )
            for i in range(body.num_samples)
        ]
        results = self._engine(directory).sample(requests)
        return SampleResponse(
            sequences=[
                SampledSequence(tokens=result.tokens, logprobs=result.logprobs, stop_reason=result.finish_reason)
                for result in results
            ],
            prompt_logprobs=results[0].prompt_logprobs if body.prompt_logprobs else None,
        )
