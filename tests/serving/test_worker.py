"""The deployment worker's HTTP surface, in-process on the real sampling backend: 425 while hot-loading, clear errors
for bad requests, batched concurrent requests, a failed hot-load leaving the old weights serving."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from shapeyard.models import tiny
from shapeyard.models.transformers_sampler import TransformersSampler
from shapeyard.serving.worker import HotLoader, create_worker_app
from shapeyard.wire.inference import LoadingState
from shapeyard.wire.worker import DeploymentWorkerSpec
from tests.helpers import PROMPT


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> tuple[FastAPI, HotLoader]:
    sampler = TransformersSampler(tiny.ensure_tiny_model(), max_context_length=64)
    spec = DeploymentWorkerSpec(
        deployment_name="accounts/local/deployments/unit",
        replica=0,
        base_model="accounts/fireworks/models/tiny-qwen3",
        weights={"embedded": "tiny-qwen3"},
        max_context_length=64,
        work_dir=tmp_path_factory.mktemp("replica"),
    )
    loader = HotLoader(sampler, 0)
    return create_worker_app(spec, "", sampler, loader), loader


def complete(client: TestClient, **body: object) -> httpx.Response:
    return client.post("/inference/v1/completions", json={"model": "m", "prompt": PROMPT, **body})


def test_completions_answer_425_while_a_snapshot_loads(worker: tuple[FastAPI, HotLoader]):
    app, loader = worker
    client = TestClient(app)
    loader.state = LoadingState(stage="loading", target_snapshot_identity="next")
    try:
        busy = complete(client, max_tokens=2)
        assert busy.status_code == 425 and "hot-loading next" in busy.json()["error"]["message"]
        assert client.get("/hot_load").json()["readiness"] is False
        again = client.post("/hot_load", json={"identity": "other", "path": "/nowhere"})
        assert again.status_code == 400 and "still loading next" in again.json()["error"]["message"]
    finally:
        loader.state = LoadingState()
    assert complete(client, max_tokens=2).status_code == 200


def test_bad_requests_name_the_field_and_the_limit(worker: tuple[FastAPI, HotLoader]):
    client = TestClient(worker[0])
    cases = [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"prompt": [1, 500]}, "token id 500 is outside the vocabulary (0..127)"),
        ({"max_tokens": 100}, "64"),  # prompt + max_tokens over the replica's context
        ({"prompt": []}, "prompt"),
    ]
    for body, text in cases:
        response = complete(client, **body)
        assert response.status_code == 400, (body, response.text)
        assert text in response.json()["error"]["message"], (body, response.text)


def test_a_failed_hot_load_keeps_the_old_weights(worker: tuple[FastAPI, HotLoader], tmp_path: Path):
    client = TestClient(worker[0])
    before = complete(client, max_tokens=3, temperature=0, logprobs=True).json()["choices"][0]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    assert client.post("/hot_load", json={"identity": "broken", "path": str(broken)}).status_code == 200
    deadline = time.monotonic() + 30
    while (status := client.get("/hot_load").json())["loading_state"]["stage"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert status["loading_state"]["stage"] == "error" and status["loading_state"]["error"]
    assert status["current_snapshot_identity"] is None and status["readiness"] is True
    after = complete(client, max_tokens=3, temperature=0, logprobs=True).json()["choices"][0]
    assert after["raw_output"] == before["raw_output"] and after["logprobs"] == before["logprobs"]


def test_concurrent_requests_share_one_decode(worker: tuple[FastAPI, HotLoader], caplog: pytest.LogCaptureFixture):
    app = worker[0]
    caplog.set_level(logging.INFO, logger="shapeyard.serving")

    async def burst() -> list[dict]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            body = {"model": "m", "prompt": PROMPT, "max_tokens": 4, "seed": 5, "logprobs": True}
            answers = await asyncio.gather(*(client.post("/inference/v1/completions", json=body) for _ in range(6)))
        return [answer.json()["choices"][0] for answer in answers]

    choices = asyncio.run(burst())
    assert "sampled a batch of 6: 24 tokens" in caplog.text
    # the same seed gives the same tokens whichever batch a request lands in
    assert len({tuple(c["raw_output"]["completion_token_ids"]) for c in choices}) == 1
