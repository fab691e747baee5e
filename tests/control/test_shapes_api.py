"""Shape, version and model reads; admin writes; visibility; the OpenAPI document."""

from __future__ import annotations

from fastapi.routing import APIRoute

from shapeyard.control.app import ROUTERS
from tests.helpers import TINY, TINY_DEPLOYMENT_SHAPE, RunningServer, unique


def snapshot(**fields):
    return {
        "baseModel": TINY,
        "trainerMode": "LORA_TRAINER",
        "acceleratorType": "CPU",
        "acceleratorCount": 1,
        "maxSupportedContextLength": 1024,
        "trainerImageTag": "0.1.0",
        "maxLoraRank": 16,
        "deploymentShapeVersion": TINY_DEPLOYMENT_SHAPE,
        "activationCheckpointing": False,
        **fields,
    }


def test_listing_versions_with_filters(http):
    params = {"filter": f'snapshot.base_model="{TINY}" AND latest_validated=true', "pageSize": 200}
    versions = http.get("/v1/accounts/fireworks/trainingShapes/-/versions", params=params).json()[
        "trainingShapeVersions"
    ]
    names = {v["name"].split("/versions/")[0].rsplit("/", 1)[1] for v in versions}
    assert names == {
        "tiny-qwen3-2k-cpu",
        "tiny-qwen3-8k-cpu",
        "tiny-qwen3-2k-cpu-lora",
        "tiny-qwen3-2k-cpu-forward-only",
        "tiny-qwen3-2k-cpu-x2",
        "tiny-qwen3-2k-cpu-x2-lora",
        "tiny-qwen3-2k-cpu-2node",
        "tiny-qwen3-2k-cpu-2node-lora",
    }
    assert all(v["latestValidated"] and v["public"] for v in versions)
    lora = http.get(
        "/v1/accounts/-/trainingShapes/-/versions",
        params={"filter": f'snapshot.baseModel="{TINY}" AND snapshot.trainerMode=LORA_TRAINER'},
    ).json()
    assert {v["snapshot"]["trainerMode"] for v in lora["trainingShapeVersions"]} == {"LORA_TRAINER"}
    big = http.get(
        "/v1/accounts/fireworks/trainingShapes/-/versions",
        params={"filter": "snapshot.parameter_count>=500000000000 AND snapshot.model_type=kimi_k25"},
    ).json()
    assert big["totalSize"] == 6


def test_bad_filters_and_orders_are_400(http):
    bad = http.get("/v1/accounts/-/trainingShapes/-/versions", params={"filter": "snapshot.color=red"})
    assert bad.status_code == 400 and "supported fields" in bad.json()["error"]["message"]
    order = http.get("/v1/accounts/-/trainingShapes/-/versions", params={"orderBy": "size"})
    assert order.status_code == 400 and "create_time desc" in order.json()["error"]["message"]
    one = http.get("/v1/accounts/-/trainingShapes/tiny-qwen3-2k-cpu/versions")
    assert one.status_code == 400 and "needs its account" in one.json()["error"]["message"]


def test_pages_cover_the_whole_catalog_without_repeats(http):
    seen, token = [], ""
    while True:
        page = http.get(
            "/v1/accounts/fireworks/trainingShapes/-/versions",
            params={"pageSize": 7, "pageToken": token, "orderBy": "name"},
        ).json()
        seen += [v["name"] for v in page["trainingShapeVersions"]]
        token = page["nextPageToken"]
        if not token:
            break
    assert len(seen) == len(set(seen)) == page["totalSize"]
    assert seen == sorted(seen)


def test_get_shape_version_and_latest(http):
    shape = http.get("/v1/accounts/fireworks/trainingShapes/qwen3p5-9b-256k").json()
    assert shape["latestVersion"]["snapshot"]["acceleratorCount"] == 2
    assert shape["latestValidatedVersion"] == shape["latestVersion"]["name"]
    version = http.get(f"/v1/{shape['latestVersion']['name']}").json()
    assert version["validationReport"]["memoryPlan"]["worldSize"] == 2
    assert http.get("/v1/accounts/fireworks/trainingShapes/qwen3p5-9b-256k/versions/latest").json() == version
    deploy = http.get(f"/v1/{version['snapshot']['deploymentShapeVersion']}").json()
    assert deploy["snapshot"]["baseModel"] == "accounts/fireworks/models/qwen3p5-9b" and deploy["validated"]


def test_models_expose_architecture_facts(http):
    model = http.get("/v1/accounts/fireworks/models/qwen3-235b-a22b-instruct-2507").json()
    assert model["baseModelDetails"]["moe"] is True
    assert model["spec"]["numExperts"] == 128 and model["spec"]["numLayers"] == 94
    listed = http.get("/v1/accounts/fireworks/models", params={"pageSize": 200}).json()["models"]
    assert TINY in [m["name"] for m in listed]
    assert http.get("/v1/accounts/fireworks/models/nope").status_code == 404


def test_admin_create_update_validate(http):
    shape_id = unique("adm")
    created = http.post(
        "/v1/accounts/local/trainingShapes",
        params={"trainingShapeId": shape_id},
        json={"snapshot": snapshot()},
    )
    assert created.status_code == 200, created.text
    v1 = created.json()["latestVersion"]
    assert v1["validated"] and v1["snapshot"]["deploymentShapeVersion"].startswith(TINY_DEPLOYMENT_SHAPE + "/versions/")
    path = f"/v1/accounts/local/trainingShapes/{shape_id}"

    updated = http.patch(path, json={"snapshot": {"maxLoraRank": 32}}).json()
    assert updated["versionCount"] == 2 and updated["latestVersion"]["snapshot"]["maxLoraRank"] == 32
    assert http.get(f"/v1/{v1['name']}").json()["snapshot"] == v1["snapshot"]  # the old version never changes
    assert not http.get(f"/v1/{v1['name']}").json()["latestValidated"]

    same = http.patch(path, json={"snapshot": {"maxLoraRank": 32}})
    assert same.status_code == 400 and "changes nothing" in same.json()["error"]["message"]
    identity = http.patch(path, json={"snapshot": {"trainerMode": "POLICY_TRAINER"}})
    assert identity.status_code == 400 and "trainerMode" in identity.json()["error"]["message"]
    invalid = http.patch(path, json={"snapshot": {"acceleratorCount": 0}})
    assert invalid.status_code == 400 and "acceleratorCount" in invalid.json()["error"]["message"]
    duplicate = http.post(
        "/v1/accounts/local/trainingShapes",
        params={"trainingShapeId": shape_id},
        json={"snapshot": snapshot()},
    )
    assert duplicate.status_code == 409

    revalidated = http.post(f"/v1/{updated['latestVersion']['name']}:validate")
    assert revalidated.status_code == 200 and revalidated.json()["validated"]
    published = http.patch(f"/v1/{v1['name']}", json={"public": True})
    assert published.json()["public"] is True


def test_admin_operations_need_an_admin_key(tenant):
    refused = [
        tenant.http.post(
            f"/v1/accounts/{tenant.account}/trainingShapes",
            params={"trainingShapeId": "mine"},
            json={"snapshot": snapshot()},
        ),
        tenant.http.patch(
            "/v1/accounts/fireworks/trainingShapes/tiny-qwen3-2k-cpu",
            json={"snapshot": {"maxSupportedContextLength": 1024}},
        ),
        tenant.http.post("/v1/accounts/fireworks/trainingShapes/tiny-qwen3-2k-cpu/versions/latest:validate"),
    ]
    for response in refused:
        assert response.status_code == 403 and response.json()["error"]["status"] == "PERMISSION_DENIED"


def test_private_shapes_are_invisible_to_other_accounts(server: RunningServer, http, tenant):
    shape_id = unique("private")
    http.post(
        "/v1/accounts/local/trainingShapes",
        params={"trainingShapeId": shape_id},
        json={"snapshot": snapshot()},
    )
    path = f"/v1/accounts/local/trainingShapes/{shape_id}"
    assert http.get(path).status_code == 200
    for response in (
        tenant.http.get(path),
        tenant.http.get(f"{path}/versions"),
        tenant.http.get(f"{path}/versions/latest"),
    ):
        assert response.status_code == 404
    job = tenant.http.post(
        f"/v1/accounts/{tenant.account}/rlorTrainerJobs",
        params={"trainingShape": path[4:]},
        json={"trainingConfig": {"baseModel": TINY, "loraRank": 4}},
    )
    assert job.status_code == 404
    everything = tenant.http.get("/v1/accounts/-/trainingShapes/-/versions", params={"pageSize": 200}).json()
    assert not [v for v in everything["trainingShapeVersions"] if shape_id in v["name"]]
    assert all(v["public"] for v in everything["trainingShapeVersions"])


def test_openapi_lists_exactly_the_routes(server: RunningServer, http):
    spec = http.get("/openapi.json").json()
    documented = {(path, method.upper()) for path, item in spec["paths"].items() for method in item}
    routers = [server.app.router, *ROUTERS]
    served = {
        (route.path.replace(":path}", "}"), method)
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    assert documented == served
    expected = {
        ("/v1/accounts", "GET"),
        ("/v1/accounts/{account}/models", "GET"),
        ("/v1/accounts/{account}/models/{model}", "GET"),
        ("/v1/accounts/{account}/trainingShapes", "GET"),
        ("/v1/accounts/{account}/trainingShapes", "POST"),
        ("/v1/accounts/{account}/trainingShapes/{shape}", "GET"),
        ("/v1/accounts/{account}/trainingShapes/{shape}", "PATCH"),
        ("/v1/accounts/{account}/trainingShapes/{shape}/versions", "GET"),
        ("/v1/accounts/{account}/trainingShapes/{shape}/versions/{version}", "GET"),
        ("/v1/accounts/{account}/trainingShapes/{shape}/versions/{version}", "PATCH"),
        ("/v1/accounts/{account}/trainingShapes/{shape}/versions/{version}:validate", "POST"),
        ("/v1/accounts/{account}/deploymentShapes/{shape}/versions", "GET"),
        ("/v1/accounts/{account}/deploymentShapes/{shape}/versions/{version}", "GET"),
        ("/v1/accounts/{account}/rlorTrainerJobs", "GET"),
        ("/v1/accounts/{account}/rlorTrainerJobs", "POST"),
        ("/v1/accounts/{account}/rlorTrainerJobs/{job_id}", "GET"),
        ("/v1/accounts/{account}/rlorTrainerJobs/{job_id}", "DELETE"),
        ("/v1/accounts/{account}/rlorTrainerJobs/{job_id}:resume", "POST"),
        ("/v1/accounts/{account}/deployments", "GET"),
        ("/v1/accounts/{account}/deployments", "POST"),
        ("/v1/accounts/{account}/deployments/{deployment_id}", "GET"),
        ("/v1/accounts/{account}/deployments/{deployment_id}", "PATCH"),
        ("/v1/accounts/{account}/deployments/{deployment_id}", "DELETE"),
        ("/healthz", "GET"),
        ("/training/v1/rlorTrainerJobs/{account}/{job_id}/api/v1/{path}", "GET"),
        ("/training/v1/rlorTrainerJobs/{account}/{job_id}/api/v1/{path}", "POST"),
        ("/inference/v1/completions", "POST"),
        ("/v1/completions", "POST"),
        ("/v1/chat/completions", "POST"),
        ("/hot_load/v1/models/hot_load", "POST"),
        ("/hot_load/v1/models/hot_load", "GET"),
        ("/api/v1/healthz", "GET"),
        ("/api/v1/get_server_capabilities", "GET"),
        ("/api/v1/samplers/{sampler_id}", "GET"),
        *(
            (f"/api/v1/{route}", "POST")
            for route in (
                "client/config",
                "create_session",
                "session_heartbeat",
                "telemetry",
                "create_model",
                "retrieve_future",
                "weights_info",
                "create_sampling_session",
                "asample",
                "forward",
                "forward_backward",
                "optim_step",
                "save_weights",
                "load_weights",
                "save_weights_for_sampler",
                "get_info",
                "unload_model",
            )
        ),
    }
    assert expected == documented
    schemas = spec["components"]["schemas"]
    assert "trainingConfig" in schemas["CreateTrainerJobRequest"]["properties"]
    assert "latestValidated" in schemas["TrainingShapeVersionResource"]["properties"]


def test_a_shape_whose_recipe_the_trainer_cannot_apply_says_so_and_refuses_jobs(http):
    """Context parallelism: the plan counts it (so the shape fits and is validated), the report names it as not
    applied by today's trainer, and a job on the shape is refused before anything is recorded or started."""
    shape_id = unique("cp")
    scheme = {"trainerShardingScheme": {"contextParallelism": 2}, "acceleratorCount": 2}
    created = http.post(
        "/v1/accounts/local/trainingShapes", params={"trainingShapeId": shape_id}, json={"snapshot": snapshot(**scheme)}
    )
    assert created.status_code == 200, created.text
    version = created.json()["latestVersion"]
    report = version["validationReport"]
    assert version["validated"] and report["pending"] == ["contextParallelism 2"]
    assert "today's trainer does not apply contextParallelism 2" in report["summary"]
    job_id = unique("cp-job")
    refused = http.post(
        "/v1/accounts/local/rlorTrainerJobs",
        params={"trainingShape": f"accounts/local/trainingShapes/{shape_id}", "rlorTrainerJobId": job_id},
        json={"trainingConfig": {"baseModel": TINY, "loraRank": 4}},
    )
    assert refused.status_code == 400
    assert "needs contextParallelism 2, which today's trainer does not apply" in refused.json()["error"]["message"]
    assert http.get(f"/v1/accounts/local/rlorTrainerJobs/{job_id}").status_code == 404
