"""The engine on its own: seq_id ordering, duplicates, failure categories, long-poll timeouts."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from pydantic import BaseModel

from shapeyard.errors import InvalidArgument
from shapeyard.trainer.engine import Engine


class Done(BaseModel):
    value: int


class Measured(BaseModel):
    value: float


@pytest.fixture
def engine():
    running = Engine()
    yield running
    running.stop()


def result(engine: Engine, request_id: str, timeout: float = 10.0) -> dict | None:
    raw = asyncio.run(engine.wait(request_id, timeout))
    return None if raw is None else json.loads(raw)


def test_requests_run_in_seq_id_order_whatever_order_they_arrive_in(engine):
    ran: list[int] = []

    def work(seq: int):
        def run() -> Done:
            ran.append(seq)
            return Done(value=seq)

        return run

    ids = {seq: engine.submit(work(seq), model_id="m", seq_id=seq) for seq in (3, 1, 4, 2)}
    assert [result(engine, ids[seq])["value"] for seq in (1, 2, 3, 4)] == [1, 2, 3, 4]
    assert ran == [1, 2, 3, 4]


def test_an_early_request_waits_for_the_gap_and_times_out_politely(engine):
    late = engine.submit(lambda: Done(value=2), model_id="gap", seq_id=2)
    assert result(engine, late, timeout=0.2) is None  # still waiting for seq 1: the caller is told to try again
    engine.submit(lambda: Done(value=1), model_id="gap", seq_id=1)
    assert result(engine, late)["value"] == 2


def test_a_duplicate_seq_id_gets_the_same_request_id_and_runs_once(engine):
    count = []

    def work() -> Done:
        count.append(1)
        return Done(value=len(count))

    first = engine.submit(work, model_id="dup", seq_id=1)
    again = engine.submit(work, model_id="dup", seq_id=1)
    assert first == again
    assert result(engine, first) == {"value": 1}
    assert count == [1]


def test_models_have_independent_lanes(engine):
    gate = threading.Event()
    blocked = engine.submit(lambda: Done(value=0), model_id="a", seq_id=2)  # waits for a's seq 1
    free = engine.submit(lambda: Done(value=7), model_id="b", seq_id=1)
    assert result(engine, free) == {"value": 7}
    assert result(engine, blocked, timeout=0.1) is None
    gate.set()


def test_failures_carry_a_category(engine):
    def bad_input() -> Done:
        raise InvalidArgument("datum 0 has 9999 tokens; the shape's maxSupportedContextLength is 2048")

    def crash() -> Done:
        raise RuntimeError("boom")

    def invalid_json() -> Measured:
        return Measured(value=float("nan"))

    user = result(engine, engine.submit(bad_input))
    server = result(engine, engine.submit(crash))
    nan = result(engine, engine.submit(invalid_json))
    assert user == {
        "error": "datum 0 has 9999 tokens; the shape's maxSupportedContextLength is 2048",
        "category": "user",
    }
    assert server == {"error": "RuntimeError: boom", "category": "server"}
    assert nan == {
        "error": "RuntimeError: the result holds NaN or infinity, which JSON clients cannot read",
        "category": "server",
    }


def test_unknown_request_ids_are_unknown(engine):
    assert not engine.known("req-nope")
    assert engine.known(engine.submit(lambda: Done(value=1)))
