"""The trainer protocol over HTTP through the gateway, against a real worker: ordering, duplicates, errors."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.helpers import LORA_SHAPE, TINY, RunningServer, tiny_datum, unique

TOKENS = [(5 * i + 3) % 90 + 5 for i in range(24)]


class Trainer:
    """Raw protocol calls on one job (no client library): what the official SDKs put on the wire."""

    def __init__(self, http: httpx.Client, job_id: str) -> None:
        self.http, self.base = http, f"/training/v1/rlorTrainerJobs/local/{job_id}/api/v1"
        self.session = self.post("create_session", {"tags": []})["session_id"]
        self.models = 0

    def post(self, route: str, body: dict) -> dict:
        response = self.http.post(f"{self.base}/{route}", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def result(self, request_id: str) -> dict:
        while True:
            answer = self.post("retrieve_future", {"request_id": request_id})
            if answer.get("type") != "try_again":
                return answer

    def create_model(self, rank: int = 8) -> str:
        body = {
            "session_id": self.session,
            "model_seq_id": self.models,
            "base_model": TINY,
            "lora_config": {"rank": rank, "alpha": 32, "seed": 3},
        }
        self.models += 1
        return self.result(self.post("create_model", body)["request_id"])["model_id"]

    def fb(self, model: str, seq: int, data: list[dict] | None = None, loss_fn: str = "cross_entropy") -> str:
        body = {
            "forward_backward_input": {"data": data or [tiny_datum(TOKENS)], "loss_fn": loss_fn},
            "model_id": model,
            "seq_id": seq,
        }
        return self.post("forward_backward", body)["request_id"]

    def optim(self, model: str, seq: int) -> str:
        body = {"adam_params": {"learning_rate": 1e-3}, "model_id": model, "seq_id": seq, "type": "optim_step"}
        return self.post("optim_step", body)["request_id"]


@pytest.fixture(scope="module")
def trainer(training_server: RunningServer) -> Trainer:
    job_id = unique("proto")
    with training_server.http() as http:
        http.post(
            "/v1/accounts/local/rlorTrainerJobs",
            params={"trainingShape": LORA_SHAPE, "rlorTrainerJobId": job_id},
            json={"trainingConfig": {"baseModel": TINY, "loraRank": 8}},
        )
        deadline = time.monotonic() + 120
        while http.get(f"/v1/accounts/local/rlorTrainerJobs/{job_id}").json()["state"] != "JOB_STATE_RUNNING":
            assert time.monotonic() < deadline, "the trainer did not start"
            time.sleep(0.2)
    client = httpx.Client(base_url=training_server.base_url, headers={"X-Api-Key": training_server.api_key}, timeout=60)
    return Trainer(client, job_id)


def test_out_of_order_and_duplicate_submissions_give_the_in_order_result(trainer):
    in_order, shuffled = trainer.create_model(), trainer.create_model()  # same seed: identical adapters
    a = [trainer.fb(in_order, 1), trainer.fb(in_order, 2), trainer.optim(in_order, 3)]
    # optim_step first, then the second chunk twice (a retry), then the first chunk
    optim = trainer.optim(shuffled, 3)
    second = trainer.fb(shuffled, 2)
    assert trainer.fb(shuffled, 2) == second  # the retry gets the same request id
    first = trainer.fb(shuffled, 1)
    results_a = [trainer.result(r) for r in a]
    results_b = [trainer.result(r) for r in (first, second, optim)]
    assert results_a[0]["metrics"] == results_b[0]["metrics"]
    # the duplicate ran once, and the step saw both chunks: identical gradient norm
    assert results_b[2]["metrics"]["grad_norm"] == pytest.approx(results_a[2]["metrics"]["grad_norm"], rel=1e-6)
    assert results_b[2]["metrics"]["grad_norm"] > 0


def test_bad_input_fails_the_future_with_category_user_and_the_lane_moves_on(trainer):
    model = trainer.create_model()
    long = tiny_datum(list(range(5, 100)) * 30)  # 2849 input positions; the shape allows 2048
    cases = {
        1: (trainer.fb(model, 1, [long]), "has 2849 tokens; the shape's maxSupportedContextLength is 2048"),
        2: (trainer.fb(model, 2, loss_fn="grpo"), "unknown loss_fn 'grpo'"),
        3: (trainer.fb(model, 3, [tiny_datum([5, 6, 500])]), "token id 500 is outside the vocabulary (0..127)"),
        4: (
            trainer.post("forward_backward", {"model_id": model, "seq_id": 4})["request_id"],
            "forward_backward_input: Field required",
        ),
    }
    for request_id, message in cases.values():
        answer = trainer.result(request_id)
        assert answer["category"] == "user" and message in answer["error"], answer
    # a malformed request still used up its seq_id: seq 5 runs
    ok = trainer.result(trainer.fb(model, 5))
    assert "loss:sum" in ok["metrics"]


def test_a_lora_rank_that_disagrees_with_the_job_is_a_user_error(trainer):
    body = {
        "session_id": trainer.session,
        "model_seq_id": trainer.models,
        "base_model": TINY,
        "lora_config": {"rank": 16},
    }
    trainer.models += 1
    answer = trainer.result(trainer.post("create_model", body)["request_id"])
    assert answer == {
        "error": "lora_config.rank 16 disagrees with the job's loraRank 8: send rank 8",
        "category": "user",
    }


def test_unknown_futures_and_non_json_bodies(trainer):
    unknown = trainer.http.post(f"{trainer.base}/retrieve_future", json={"request_id": "req-nope"})
    assert unknown.status_code == 404 and "unknown or its result expired" in unknown.json()["error"]["message"]
    garbage = trainer.http.post(
        f"{trainer.base}/forward_backward", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert garbage.status_code == 400 and garbage.json()["error"]["message"]


def test_housekeeping_routes_answer_what_the_clients_require(trainer):
    assert trainer.post("session_heartbeat", {"session_id": trainer.session}) == {"type": "session_heartbeat"}
    assert trainer.post("telemetry", {"events": []}) == {"status": "accepted"}
    assert trainer.post("client/config", {"sdk_version": "0.23.0"})["proto_write_fwdbwd"] is False
    capabilities = trainer.http.get(f"{trainer.base}/get_server_capabilities").json()
    assert capabilities == {"supported_models": [{"model_name": TINY, "max_context_length": 2048}]}
