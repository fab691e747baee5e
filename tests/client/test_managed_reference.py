"""The managed path's reference model: shared by a LoRA policy, a forward-only job for a full-parameter one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shapeyard.client import ApiError, ControlClient, managed_training
from shapeyard.client.training import TrainingClient
from shapeyard.wire.control import JobState
from shapeyard.wire.trainer import AdamParams, Datum
from tests.helpers import SHAPES, TINY, RunningServer, run_server, tiny_datum

DATA = [Datum.model_validate(tiny_datum([1, 20, 21, 22, 23, 24, 25]))]


@pytest.fixture(scope="module")
def reference_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with run_server(tmp_path_factory.mktemp("reference"), cpu_slots=2) as running:
        yield running


def logprobs(client: TrainingClient) -> list[float]:
    return client.forward(DATA).result().loss_fn_outputs[0]["logprobs"].to_list()


def train_a_little(client: TrainingClient) -> None:
    for _ in range(2):
        client.forward_backward(DATA).result()
        client.optim_step(AdamParams(learning_rate=1e-2)).result()


def job_names(control: ControlClient) -> set[str]:
    return {job.name for job in control.list_trainer_jobs()}


def options(server: RunningServer) -> dict:
    return {"base_url": server.base_url, "api_key": server.api_key, "base_model": TINY}


def test_a_lora_policy_shares_its_trainer_with_the_base_as_reference(reference_server: RunningServer):
    with ControlClient(reference_server.base_url, reference_server.api_key) as control:
        before = job_names(control)
        run = managed_training(
            **options(reference_server),
            training_shape_id=f"{SHAPES}/tiny-qwen3-2k-cpu-lora",
            lora_rank=8,
            reference_required=True,
        )
        assert run.reference_job_id is None and job_names(control) - before == {run.job.name}
    base = logprobs(run.reference)
    assert logprobs(run.training_client) == pytest.approx(base, abs=1e-6)
    train_a_little(run.training_client)
    assert max(abs(a - b) for a, b in zip(logprobs(run.training_client), base, strict=True)) > 1e-3
    assert logprobs(run.reference) == pytest.approx(base, abs=1e-6)
    run.close(delete_job=True)


def test_a_full_parameter_policy_gets_a_forward_only_reference_job_deleted_on_close(
    reference_server: RunningServer,
):
    run = managed_training(
        **options(reference_server),
        training_shape_id=f"{SHAPES}/tiny-qwen3-2k-cpu",
        reference_required=True,
        reference_training_shape_id=f"{SHAPES}/tiny-qwen3-2k-cpu-forward-only",
    )
    reference_job = run.control.get_trainer_job(run.reference_job_id)
    assert reference_job.forward_only and reference_job.trainer_mode == "FORWARD_ONLY"
    base = logprobs(run.reference)
    train_a_little(run.training_client)
    assert logprobs(run.reference) == pytest.approx(base, abs=1e-6)
    refused = run.reference.forward_backward(DATA)
    with pytest.raises(ApiError, match="forward-only"):
        refused.result()
    control = ControlClient(reference_server.base_url, reference_server.api_key)
    run.close(delete_job=True)
    assert control.get_trainer_job(reference_job.name.rsplit("/", 1)[1]).state == JobState.DELETED
    control.close()


def test_a_reference_shape_of_the_wrong_mode_is_refused_before_anything_is_created(
    reference_server: RunningServer,
):
    with ControlClient(reference_server.base_url, reference_server.api_key) as control:
        before = job_names(control)
        with pytest.raises(ValueError, match=r"requires trainer_mode in \{FORWARD_ONLY, LORA_TRAINER\}"):
            managed_training(
                **options(reference_server),
                training_shape_id=f"{SHAPES}/tiny-qwen3-2k-cpu",
                reference_required=True,
                reference_training_shape_id=f"{SHAPES}/tiny-qwen3-2k-cpu",
            )
        assert job_names(control) == before


def test_a_run_that_never_starts_deletes_the_reference_job_it_created(tmp_path):
    with run_server(tmp_path, cpu_slots=0) as server:  # no worker ever starts: the policy stays PENDING
        with pytest.raises(TimeoutError, match="PENDING"):
            managed_training(**options(server), reference_required=True, timeout=1.0)
        with ControlClient(server.base_url, server.api_key) as control:
            jobs = {job.name.rsplit("/", 1)[1]: job for job in control.list_trainer_jobs(show_deleted=True)}
    (reference,) = [job for name, job in jobs.items() if "-reference-" in name]
    assert reference.forward_only and reference.state == JobState.DELETED
    assert [job.state for name, job in jobs.items() if "-reference-" not in name] == [JobState.PENDING]
