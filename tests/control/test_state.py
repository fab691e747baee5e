"""What the control plane keeps between requests lives on its state object: known keys per server, and the tinker
entry's sessions and futures, pruned as they go idle."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shapeyard.control.sessions import RESULT_SECONDS, SESSION_IDLE_SECONDS, TinkerSessions
from shapeyard.wire.errors import NotFound
from tests.helpers import run_server


def test_a_key_one_server_knows_opens_nothing_on_another_in_the_same_process(tmp_path: Path):
    with run_server(tmp_path / "a") as first, run_server(tmp_path / "b") as second:
        key = first.add_account("only-on-a")
        with first.http(key) as http:
            assert http.get("/v1/accounts").status_code == 200  # known to the first server now
        with second.http(key) as http:
            refused = http.get("/v1/accounts")
        assert refused.status_code == 401 and refused.json()["error"]["message"] == "invalid API key"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_belong_to_their_account_and_are_forgotten_when_idle():
    clock = Clock()
    sessions = TinkerSessions(clock)
    kept, idle = sessions.open("acme"), sessions.open("acme")
    with pytest.raises(NotFound):
        sessions.get(kept, "other-account")
    clock.now += SESSION_IDLE_SECONDS - 1
    sessions.get(kept, "acme")  # a heartbeat or a call keeps it
    clock.now += 2
    sessions.prune()
    assert kept in sessions.sessions and idle not in sessions.sessions
    with pytest.raises(NotFound, match="call create_session first"):
        sessions.get(idle, "acme")


def test_finished_futures_stay_retrievable_for_a_while_then_go():
    clock = Clock()
    sessions = TinkerSessions(clock)

    async def scenario() -> tuple[str, str]:
        done: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        running: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        finished, pending = sessions.add_future(done), sessions.add_future(running)
        done.set_result({"model_id": "m"})
        await asyncio.sleep(0)  # the done callback runs
        return finished, pending

    finished, pending = asyncio.run(scenario())
    clock.now += RESULT_SECONDS - 1
    sessions.prune()
    assert finished in sessions.futures
    clock.now += 2
    sessions.prune()
    assert finished not in sessions.futures and pending in sessions.futures  # unfinished ones are never dropped
