"""Deployments with real replicas: sampling logprobs equal the trainer's, hot-load, bad snapshots, replicas."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from shapeyard.cli import app
from shapeyard.client import AdamParams, ApiError, Datum, ModelInput, managed_training
from shapeyard.client.control import ControlClient
from shapeyard.client.managed import ManagedTraining
from shapeyard.client.sampling import HotLoadError
from shapeyard.store.tables import Deployment
from shapeyard.wire.control import DeploymentResource, UpdateDeploymentRequest
from tests.helpers import LORA_SHAPE, TINY, RunningServer, run_server, unique

PROMPT = [1, 20, 21, 22, 23, 24]


@pytest.fixture(scope="module")
def serving_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A trainer and two replicas at once."""
    with run_server(tmp_path_factory.mktemp("serving"), cpu_slots=3) as running:
        yield running


@pytest.fixture(scope="module")
def run(serving_server: RunningServer) -> Iterator[ManagedTraining]:
    managed = managed_training(
        base_url=serving_server.base_url,
        api_key=serving_server.api_key,
        base_model=TINY,
        training_shape_id=LORA_SHAPE,
        lora_rank=8,
        job_id=unique("serve"),
        create_deployment=True,
    )
    yield managed
    managed.close(delete_job=True)


def trainer_logprobs(run: ManagedTraining, tokens: list[int]) -> list[float]:
    datum = Datum(model_input=ModelInput.from_ints(tokens[:-1]), loss_fn_inputs={"target_tokens": tokens[1:]})
    output = run.training_client.forward([datum], "cross_entropy").result()
    return output.loss_fn_outputs[0]["logprobs"].data


def wait_replicas(control: ControlClient, deployment_id: str, count: int, timeout: float = 120) -> DeploymentResource:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deployment = control.get_deployment(deployment_id)
        ready = [replica for replica in deployment.replicas if replica.state == "READY"]
        if deployment.state == "READY" and len(ready) == len(deployment.replicas) == count:
            return deployment
        time.sleep(0.1)
    raise AssertionError(f"{deployment_id} never had {count} ready replicas: {deployment}")


def assert_close(left: list[float], right: list[float], tolerance: float = 1e-4) -> None:
    assert len(left) == len(right)
    assert max(abs(a - b) for a, b in zip(left, right, strict=True)) < tolerance, (left, right)


def test_sampled_logprobs_equal_the_trainers_and_follow_a_hot_load(run: ManagedTraining):
    assert run.deployment is not None and run.deployment.state == "READY"
    assert run.deployment.deployment_shape == run.profile.snapshot.deployment_shape_version
    before = run.sampler.sample(PROMPT, max_tokens=8, temperature=1.0, seed=7, prompt_logprobs=True)[0]
    full = PROMPT + before.tokens
    expected = trainer_logprobs(run, full)
    assert_close(before.logprobs, expected[len(PROMPT) - 1 :])
    assert before.prompt_logprobs[0] is None
    assert_close(before.prompt_logprobs[1:], expected[: len(PROMPT) - 1])

    # train towards a fixed continuation, hot-load it, and sample the new weights. One token repeated: a rank-8
    # adapter learns it outright, where on distinct tokens it stays near uniform over them and greedy picks any.
    target = [*PROMPT, 70, 70, 70, 70]
    scored_before = run.sampler.sample(target, max_tokens=0, prompt_logprobs=True)[0].prompt_logprobs
    weights = [0.0] * (len(PROMPT) - 1) + [1.0] * 4
    datum = Datum(
        model_input=ModelInput.from_ints(target[:-1]), loss_fn_inputs={"target_tokens": target[1:], "weights": weights}
    )
    for _ in range(30):
        run.training_client.forward_backward([datum], "cross_entropy")
        run.training_client.optim_step(AdamParams(learning_rate=2e-2))
    identity = run.weight_syncer.save_and_hotload("trained")
    status = run.control.hot_load_status(run.deployment.name.rsplit("/", 1)[1])
    assert [replica.current_snapshot_identity for replica in status.replicas] == [identity]
    scored_after = run.sampler.sample(target, max_tokens=0, prompt_logprobs=True)[0].prompt_logprobs
    assert_close(scored_after[1:], trainer_logprobs(run, target))
    assert sum(scored_after[-4:]) > sum(scored_before[-4:]) + 10  # the continuation became likely
    after = run.sampler.sample(PROMPT, max_tokens=1, temperature=0.0)[0]
    assert after.tokens == [70] and before.tokens[:1] != [70]


def test_a_bad_or_missing_snapshot_leaves_the_old_weights_serving(run: ManagedTraining, serving_server: RunningServer):
    deployment_id = run.deployment.name.rsplit("/", 1)[1]
    serving = run.control.hot_load_status(deployment_id).replicas[0].current_snapshot_identity
    before = run.sampler.sample(PROMPT, max_tokens=4, temperature=0.0)[0]

    with pytest.raises(ApiError) as missing:
        run.control.hot_load(deployment_id, "never-saved")
    assert missing.value.http_status == 404 and "never-saved" in missing.value.message

    broken = serving_server.job_files(run.job_id).sampler_root / "broken"
    broken.mkdir(parents=True)
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(HotLoadError, match="broken"):
        run.weight_syncer.hotload("broken", timeout=60)
    still = run.sampler.sample(PROMPT, max_tokens=4, temperature=0.0)[0]
    assert still.tokens == before.tokens and still.logprobs == before.logprobs
    status = run.control.hot_load_status(deployment_id).replicas[0]
    assert status.current_snapshot_identity == serving and status.loading_state.stage == "error"
    with serving_server.control.db.session() as session:  # a replica starting later loads what is served
        assert session.get(Deployment, run.deployment.name).snapshot_identity == serving


def test_replicas_restart_when_they_die_load_the_current_snapshot_and_scale_to_zero(
    run: ManagedTraining, serving_server: RunningServer
):
    control, deployment_id = run.control, run.deployment.name.rsplit("/", 1)[1]
    identity = run.weight_syncer.save_and_hotload("replicas")
    control.update_deployment(deployment_id, UpdateDeploymentRequest(min_replica_count=2, max_replica_count=2))
    wait_replicas(control, deployment_id, 2)
    status = control.hot_load_status(deployment_id)
    assert [replica.current_snapshot_identity for replica in status.replicas] == [identity, identity]
    logs = serving_server.control.settings.data_dir / "deployments" / "local" / deployment_id
    served_before = [(logs / f"replica-{i}" / "worker.log").read_text().count("sampled a batch") for i in (0, 1)]
    samples = {tuple(run.sampler.sample(PROMPT, max_tokens=4, temperature=0.0)[0].tokens) for _ in range(4)}
    assert len(samples) == 1  # both replicas serve the same weights
    served = [(logs / f"replica-{i}" / "worker.log").read_text().count("sampled a batch") for i in (0, 1)]
    assert [after - before for after, before in zip(served, served_before, strict=True)] == [2, 2]  # round-robin

    launcher = serving_server.control.launcher
    victim = f"{run.deployment.name}/replicas/1"
    os.kill(launcher._workers[victim].process.pid, signal.SIGKILL)
    deadline, seen = time.monotonic() + 60, set()
    while time.monotonic() < deadline:
        deployment = control.get_deployment(deployment_id)
        seen.add(deployment.state)
        if deployment.state == "UPDATING":
            assert "replica 1 died" in deployment.status_message
        if "UPDATING" in seen and deployment.state == "READY":
            break
        time.sleep(0.1)
    assert seen >= {"UPDATING", "READY"}, seen
    wait_replicas(control, deployment_id, 2)
    status = control.hot_load_status(deployment_id)
    assert [replica.current_snapshot_identity for replica in status.replicas] == [identity, identity]

    control.update_deployment(deployment_id, UpdateDeploymentRequest(min_replica_count=0, max_replica_count=0))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        deployment = control.get_deployment(deployment_id)
        if deployment.status_message == "scaled to zero":
            break
        time.sleep(0.1)
    assert deployment.state == "READY" and deployment.status_message == "scaled to zero" and not deployment.replicas
    assert not launcher.running(f"{run.deployment.name}/replicas/")
    with pytest.raises(ApiError) as idle:
        run.sampler.sample(PROMPT, max_tokens=2, retry_for=0)
    assert idle.value.http_status == 503 and "no replica ready" in idle.value.message
    control.update_deployment(deployment_id, UpdateDeploymentRequest(min_replica_count=1, max_replica_count=1))
    wait_replicas(control, deployment_id, 1)
    assert run.sampler.sample(PROMPT, max_tokens=2)[0].finish_reason == "length"


def test_the_cli_hot_loads_and_shows_every_replica(run: ManagedTraining, serving_server: RunningServer):
    deployment_id = run.deployment.name.rsplit("/", 1)[1]
    identity = run.training_client.save_weights_for_sampler("from-cli").result().path
    remote = ["--base-url", serving_server.base_url, "--api-key", serving_server.api_key, "deployments", "hot-load"]
    loaded = CliRunner().invoke(app, [*remote, deployment_id, identity])
    assert loaded.exit_code == 0, loaded.output
    assert identity in loaded.output and "done" in loaded.output
    missing = CliRunner().invoke(app, [*remote, deployment_id, "no-such-snapshot"])
    assert missing.exit_code == 1 and "no-such-snapshot" in missing.output
