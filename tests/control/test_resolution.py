"""Resolution and locked-field rules of the shape path, each error case with its exact status."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import SHAPES, TINY, RunningServer, unique

POLICY, LORA, FORWARD = (
    f"{SHAPES}/tiny-qwen3-2k-cpu",
    f"{SHAPES}/tiny-qwen3-2k-cpu-lora",
    f"{SHAPES}/tiny-qwen3-2k-cpu-forward-only",
)


def create_job(
    http: httpx.Client, shape: str | None, config: dict | None = None, account: str = "local", **body
) -> httpx.Response:
    params = {"rlorTrainerJobId": unique("res")}
    if shape:
        params["trainingShape"] = shape
    payload = {
        "trainingConfig": {"baseModel": TINY, "loraRank": 0, "learningRate": 1e-4, **(config or {})},
        **body,
    }
    return http.post(f"/v1/accounts/{account}/rlorTrainerJobs", params=params, json=payload)


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["status"] == code
    return body["message"]


@pytest.fixture
def versioned_shape(http: httpx.Client) -> tuple[str, str, str]:
    """A private shape with a validated v1 and an unvalidated v2 (its context exceeds the model's positions)."""
    shape_id = unique("res-shape")
    snapshot = {
        "baseModel": TINY,
        "trainerMode": "POLICY_TRAINER",
        "acceleratorType": "CPU",
        "acceleratorCount": 1,
        "maxSupportedContextLength": 1024,
        "trainerImageTag": "0.1.0",
        "deploymentShapeVersion": "accounts/fireworks/deploymentShapes/rft-tiny-qwen3-cpu",
        "activationCheckpointing": False,
    }
    created = http.post(
        "/v1/accounts/local/trainingShapes", params={"trainingShapeId": shape_id}, json={"snapshot": snapshot}
    )
    assert created.status_code == 200, created.text
    v1 = created.json()["latestVersion"]
    assert v1["validated"]
    updated = http.patch(
        f"/v1/accounts/local/trainingShapes/{shape_id}",
        json={"snapshot": {"maxSupportedContextLength": 100000}},
    )
    v2 = updated.json()["latestVersion"]
    assert not v2["validated"]
    assert "exceeds the model's 8192 positions" in v2["validationReport"]["summary"]
    return f"accounts/local/trainingShapes/{shape_id}", v1["name"], v2["name"]


def test_a_bare_name_resolves_to_the_latest_validated_version(http, versioned_shape):
    shape, v1, _ = versioned_shape
    listed = http.get(f"/v1/{shape}/versions", params={"filter": "latest_validated=true", "pageSize": 1}).json()
    assert [v["name"] for v in listed["trainingShapeVersions"]] == [v1]
    job = create_job(http, shape)
    assert job.status_code == 200 and job.json()["trainingShape"] == v1
    assert http.get(f"/v1/{shape}/versions/latest").json()["name"] == v1


def test_a_pinned_unvalidated_version_is_a_failed_precondition_naming_shape_model_and_mode(http, versioned_shape):
    _, v1, v2 = versioned_shape
    message = error(create_job(http, v2), 400, "FAILED_PRECONDITION")
    assert v2 in message and f"base_model={TINY}" in message and "trainer_mode=POLICY_TRAINER" in message
    assert create_job(http, v1).json()["trainingShape"] == v1


def test_a_shape_without_any_validated_version_cannot_launch(http):
    shape_id = unique("never-valid")
    snapshot = {
        "baseModel": TINY,
        "trainerMode": "POLICY_TRAINER",
        "acceleratorType": "CPU",
        "acceleratorCount": 1,
        "maxSupportedContextLength": 99999,
        "trainerImageTag": "t",
        "deploymentShapeVersion": "accounts/fireworks/deploymentShapes/rft-tiny-qwen3-cpu",
    }
    http.post("/v1/accounts/local/trainingShapes", params={"trainingShapeId": shape_id}, json={"snapshot": snapshot})
    message = error(create_job(http, f"accounts/local/trainingShapes/{shape_id}"), 400, "FAILED_PRECONDITION")
    assert "no validated training shape exists" in message and "trainer_mode=POLICY_TRAINER" in message


@pytest.mark.parametrize(
    "name", ["tiny-qwen3-2k-cpu", "accounts/fireworks/tiny", f"{SHAPES}/Bad_Name", f"{SHAPES}/x/versions/"]
)
def test_malformed_shape_names_show_the_expected_form(http, name):
    message = error(create_job(http, name), 400, "INVALID_ARGUMENT")
    assert "expected accounts/<account>/trainingShapes/<id>" in message


def test_unknown_shapes_and_versions_are_404(http):
    error(create_job(http, f"{SHAPES}/no-such-shape"), 404, "NOT_FOUND")
    error(create_job(http, f"{POLICY}/versions/zzzzzzzz"), 404, "NOT_FOUND")
    error(
        http.get(f"/v1/{SHAPES}/no-such-shape/versions", params={"filter": "latest_validated=true"}),
        404,
        "NOT_FOUND",
    )
    error(http.get(f"/v1/{SHAPES}/no-such-shape/versions/abc"), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("config", "body", "field"),
    [
        ({"acceleratorType": "NVIDIA_H100_80GB"}, {}, "trainingConfig.acceleratorType"),
        ({"acceleratorCount": 8}, {}, "trainingConfig.acceleratorCount"),
        ({}, {"nodeCount": 2}, "nodeCount"),
        ({"customImageTag": "9.9.9"}, {}, "trainingConfig.customImageTag"),
        ({"maxContextLength": 1024}, {}, "trainingConfig.maxContextLength"),
        ({}, {"deploymentShape": "accounts/fireworks/deploymentShapes/rft-qwen3-8b"}, "deploymentShape"),
    ],
)
def test_shape_owned_fields_are_refused_naming_the_field(http, config, body, field):
    message = error(create_job(http, POLICY, config, **body), 400, "INVALID_ARGUMENT")
    assert message.startswith(f"{field} is owned by training shape {POLICY}")


def test_base_model_must_be_the_shapes_model(http):
    message = error(
        create_job(http, POLICY, {"baseModel": "accounts/fireworks/models/qwen3-0p6b"}),
        400,
        "FAILED_PRECONDITION",
    )
    assert "validated for accounts/fireworks/models/tiny-qwen3 only" in message
    error(create_job(http, POLICY, {"baseModel": "qwen3-0p6b"}), 400, "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    ("shape", "rank", "forward_only", "expected"),
    [
        (POLICY, 8, False, "loraRank must be 0 for POLICY_TRAINER"),
        (LORA, 0, False, "loraRank must be between 1 and 64"),
        (LORA, 65, False, "loraRank must be between 1 and 64"),
        (FORWARD, 4, False, "loraRank must be 0 for FORWARD_ONLY"),
        (POLICY, 0, True, "forwardOnly jobs need a FORWARD_ONLY or LORA_TRAINER shape"),
    ],
)
def test_lora_rank_must_match_the_mode(http, shape, rank, forward_only, expected):
    response = create_job(http, shape, {"loraRank": rank}, forwardOnly=forward_only)
    assert expected in error(response, 400, "FAILED_PRECONDITION")


@pytest.mark.parametrize(
    ("shape", "rank", "forward_only", "mode"),
    [
        (POLICY, 0, False, "POLICY_TRAINER"),
        (LORA, 16, False, "LORA_TRAINER"),
        (LORA, 0, True, "LORA_TRAINER"),
        (FORWARD, 0, False, "FORWARD_ONLY"),
        (FORWARD, 0, True, "FORWARD_ONLY"),
    ],
)
def test_valid_rank_and_mode_combinations_launch(http, shape, rank, forward_only, mode):
    job = create_job(http, shape, {"loraRank": rank}, forwardOnly=forward_only)
    assert job.status_code == 200, job.text
    body = job.json()
    assert body["trainerMode"] == mode
    assert body.get("forwardOnly", False) == (forward_only or mode == "FORWARD_ONLY")


def test_user_settable_fields_are_kept(http):
    job = create_job(http, LORA, {"loraRank": 8, "learningRate": 3e-4}, displayName="my run", trainerReplicaCount=1)
    body = job.json()
    assert body["displayName"] == "my run" and body["trainerReplicaCount"] == 1
    assert body["trainingConfig"]["learningRate"] == 3e-4 and body["trainingConfig"]["loraRank"] == 8
    # the shape's infrastructure is what the job reports
    assert body["trainingConfig"]["acceleratorType"] == "CPU" and body["trainingConfig"]["maxContextLength"] == 2048


def test_hardware_the_machine_lacks_is_refused_at_launch(http):
    """A GPU shape on a machine without that GPU, GPUs on more nodes than one machine, replicas of a GPU shape."""
    h200 = "accounts/fireworks/trainingShapes/qwen3-8b-256k-h200-lora"
    response = create_job(http, h200, {"baseModel": "accounts/fireworks/models/qwen3-8b", "loraRank": 8})
    message = error(response, 400, "FAILED_PRECONDITION")
    assert "the shape needs 8 x NVIDIA_H200_141GB" in message and "never runs on the CPU instead" in message
    multi = create_job(
        http,
        "accounts/fireworks/trainingShapes/qwen3p5-397b-a17b-256k",
        {"baseModel": "accounts/fireworks/models/qwen3p5-397b-a17b"},
    )
    message = error(multi, 400, "FAILED_PRECONDITION")
    assert "x 2 nodes; the local launcher runs GPU shapes on one machine" in message
    assert "runs with a cluster launcher (Kubernetes through Kubeflow Trainer, or Slurm)" in message
    replicas = create_job(
        http, h200, {"baseModel": "accounts/fireworks/models/qwen3-8b", "loraRank": 8}, trainerReplicaCount=2
    )
    assert "the shape needs 8 x NVIDIA_H200_141GB x 2 replicas" in error(replicas, 400, "FAILED_PRECONDITION")
    listed = http.get("/v1/accounts/local/rlorTrainerJobs", params={"pageSize": 200}).json()["rlorTrainerJobs"]
    assert not [j for j in listed if "qwen3-8b" in j["trainingConfig"]["baseModel"]]  # nothing was created


@pytest.mark.parametrize(
    ("config", "body", "message"),
    [
        ({"learningRate": -1}, {}, "learningRate must be a positive number"),
        ({"loraRank": -2}, {}, "loraRank must be 0 (full-parameter) or positive"),
        ({}, {"displayName": "x" * 64}, "displayName must be shorter than 64"),
        ({}, {"trainerReplicaCount": 0}, "trainerReplicaCount must be at least 1"),
        ({}, {"inactivityTimeout": "2 days"}, "inactivityTimeout must look like '1800s'"),
        ({}, {"bogusField": 1}, "bogusField: Extra inputs are not permitted"),
        ({"loraRank": "many"}, {}, "trainingConfig.loraRank"),
    ],
)
def test_bad_values_are_invalid_arguments_naming_the_field(http, config, body, message):
    assert message in error(create_job(http, POLICY, config, **body), 400, "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    ("config", "forward_only", "expected"),
    [
        ({"maxContextLength": 1000}, False, "tiny-qwen3-2k-cpu/"),
        ({"maxContextLength": 4096}, False, "tiny-qwen3-8k-cpu/"),
        ({}, False, "tiny-qwen3-2k-cpu/"),
        ({"loraRank": 8}, False, "tiny-qwen3-2k-cpu-lora/"),
        ({}, True, "tiny-qwen3-2k-cpu-forward-only/"),
    ],
)
def test_auto_selection_picks_the_smallest_covering_shape(tenant, config, forward_only, expected):
    """A fresh account sees only the public catalog, so the choice is among the tiny CPU shapes."""
    job = create_job(tenant.http, None, config, account=tenant.account, forwardOnly=forward_only)
    assert job.status_code == 200, job.text
    assert expected in job.json()["trainingShape"]


def test_auto_selection_with_nothing_that_fits_is_a_clear_error(tenant):
    response = create_job(tenant.http, None, {"maxContextLength": 100000}, account=tenant.account)
    message = error(response, 400, "FAILED_PRECONDITION")
    assert "No validated training shape matched" in message and "max_seq_len=100000" in message
    response = create_job(tenant.http, None, {"acceleratorType": "CPU"}, account=tenant.account)
    message = error(response, 400, "INVALID_ARGUMENT")
    assert "trainingConfig.acceleratorType cannot be set when the training shape is selected automatically" in message


def test_skip_validations_needs_an_admin_key(server: RunningServer, tenant):
    response = tenant.http.post(
        f"/v1/accounts/{tenant.account}/rlorTrainerJobs",
        params={"skipValidations": "true"},
        json={"trainingConfig": {"baseModel": TINY}},
    )
    assert "requires an admin API key" in error(response, 400, "INVALID_ARGUMENT")
    with server.http() as http:
        manual = http.post(
            "/v1/accounts/local/rlorTrainerJobs",
            params={"skipValidations": "true"},
            json={"trainingConfig": {"baseModel": TINY, "acceleratorType": "CPU", "maxContextLength": 512}},
        )
        assert manual.status_code == 200, manual.text
        assert manual.json().get("trainingShape", "") == ""
        assert manual.json()["trainingConfig"]["maxContextLength"] == 512
