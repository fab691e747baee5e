"""An ordinary `openai` client against a deployment: /v1/completions and /v1/chat/completions, whole and streamed."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from shapeyard.client import ControlClient
from shapeyard.client.managed import wait_until_serving
from shapeyard.wire.control import CreateDeploymentRequest
from tests.helpers import TINY, RunningServer, run_server, unique


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str]]:
    with (
        run_server(tmp_path_factory.mktemp("openai"), cpu_slots=1) as server,
        ControlClient(server.base_url, server.api_key) as control,
    ):
        shape = control.deployment_shape_versions("accounts/fireworks/deploymentShapes/rft-tiny-qwen3-cpu")
        deployment_id = unique("chat")
        request = CreateDeploymentRequest(
            base_model=TINY, deployment_shape=shape.deployment_shape_versions[0].name, max_replica_count=1
        )
        name = control.create_deployment(request, deployment_id).name
        wait_until_serving(control, deployment_id, timeout=120)
        yield server, name


@pytest.fixture
def client(deployment: tuple[RunningServer, str]) -> openai.OpenAI:
    server, _ = deployment
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)


def test_completions_whole_and_streamed(client: openai.OpenAI, deployment: tuple[RunningServer, str]):
    _, model = deployment
    whole = client.completions.create(model=model, prompt="12+34=", max_tokens=6, temperature=0, logprobs=1)
    choice = whole.choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.text
    assert len(choice.logprobs.token_logprobs) == whole.usage.completion_tokens
    assert whole.usage.prompt_tokens == len("12+34=")  # one token per character
    streamed = client.completions.create(model=model, prompt="12+34=", max_tokens=6, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == choice.text  # greedy: the same text


def test_chat_completions_whole_and_streamed(client: openai.OpenAI, deployment: tuple[RunningServer, str]):
    _, model = deployment
    messages = [{"role": "user", "content": "12+34="}]
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0, logprobs=True)
    message = whole.choices[0].message
    assert message.role == "assistant" and "<|im_end|>" not in (message.content or "")
    assert whole.choices[0].logprobs.content and all(entry.logprob <= 0 for entry in whole.choices[0].logprobs.content)
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model=model, messages=messages, max_tokens=8, temperature=0, stream=True
        )
    ]
    assert "".join(pieces) == message.content


def test_errors_name_the_field(client: openai.OpenAI, deployment: tuple[RunningServer, str]):
    _, model = deployment
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=model, prompt="1+1=", temperature=-1)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=f"{model}-missing", prompt="1+1=")
    server, _ = deployment
    stranger = openai.OpenAI(base_url=str(client.base_url), api_key=server.add_account(unique("other")), max_retries=0)
    with pytest.raises(openai.NotFoundError, match="not found"):  # another account's deployment
        stranger.completions.create(model=model, prompt="1+1=")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(client.base_url), api_key="fw_wrong", max_retries=0).completions.create(
            model=model, prompt="1+1="
        )
