"""Deployments: linked deployment shapes, locked accelerators, replica counts, isolation."""

from __future__ import annotations

import pytest

from shapeyard.store import catalog as store
from shapeyard.store.tables import DeploymentShapeVersion
from shapeyard.wire.shapes import DeploymentShapeSnapshot
from tests.helpers import LORA_SHAPE, TINY, TINY_DEPLOYMENT_SHAPE, unique


@pytest.fixture
def job(http) -> tuple[str, str]:
    """(job name, the deployment shape version its training shape links)."""
    job_id = unique("dj")
    created = http.post(
        "/v1/accounts/local/rlorTrainerJobs",
        params={"trainingShape": LORA_SHAPE, "rlorTrainerJobId": job_id},
        json={"trainingConfig": {"baseModel": TINY, "loraRank": 8}},
    )
    linked = http.get(f"/v1/{created.json()['trainingShape']}").json()["snapshot"]["deploymentShapeVersion"]
    return created.json()["name"], linked


def deploy(http, account="local", **body):
    dep_id = unique("dep")
    payload = {"baseModel": TINY, "minReplicaCount": 1, "maxReplicaCount": 1, **body}
    return dep_id, http.post(f"/v1/accounts/{account}/deployments", params={"deploymentId": dep_id}, json=payload)


def message(response, status=400):
    assert response.status_code == status, response.text
    return response.json()["error"]["message"]


def test_a_trainer_job_implies_its_linked_deployment_shape(http, job):
    job_name, linked = job
    dep_id, created = deploy(http, hotLoadTrainerJob=job_name)
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["deploymentShape"] == linked and body["hotLoadTrainerJob"] == job_name
    assert body["acceleratorType"] == "CPU" and body["state"] == "CREATING"
    assert http.get(f"/v1/accounts/local/deployments/{dep_id}").json() == body


def test_the_linked_shape_named_explicitly_and_bare(http, job):
    job_name, linked = job
    assert deploy(http, hotLoadTrainerJob=job_name, deploymentShape=linked)[1].status_code == 200
    _, bare = deploy(http, deploymentShape=TINY_DEPLOYMENT_SHAPE)
    assert bare.json()["deploymentShape"] == linked


def test_a_conflicting_deployment_shape_is_refused(http, job):
    job_name, _ = job
    text = message(
        deploy(
            http,
            hotLoadTrainerJob=job_name,
            deploymentShape="accounts/fireworks/deploymentShapes/rft-qwen3-0p6b-cpu",
        )[1]
    )
    assert "serves accounts/fireworks/models/qwen3-0p6b, not accounts/fireworks/models/tiny-qwen3" in text


def test_a_shape_of_another_version_conflicts_with_the_link(server, http, job):
    job_name, linked = job
    with server.control.db.session() as session:
        row = store.add_deployment_version(
            session,
            TINY_DEPLOYMENT_SHAPE,
            DeploymentShapeSnapshot(
                base_model=TINY, accelerator_type="CPU", accelerator_count=1, max_context_length=4096
            ),
            public=True,
        )
        row.validated = True
        newer = row.name
    try:
        text = message(deploy(http, hotLoadTrainerJob=job_name, deploymentShape=newer)[1])
        assert f"conflicts with the deployment shape {linked}" in text
    finally:
        with server.control.db.session() as session:
            session.delete(session.get(DeploymentShapeVersion, newer))


def test_the_shape_owns_the_accelerators(http, job):
    job_name, _ = job
    text = message(deploy(http, hotLoadTrainerJob=job_name, acceleratorType="NVIDIA_H200_141GB")[1])
    assert text.startswith("acceleratorType is owned by deployment shape")
    text = message(deploy(http, deploymentShape=TINY_DEPLOYMENT_SHAPE, acceleratorCount=4)[1])
    assert text.startswith("acceleratorCount is owned by deployment shape")


def test_a_deployment_shape_whose_hardware_is_missing_is_refused(http):
    gpu_shape = "accounts/fireworks/deploymentShapes/rft-qwen3-0p6b"
    text = message(deploy(http, baseModel="accounts/fireworks/models/qwen3-0p6b", deploymentShape=gpu_shape)[1])
    assert "NVIDIA_B200_180GB" in text and "this machine has 0 matching device(s)" in text
    with_no_replicas = deploy(
        http,
        baseModel="accounts/fireworks/models/qwen3-0p6b",
        deploymentShape=gpu_shape,
        minReplicaCount=0,
        maxReplicaCount=0,
    )[1]
    assert with_no_replicas.status_code == 200  # nothing runs, so nothing is missing yet


def test_shapeless_deployments_need_an_explicit_opt_in(http):
    assert "deploymentShape is required" in message(deploy(http, acceleratorType="CPU")[1])
    dep_id = unique("shapeless")
    ok = http.post(
        "/v1/accounts/local/deployments",
        params={"deploymentId": dep_id, "acceptShapelessRisk": "true"},
        json={"baseModel": TINY, "acceleratorType": "CPU"},
    )
    assert ok.status_code == 200 and "deploymentShape" not in ok.json()


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (
            {"minReplicaCount": 2, "maxReplicaCount": 1},
            400,
            "minReplicaCount (2) must not exceed maxReplicaCount (1)",
        ),
        (
            {"baseModel": "accounts/fireworks/models/none"},
            404,
            "baseModel accounts/fireworks/models/none not found",
        ),
        ({"baseModel": "tiny-qwen3"}, 400, "expected accounts/<account>/models/<id>"),
        ({"hotLoadTrainerJob": "accounts/local/rlorTrainerJobs/absent"}, 404, "hotLoadTrainerJob"),
        ({"hotLoadTrainerJob": "local/absent"}, 400, "expected accounts/<account>/rlorTrainerJobs/<id>"),
        ({"deploymentShape": TINY_DEPLOYMENT_SHAPE, "minReplicaCount": -1}, 400, "minReplicaCount"),
        ({"deploymentShape": TINY_DEPLOYMENT_SHAPE, "surprise": True}, 400, "surprise: Extra inputs are not permitted"),
    ],
)
def test_bad_deployment_requests(http, body, status, text):
    assert text in message(deploy(http, **body)[1], status)


def test_job_and_deployment_must_serve_the_same_model(http, job):
    job_name, _ = job
    text = message(deploy(http, baseModel="accounts/fireworks/models/qwen3-0p6b", hotLoadTrainerJob=job_name)[1])
    assert "trains accounts/fireworks/models/tiny-qwen3" in text


def test_patch_replicas_and_scale_to_zero(http, job):
    job_name, _ = job
    dep_id, _ = deploy(http, hotLoadTrainerJob=job_name)
    path = f"/v1/accounts/local/deployments/{dep_id}"
    scaled = http.patch(path, json={"minReplicaCount": 0, "maxReplicaCount": 0})
    assert scaled.status_code == 200 and (
        scaled.json()["minReplicaCount"],
        scaled.json()["maxReplicaCount"],
    ) == (0, 0)
    two = http.patch(
        path,
        params={"updateMask": "min_replica_count,maxReplicaCount"},
        json={"minReplicaCount": 2, "maxReplicaCount": 2, "displayName": "ignored"},
    )
    assert (two.json()["minReplicaCount"], two.json()["displayName"]) == (2, dep_id)
    assert "deploymentShape cannot change" in message(http.patch(path, json={"deploymentShape": TINY_DEPLOYMENT_SHAPE}))
    assert "acceleratorType cannot change" in message(http.patch(path, json={"acceleratorType": "CPU"}))
    assert "cannot be updated" in message(http.patch(path, params={"updateMask": "base_model"}, json={}))
    assert "must not exceed" in message(http.patch(path, json={"minReplicaCount": 5}))
    assert http.get(path).json()["minReplicaCount"] == 2  # refused patches changed nothing


def test_reattach_to_another_job_with_the_same_linked_shape(http, job):
    job_name, _ = job
    dep_id, _ = deploy(http, hotLoadTrainerJob=job_name)
    other_id = unique("dj2")
    other = http.post(
        "/v1/accounts/local/rlorTrainerJobs",
        params={"trainingShape": LORA_SHAPE, "rlorTrainerJobId": other_id},
        json={"trainingConfig": {"baseModel": TINY, "loraRank": 4}},
    ).json()["name"]
    patched = http.patch(
        f"/v1/accounts/local/deployments/{dep_id}",
        params={"updateMask": "hot_load_trainer_job"},
        json={"hotLoadTrainerJob": other},
    )
    assert patched.json()["hotLoadTrainerJob"] == other


def test_delete_hard_frees_the_id_and_duplicates_are_409(http):
    dep_id, _ = deploy(http, deploymentShape=TINY_DEPLOYMENT_SHAPE)
    path = f"/v1/accounts/local/deployments/{dep_id}"
    again = http.post(
        "/v1/accounts/local/deployments",
        params={"deploymentId": dep_id},
        json={"baseModel": TINY, "deploymentShape": TINY_DEPLOYMENT_SHAPE},
    )
    assert again.status_code == 409
    assert http.delete(path, params={"hard": "true", "ignoreChecks": "true"}).json()["state"] == "DELETED"
    assert http.get(path).status_code == 404
    assert (
        http.post(
            "/v1/accounts/local/deployments",
            params={"deploymentId": dep_id},
            json={"baseModel": TINY, "deploymentShape": TINY_DEPLOYMENT_SHAPE},
        ).status_code
        == 200
    )


def test_another_accounts_deployments_are_404(http, tenant, job):
    job_name, _ = job
    dep_id, _ = deploy(http, hotLoadTrainerJob=job_name)
    path = f"/v1/accounts/local/deployments/{dep_id}"
    for response in (
        tenant.http.get(path),
        tenant.http.patch(path, json={"maxReplicaCount": 3}),
        tenant.http.delete(path),
        tenant.http.get("/v1/accounts/local/deployments"),
    ):
        assert response.status_code == 404
    # nor can a tenant attach its deployment to someone else's trainer job
    _, stolen = deploy(tenant.http, tenant.account, hotLoadTrainerJob=job_name)
    assert stolen.status_code == 404
    assert http.get(path).json()["maxReplicaCount"] == 1
