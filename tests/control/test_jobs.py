"""Trainer-job lifecycle over HTTP: create, get, list, delete, resume, conflicts, isolation, auth."""

from __future__ import annotations

from shapeyard.store.tables import TrainerJob
from tests.helpers import FULL_SHAPE, TINY, RunningServer, same_record, unique

BODY = {
    "trainingConfig": {"baseModel": TINY, "loraRank": 0, "learningRate": 1e-4},
    "displayName": "lifecycle",
}


def create(http, account="local", job_id=None):
    job_id = job_id or unique("job")
    response = http.post(
        f"/v1/accounts/{account}/rlorTrainerJobs",
        params={"trainingShape": FULL_SHAPE, "rlorTrainerJobId": job_id},
        json=BODY,
    )
    return job_id, response


def test_create_get_list_delete(http):
    job_id, created = create(http)
    assert created.status_code == 200, created.text
    job = created.json()
    assert job["name"] == f"accounts/local/rlorTrainerJobs/{job_id}"
    assert job["state"] == "JOB_STATE_CREATING"
    assert job["trainingShape"].startswith(FULL_SHAPE + "/versions/")
    assert same_record(http.get(f"/v1/accounts/local/rlorTrainerJobs/{job_id}").json(), job)
    listed = [j["name"] for j in http.get("/v1/accounts/local/rlorTrainerJobs").json()["rlorTrainerJobs"]]
    assert job["name"] in listed

    deleted = http.delete(f"/v1/accounts/local/rlorTrainerJobs/{job_id}")
    assert deleted.status_code == 200 and deleted.json()["state"] == "JOB_STATE_DELETED"
    assert http.get(f"/v1/accounts/local/rlorTrainerJobs/{job_id}").json()["state"] == "JOB_STATE_DELETED"
    listed = [j["name"] for j in http.get("/v1/accounts/local/rlorTrainerJobs").json()["rlorTrainerJobs"]]
    assert job["name"] not in listed
    with_deleted = http.get("/v1/accounts/local/rlorTrainerJobs", params={"showDeleted": "true"}).json()
    assert job["name"] in [j["name"] for j in with_deleted["rlorTrainerJobs"]]


def test_an_existing_id_is_a_409_and_changes_nothing(http):
    job_id, first = create(http)
    _, again = create(http, job_id=job_id)
    assert again.status_code == 409 and again.json()["error"]["status"] == "ALREADY_EXISTS"
    assert same_record(http.get(f"/v1/accounts/local/rlorTrainerJobs/{job_id}").json(), first.json())
    http.delete(f"/v1/accounts/local/rlorTrainerJobs/{job_id}")
    assert create(http, job_id=job_id)[1].status_code == 409


def test_resume_only_from_a_stopped_state(server: RunningServer, http):
    job_id, _ = create(http)
    running = http.post(f"/v1/accounts/local/rlorTrainerJobs/{job_id}:resume")
    assert running.status_code == 400 and "only jobs in" in running.json()["error"]["message"]
    with server.control.db.session() as session:
        session.get(TrainerJob, f"accounts/local/rlorTrainerJobs/{job_id}").state = "JOB_STATE_FAILED"
    resumed = http.post(f"/v1/accounts/local/rlorTrainerJobs/{job_id}:resume")
    assert resumed.status_code == 200 and resumed.json()["state"] == "JOB_STATE_CREATING"


def test_pagination_walks_every_job(server: RunningServer):
    account = unique("pages")
    key = server.add_account(account)
    with server.http(key) as http:
        ids = sorted(create(http, account)[0] for _ in range(5))
        seen, token = [], ""
        while True:
            page = http.get(
                f"/v1/accounts/{account}/rlorTrainerJobs", params={"pageSize": 2, "pageToken": token}
            ).json()
            assert len(page["rlorTrainerJobs"]) <= 2 and page["totalSize"] == 5
            seen += [j["name"].rsplit("/", 1)[1] for j in page["rlorTrainerJobs"]]
            token = page["nextPageToken"]
            if not token:
                break
        assert sorted(seen) == ids
        bad = http.get(f"/v1/accounts/{account}/rlorTrainerJobs", params={"pageToken": "garbage!"})
        assert bad.status_code == 400 and "pageToken" in bad.json()["error"]["message"]


def test_another_accounts_jobs_are_404(server: RunningServer, http, tenant):
    job_id, _ = create(http)
    path = f"/v1/accounts/local/rlorTrainerJobs/{job_id}"
    for response in (
        tenant.http.get(path),
        tenant.http.delete(path),
        tenant.http.post(f"{path}:resume"),
        tenant.http.get("/v1/accounts/local/rlorTrainerJobs"),
        create(tenant.http, "local")[1],
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["status"] == "NOT_FOUND"
    assert http.get(path).json()["state"] in ("JOB_STATE_CREATING", "JOB_STATE_PENDING")  # untouched
    own_id, own = create(tenant.http, tenant.account)
    assert own.status_code == 200
    assert [
        j["name"] for j in tenant.http.get(f"/v1/accounts/{tenant.account}/rlorTrainerJobs").json()["rlorTrainerJobs"]
    ] == [own.json()["name"]]
    assert http.get(f"/v1/accounts/{tenant.account}/rlorTrainerJobs/{own_id}").status_code == 200  # admin sees all


def test_missing_or_wrong_key_is_401(server: RunningServer):
    for key in ("", "fw_not_a_key"):
        with server.http(key) as http:
            for response in (
                http.get("/v1/accounts"),
                http.get("/v1/accounts/local/rlorTrainerJobs"),
                http.get(f"/v1/{FULL_SHAPE}/versions"),
            ):
                assert response.status_code == 401
                assert response.json()["error"]["status"] == "UNAUTHENTICATED"


def test_bearer_token_is_accepted_like_x_api_key(server: RunningServer):
    with server.http("") as http:
        response = http.get("/v1/accounts", headers={"Authorization": f"Bearer {server.api_key}"})
    assert response.json()["accounts"] == [
        {
            "name": "accounts/local",
            "displayName": "local",
            "createTime": response.json()["accounts"][0]["createTime"],
        }
    ]


def test_malformed_job_ids(http):
    for job_id in ("Has_Upper", "-dash", "x" * 64):
        response = http.post(
            "/v1/accounts/local/rlorTrainerJobs",
            params={"trainingShape": FULL_SHAPE, "rlorTrainerJobId": job_id},
            json=BODY,
        )
        assert response.status_code == 400 and "rlorTrainerJobId" in response.json()["error"]["message"]
    assert http.get("/v1/accounts/local/rlorTrainerJobs/Bad_Id").status_code == 400
