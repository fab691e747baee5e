"""Trainer jobs with real workers: states, the gateway, failure, delete, resume from the last checkpoint, warm
workers."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from shapeyard.client import AdamParams, Datum, ManagedTraining, ModelInput, managed_training
from shapeyard.client.managed import wait_until_running
from tests.helpers import FULL_SHAPE, TINY, RunningServer, run_server, unique


def wait_state(http: httpx.Client, job_id: str, states: set[str], timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        job = http.get(f"/v1/accounts/local/rlorTrainerJobs/{job_id}").json()
        if not seen or seen[-1] != job["state"]:
            seen.append(job["state"])
        if job["state"] in states:
            job["_seen"] = seen
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {states}; saw {seen}: {job['statusMessage']}")


def data(step: int) -> list[Datum]:
    tokens = [(7 * step + 3 * i) % 90 + 5 for i in range(20)]
    return [Datum(model_input=ModelInput.from_ints(tokens[:-1]), loss_fn_inputs={"target_tokens": tokens[1:]})]


def start(server: RunningServer, job_id: str, shape: str = FULL_SHAPE) -> ManagedTraining:
    """A tiny-model job on the shape, created (or resumed) and running, through the shapeyard client."""
    return managed_training(
        base_url=server.base_url, api_key=server.api_key, base_model=TINY, training_shape_id=shape, job_id=job_id
    )


def test_a_job_goes_creating_pending_running_and_its_worker_answers_through_the_gateway(training_server, training_http):
    http = training_http
    job_id = unique("life")
    created = http.post(
        "/v1/accounts/local/rlorTrainerJobs",
        params={"trainingShape": FULL_SHAPE, "rlorTrainerJobId": job_id},
        json={"trainingConfig": {"baseModel": TINY}},
    )
    assert created.json()["state"] == "JOB_STATE_CREATING"
    gateway = f"/training/v1/rlorTrainerJobs/local/{job_id}/api/v1/healthz"
    early = http.get(gateway)
    assert early.status_code == 503 and "has no running worker" in early.json()["error"]["message"]
    job = wait_state(http, job_id, {"JOB_STATE_RUNNING"})
    assert "JOB_STATE_PENDING" in job["_seen"]
    assert http.get(gateway).json() == {"status": "ok"}
    with training_server.http("fw_wrong_key") as stranger:
        assert stranger.get(gateway).status_code == 401
    # the worker itself refuses anyone who did not come through the gateway
    endpoint = training_server.control.launcher.listener(f"accounts/local/rlorTrainerJobs/{job_id}")
    assert httpx.get(f"{endpoint.url}/api/v1/healthz").status_code == 401
    deleted = http.delete(f"/v1/accounts/local/rlorTrainerJobs/{job_id}")
    assert deleted.json()["state"] == "JOB_STATE_DELETED"
    assert training_server.control.launcher.listener(f"accounts/local/rlorTrainerJobs/{job_id}") is None
    assert http.get(gateway).status_code == 503


def test_a_dead_worker_fails_its_job_with_the_log_tail_and_resume_continues_from_the_last_checkpoint(
    training_server: RunningServer,
):
    run = start(training_server, unique("resume"))
    training = run.training_client
    adam = AdamParams(learning_rate=1e-2)
    for step in range(2):
        training.forward_backward(data(step))
        training.optim_step(adam).result()
    assert training.save_state("step-2").result().path == "step-2"
    expected = training.forward(data(9)).result().metrics["loss:sum"]

    name = f"accounts/local/rlorTrainerJobs/{run.job_id}"
    pid = training_server.control.launcher._workers[name].process.pid
    os.kill(pid, signal.SIGKILL)
    with training_server.http() as http:
        failed = wait_state(http, run.job_id, {"JOB_STATE_FAILED"})
        assert "worker exited with code -9" in failed["statusMessage"]
        assert "serving" in failed["statusMessage"]  # the tail of the worker's log
        assert failed["status"]["message"] == failed["statusMessage"]
        running = http.get(f"/training/v1/rlorTrainerJobs/local/{run.job_id}/api/v1/healthz")
        assert running.status_code == 503

    resumed = start(training_server, run.job_id)
    assert resumed.job.state == "JOB_STATE_RUNNING"
    # the first model on the restarted worker starts from step-2, weights and optimizer
    assert resumed.training_client.forward(data(9)).result().metrics["loss:sum"] == expected
    resumed.close(delete_job=True)
    run.service.close()


def worker_processes(server: RunningServer, prefix: str) -> tuple[ManagedTraining, subprocess.Popen, int]:
    """A running job, its worker's HTTP process, and the pid of its compute process (the HTTP process's child)."""
    run = start(server, unique(prefix))
    worker = server.control.launcher._workers[f"accounts/local/rlorTrainerJobs/{run.job_id}"].process
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    assert len(children) == 1, children
    return run, worker, int(children[0])


def test_a_dead_compute_process_takes_its_worker_down_and_fails_the_job(training_server: RunningServer):
    run, worker, compute = worker_processes(training_server, "compute")
    run.training_client.forward_backward(data(0)).result()
    os.kill(compute, signal.SIGKILL)
    assert worker.wait(timeout=30) == 1  # the HTTP process does not stay up without its model
    with training_server.http() as http:
        failed = wait_state(http, run.job_id, {"JOB_STATE_FAILED"})
    assert "worker exited with code 1" in failed["statusMessage"]
    assert "the compute process exited with code -9" in failed["statusMessage"]
    run.close(delete_job=True)


def test_deleting_a_job_stops_both_of_its_worker_processes(training_server: RunningServer):
    run, worker, compute = worker_processes(training_server, "stop")
    run.close(delete_job=True)
    assert worker.poll() is not None
    deadline = time.monotonic() + 20
    while Path(f"/proc/{compute}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{compute}").exists()


def test_resume_only_from_a_stopped_state(training_http):
    http = training_http
    job_id = unique("busy")
    http.post(
        "/v1/accounts/local/rlorTrainerJobs",
        params={"trainingShape": FULL_SHAPE, "rlorTrainerJobId": job_id},
        json={"trainingConfig": {"baseModel": TINY}},
    )
    refused = http.post(f"/v1/accounts/local/rlorTrainerJobs/{job_id}:resume")
    assert refused.status_code == 400 and refused.json()["error"]["status"] == "FAILED_PRECONDITION"
    http.delete(f"/v1/accounts/local/rlorTrainerJobs/{job_id}")


def test_a_worker_that_cannot_load_its_model_fails_the_job(training_http):
    http = training_http
    """qwen3-0p6b's weights are not on this machine and are never downloaded: the worker says so and the job fails."""
    job_id = unique("noweights")
    http.post(
        "/v1/accounts/local/rlorTrainerJobs",
        params={
            "trainingShape": "accounts/fireworks/trainingShapes/qwen3-0p6b-4k-cpu-lora",
            "rlorTrainerJobId": job_id,
        },
        json={"trainingConfig": {"baseModel": "accounts/fireworks/models/qwen3-0p6b", "loraRank": 8}},
    )
    failed = wait_state(http, job_id, {"JOB_STATE_FAILED", "JOB_STATE_RUNNING"}, timeout=120)
    if failed["state"] == "JOB_STATE_RUNNING":  # a machine with Qwen/Qwen3-0.6B in its HF cache
        pytest.fail("this test expects Qwen/Qwen3-0.6B to be absent from the local HF cache")
    assert "not in the local HF cache and shapeyard never downloads" in failed["statusMessage"]


def test_wait_until_running_reports_a_failed_job(training_server):
    from shapeyard.client import ControlClient
    from shapeyard.client.managed import JobFailedError

    with ControlClient(training_server.base_url, training_server.api_key) as control, training_server.http() as http:
        job_id = unique("nofail")
        http.post(
            "/v1/accounts/local/rlorTrainerJobs",
            params={
                "trainingShape": "accounts/fireworks/trainingShapes/qwen3-0p6b-4k-cpu-lora",
                "rlorTrainerJobId": job_id,
            },
            json={"trainingConfig": {"baseModel": "accounts/fireworks/models/qwen3-0p6b", "loraRank": 8}},
        )
        with pytest.raises(JobFailedError, match="JOB_STATE_FAILED"):
            wait_until_running(control, job_id, timeout=120)


def test_a_warm_worker_takes_a_one_rank_cpu_job_and_another_is_started_after_it(tmp_path, monkeypatch):
    monkeypatch.setattr("shapeyard.launch.local.WARM_REFILL_SECONDS", 0.5)
    with run_server(tmp_path, cpu_slots=2, warm_workers=1) as server:
        launcher = server.control.launcher
        (warm,) = launcher._warm
        run = start(server, unique("warm"))
        worker = launcher._workers[server.worker_name(run.job_id)]
        assert worker.process is warm  # the job runs in the process started ahead of it
        loss = run.training_client.forward_backward(data(0)).result().metrics["loss:sum"]
        assert math.isfinite(loss) and loss > 0
        run.training_client.optim_step(AdamParams(learning_rate=1e-2)).result()
        # its output, started before the job was known, goes to the job's log
        assert "serving" in (server.job_files(run.job_id).root / "worker.log").read_text()
        deadline = time.monotonic() + 10
        while len(launcher._warm) != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(launcher._warm) == 1 and launcher._warm[0] is not warm
        run.close(delete_job=True)
        spare = launcher._warm[0]
    assert spare.poll() is not None  # the server's close ends its warm workers too
