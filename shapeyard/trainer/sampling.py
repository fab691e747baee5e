"""The tinker client's sampling sessions, served by the trainer worker itself.

A session samples from the base model or from a sampler snapshot (`tinker://<job>/sampler_weights/<name>`) that
this job or another job of the account wrote. Each distinct snapshot gets its own sampling backend, so sessions
never disturb the trainer's weights; the least recently used backends are dropped beyond `MAX_BACKENDS`.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shapeyard.models.sampling import DecodingParams, GenerationRequest, SamplingBackend, SnapshotError
from shapeyard.store.layout import JobFiles
from shapeyard.wire.errors import InvalidArgument, NotFound
from shapeyard.wire.trainer import GetSamplerResponse, SampledSequence, SampleRequest, SampleResponse

MAX_BACKENDS = 2
DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True)
class _Session:
    model_path: str | None  # as the client named it
    directory: Path | None  # the snapshot; None: the base model


class SamplingSessions:
    def __init__(self, base_model: str, new_backend: Callable[[], SamplingBackend], files: JobFiles) -> None:
        """`new_backend()` loads a sampling backend on the base model."""
        self.base_model, self.new_backend, self.files = base_model, new_backend, files
        self._sessions: dict[str, _Session] = {}
        self._backends: OrderedDict[Path | None, SamplingBackend] = OrderedDict()

    def create(self, model_path: str | None, base_model: str | None) -> str:
        if model_path is None and base_model not in (None, self.base_model):
            raise NotFound(f"base_model {base_model} is not served here; this trainer samples {self.base_model}")
        directory = None
        if model_path is not None:
            directory = self.files.resolve(model_path, "sampler")
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

    def _backend(self, directory: Path | None) -> SamplingBackend:
        if directory in self._backends:
            self._backends.move_to_end(directory)
            return self._backends[directory]
        backend = self.new_backend()
        if directory is not None:
            try:
                backend.load_snapshot(directory, directory.name)
            except SnapshotError as exc:
                raise InvalidArgument(f"sampler weights {directory.name} cannot be loaded: {exc}") from None
        self._backends[directory] = backend
        while len(self._backends) > MAX_BACKENDS:
            self._backends.popitem(last=False)
        return backend

    def sample(self, body: SampleRequest) -> SampleResponse:
        if body.sampling_session_id is not None:
            directory = self._session(body.sampling_session_id).directory
        elif body.model_path is not None:
            directory = self.files.resolve(body.model_path, "sampler")
        else:
            directory = None
        wire = body.sampling_params
        params = DecodingParams.of(wire, DEFAULT_MAX_TOKENS if wire.max_tokens is None else wire.max_tokens)
        prompt = body.prompt.to_ints()
        requests = [
            GenerationRequest(prompt, params.for_sample(i), prompt_logprobs=bool(body.prompt_logprobs) and i == 0)
            for i in range(body.num_samples)
        ]
        results = self._backend(directory).sample(requests)
        return SampleResponse(
            sequences=[
                SampledSequence(tokens=result.tokens, logprobs=result.logprobs, stop_reason=result.finish_reason)
                for result in results
            ],
            prompt_logprobs=results[0].prompt_logprobs if body.prompt_logprobs else None,
        )
