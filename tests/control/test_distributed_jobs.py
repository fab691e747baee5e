"""Trainer jobs whose world has several ranks: on the 2-node CPU shape the local launcher runs two torch agents on
this machine, meeting through the c10d rendezvous on loopback. A killed rank fails the job with its reason and
leaves no process behind; `:resume` restarts the whole world from the last checkpoint; DELETE stops every rank;
bad input is refused before any rank changes state; the plain tinker client trains there through the job's
gateway."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import tinker

from shapeyard.client import AdamParams, Datum, ModelInput
from shapeyard.client.http import ApiError
from tests.control.test_trainer_lifecycle import data, start, wait_state
from tests.helpers import SHAPES, TINY, RunningServer, unique

TWO_NODES = f"{SHAPES}/tiny-qwen3-2k-cpu-2node"
TWO_DEVICES = f"{SHAPES}/tiny-qwen3-2k-cpu-x2"


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            found |= {int(child), *descendants(int(child))}
    return found


def job_processes(server: RunningServer, job_id: str) -> dict[int, str]:
    """Every process of a job's worker (HTTP process, agents, ranks) by pid, with its RANK for the ranks."""
    worker = server.control.launcher._workers[server.worker_name(job_id)]
    pids = set()
    for process in worker.processes():
        pids |= {process.pid, *descendants(process.pid)}
    found = {}
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        ranks = [item.split(b"=", 1)[1].decode() for item in environ if item.startswith(b"RANK=")]
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        found[pid] = ranks[0] if ranks and b"torch.distributed.run" not in command else ""
    return found


def wait_gone(pids: set[int], timeout: float = 40) -> set[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if Path(f"/proc/{pid}").exists() and not _zombie(pid)}
        time.sleep(0.2)
    return alive


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return False


def test_a_killed_rank_fails_the_job_with_its_reason_and_resume_restarts_the_whole_world(
    training_server: RunningServer,
):
    run = start(training_server, unique("rank"), TWO_NODES)
    training = run.training_client
    for step in range(2):
        training.forward_backward(data(step))
        training.optim_step(AdamParams(learning_rate=1e-2)).result()
    training.save_state("step-2").result()
    expected = training.forward(data(9)).result().metrics["loss:sum"]

    processes = job_processes(training_server, run.job_id)
    ranks = {rank: pid for pid, rank in processes.items() if rank}
    assert sorted(ranks) == ["0", "1"], processes  # one rank under each of the two agents
    os.kill(ranks["1"], signal.SIGKILL)
    with training_server.http() as http:
        failed = wait_state(http, run.job_id, {"JOB_STATE_FAILED"}, timeout=120)
    assert "worker exited with code" in failed["statusMessage"]
    assert "rank      : 1" in failed["statusMessage"], failed["statusMessage"]  # the agent's summary names it
    assert "Signal 9" in failed["statusMessage"]
    assert wait_gone(set(processes)) == set(), "processes of the failed job outlived it"

    resumed = start(training_server, run.job_id, TWO_NODES)
    assert resumed.job.state == "JOB_STATE_RUNNING"
    # both ranks start from step-2, weights and optimizer
    assert resumed.training_client.forward(data(9)).result().metrics["loss:sum"] == pytest.approx(expected, rel=1e-6)
    resumed.close(delete_job=True)
    run.service.close()


def test_deleting_a_job_stops_every_rank_on_every_node(training_server: RunningServer):
    run = start(training_server, unique("stop"), TWO_NODES)
    processes = job_processes(training_server, run.job_id)
    assert sum(1 for rank in processes.values() if rank) == 2
    assert len(processes) == 5  # the HTTP process, two agents, two ranks
    run.close(delete_job=True)
    assert wait_gone(set(processes)) == set()


def test_bad_input_at_world_size_2_is_refused_before_any_rank_changes_state(training_server: RunningServer):
    run = start(training_server, unique("bad"), TWO_DEVICES)
    training = run.training_client
    before = training.forward(data(3)).result().metrics["loss:sum"]
    good = data(4)[0]
    bad = Datum(model_input=ModelInput.from_ints([5, 6, 7]), loss_fn_inputs={"target_tokens": [6, 7, 500]})
    # two data so that each rank gets one: the bad one is another rank's share
    with pytest.raises(ApiError, match="token id 500 is outside the vocabulary"):
        training.forward_backward([good, bad]).result()
    # had any rank kept a gradient, this step would move its shards
    training.optim_step(AdamParams(learning_rate=1.0)).result()
    assert training.forward(data(3)).result().metrics["loss:sum"] == before
    run.close(delete_job=True)


def test_the_tinker_client_trains_saves_and_loads_on_a_two_node_lora_job(training_server: RunningServer):
    job_id = unique("tinker")
    with training_server.http() as http:
        created = http.post(
            f"/v1/accounts/{training_server.account}/rlorTrainerJobs",
            params={"trainingShape": f"{SHAPES}/tiny-qwen3-2k-cpu-2node-lora", "rlorTrainerJobId": job_id},
            json={"trainingConfig": {"baseModel": TINY, "loraRank": 8}},
        )
        assert created.status_code == 200, created.text
        wait_state(http, job_id, {"JOB_STATE_RUNNING"}, timeout=120)
    gateway = f"{training_server.base_url}/training/v1/rlorTrainerJobs/{training_server.account}/{job_id}"
    service = tinker.ServiceClient(base_url=gateway, api_key=training_server.tinker_key)
    training = service.create_lora_training_client(base_model=TINY, rank=8)
    sequences = [[(7 * step + 3 * i) % 90 + 5 for i in range(20)] for step in (1, 2)]
    batch = [
        tinker.Datum(model_input=tinker.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs={"target_tokens": tokens[1:]})
        for tokens in sequences
    ]
    losses = []
    for _ in range(4):
        losses.append(training.forward_backward(batch, "cross_entropy").result().metrics["loss:sum"])
        training.optim_step(tinker.AdamParams(learning_rate=1e-2)).result()
    assert losses[-1] < losses[0], losses
    path = training.save_state("after-4").result().path
    reference = training.forward(batch, "cross_entropy").result().metrics["loss:sum"]
    training.forward_backward(batch, "cross_entropy").result()
    training.optim_step(tinker.AdamParams(learning_rate=1e-1)).result()
    training.load_state(path).result()
    assert training.forward(batch, "cross_entropy").result().metrics["loss:sum"] == reference
    with training_server.http() as http:
        assert http.delete(f"/v1/accounts/{training_server.account}/rlorTrainerJobs/{job_id}").status_code == 200
