"""The sequencer on its own: seq_id ordering, duplicates, long-poll timeouts; and how replies are encoded.

The sequencer hands calls on through a function; here that function records the order and answers at once, in
place of the compute process (which the worker tests drive for real).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import BaseModel

from shapeyard.trainer.ipc import Call, Reply
from shapeyard.trainer.sequencer import Sequencer
from shapeyard.wire.errors import InvalidArgument, NotFound


class Done(BaseModel):
    value: int


class Measured(BaseModel):
    value: float


class Recorder:
    """Answers each call with its body's value and remembers the order calls were handed on in."""

    def __init__(self, hold: set[str] = frozenset()) -> None:
        self.order: list[int] = []
        self.hold = hold
        self.engine = Sequencer(self.send)

    def send(self, request_id: str, call: Call) -> None:
        self.order.append(call.body["value"])
        if call.op not in self.hold:
            self.engine.resolve(Reply(request_id, result=Done(value=call.body["value"])))


@pytest.fixture
def recorder():
    running = Recorder(hold={"slow"})
    yield running
    running.engine.stop()


def call(value: int, op: str = "work") -> Call:
    return Call(op, {"value": value})


def result(engine: Sequencer, request_id: str, timeout: float = 10.0) -> dict | None:
    reply = asyncio.run(engine.wait(request_id, timeout))
    return None if reply is None else json.loads(reply.encode())


def test_calls_are_handed_on_in_seq_id_order_whatever_order_they_arrive_in(recorder):
    engine = recorder.engine
    ids = {seq: engine.submit(call(seq), model_id="m", seq_id=seq) for seq in (3, 1, 4, 2)}
    assert [result(engine, ids[seq])["value"] for seq in (1, 2, 3, 4)] == [1, 2, 3, 4]
    assert recorder.order == [1, 2, 3, 4]


def test_an_early_request_waits_for_the_gap_and_times_out_politely(recorder):
    engine = recorder.engine
    late = engine.submit(call(2), model_id="gap", seq_id=2)
    assert result(engine, late, timeout=0.2) is None  # still waiting for seq 1: the caller is told to try again
    assert recorder.order == []
    engine.submit(call(1), model_id="gap", seq_id=1)
    assert result(engine, late)["value"] == 2


def test_a_duplicate_seq_id_gets_the_same_request_id_and_is_handed_on_once(recorder):
    engine = recorder.engine
    first = engine.submit(call(1), model_id="dup", seq_id=1)
    again = engine.submit(call(1), model_id="dup", seq_id=1)
    assert first == again
    assert result(engine, first) == {"value": 1}
    assert recorder.order == [1]


def test_models_have_independent_lanes(recorder):
    engine = recorder.engine
    blocked = engine.submit(call(0), model_id="a", seq_id=2)  # waits for a's seq 1
    free = engine.submit(call(7), model_id="b", seq_id=1)
    assert result(engine, free) == {"value": 7}
    assert result(engine, blocked, timeout=0.1) is None


def test_a_call_still_running_is_not_answered(recorder):
    engine = recorder.engine
    running = engine.submit(call(5, op="slow"))
    assert result(engine, running, timeout=0.1) is None
    engine.resolve(Reply(running, result=Done(value=5)))
    assert result(engine, running) == {"value": 5}


def test_replies_carry_a_category():
    user = Reply("r1", error=InvalidArgument("datum 0 has 9999 tokens; the shape's maxSupportedContextLength is 2048"))
    server = Reply("r2", fault="RuntimeError: boom")
    nan = Reply("r3", result=Measured(value=float("nan")))
    assert json.loads(user.encode()) == {
        "error": "datum 0 has 9999 tokens; the shape's maxSupportedContextLength is 2048",
        "category": "user",
    }
    assert json.loads(server.encode()) == {"error": "RuntimeError: boom", "category": "server"}
    assert json.loads(nan.encode()) == {
        "error": "RuntimeError: the result holds NaN or infinity, which JSON clients cannot read",
        "category": "server",
    }


def test_a_reply_answered_in_its_request_raises_its_error():
    assert Reply("r", result=Done(value=3)).unwrap() == Done(value=3)
    with pytest.raises(NotFound, match="no such sampler"):
        Reply("r", error=NotFound("no such sampler")).unwrap()
    with pytest.raises(RuntimeError, match="boom"):
        Reply("r", fault="RuntimeError: boom").unwrap()


def test_unknown_request_ids_are_unknown(recorder):
    engine = recorder.engine
    assert not engine.known("req-nope")
    assert engine.known(engine.submit(call(1)))
