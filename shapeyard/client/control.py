"""A typed client for the control plane, over the same wire schema the server uses."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from shapeyard.client.http import check, session
from shapeyard.wire import names, routes
from shapeyard.wire.control import (
    CreateDeploymentRequest,
    CreateTrainerJobRequest,
    DeploymentResource,
    ListAccountsResponse,
    ListDeploymentShapeVersionsResponse,
    ListDeploymentsResponse,
    ListTrainerJobsResponse,
    ListTrainingShapesResponse,
    ListTrainingShapeVersionsResponse,
    ModelResource,
    TrainerJobResource,
    TrainingShapeResource,
    TrainingShapeVersionResource,
    UpdateDeploymentRequest,
)
from shapeyard.wire.inference import HotLoadRequest, HotLoadStatus

T = TypeVar("T", bound=BaseModel)


class ControlClient:
    """Every call raises `shapeyard.client.ApiError` for an error answer."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = session(self.base_url, api_key, timeout)
        self._account: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def _call(self, method: str, path: str, model: type[T], **kwargs: Any) -> T:
        return model.model_validate(check(self._http.request(method, path, **kwargs)))

    def _all_pages(self, path: str, model: type[T], field: str, params: dict[str, Any] | None = None) -> list:
        items: list = []
        token = ""
        while True:
            page = self._call("GET", path, model, params={**(params or {}), "pageSize": 200, "pageToken": token})
            items += getattr(page, field)
            token = page.next_page_token
            if not token:
                return items

    @property
    def account(self) -> str:
        if self._account is None:
            accounts = self._call("GET", routes.ACCOUNTS, ListAccountsResponse).accounts
            self._account = names.short(accounts[0].name)
        return self._account

    # --- shapes ------------------------------------------------------------------------------------------

    def get_model(self, name: str) -> ModelResource:
        return self._call("GET", routes.resource(name), ModelResource)

    def list_training_shapes(self, account: str = names.PUBLIC_ACCOUNT) -> list[TrainingShapeResource]:
        path = routes.TRAINING_SHAPES.format(account=account)
        return self._all_pages(path, ListTrainingShapesResponse, "training_shapes")

    def get_training_shape(self, name: str) -> TrainingShapeResource:
        return self._call("GET", routes.resource(name), TrainingShapeResource)

    def list_training_shape_versions(
        self, shape: str = names.resource_name(names.ANY, names.TRAINING_SHAPES, names.ANY), filter: str = ""
    ) -> list[TrainingShapeVersionResource]:
        return self._all_pages(
            routes.resource(f"{shape}/versions"),
            ListTrainingShapeVersionsResponse,
            "training_shape_versions",
            {"filter": filter},
        )

    def resolve_training_shape(self, name: str) -> TrainingShapeVersionResource:
        """A bare name resolves to the latest validated version; a pinned one is returned as is."""
        shape, version = names.split_version(name)
        path = routes.resource(f"{shape}{names.VERSIONS}{version or 'latest'}")
        return self._call("GET", path, TrainingShapeVersionResource)

    def validate_training_shape(self, name: str) -> TrainingShapeVersionResource:
        shape, version = names.split_version(name)
        if version is None:
            version = names.short(self.get_training_shape(shape).latest_version.name)
        path = routes.resource(f"{shape}{names.VERSIONS}{version}") + ":validate"
        return self._call("POST", path, TrainingShapeVersionResource)

    def deployment_shape_versions(self, shape: str) -> ListDeploymentShapeVersionsResponse:
        return self._call("GET", routes.resource(f"{shape}/versions"), ListDeploymentShapeVersionsResponse)

    # --- trainer jobs ------------------------------------------------------------------------------------

    def create_trainer_job(
        self, request: CreateTrainerJobRequest, *, job_id: str = "", training_shape: str = ""
    ) -> TrainerJobResource:
        params = {k: v for k, v in (("trainingShape", training_shape), ("rlorTrainerJobId", job_id)) if v}
        path = routes.TRAINER_JOBS.format(account=self.account)
        return self._call("POST", path, TrainerJobResource, params=params, json=request.to_json_dict())

    def _job(self, job_id: str) -> str:
        return routes.TRAINER_JOB.format(account=self.account, job_id=job_id)

    def get_trainer_job(self, job_id: str) -> TrainerJobResource:
        return self._call("GET", self._job(job_id), TrainerJobResource)

    def list_trainer_jobs(self, show_deleted: bool = False) -> list[TrainerJobResource]:
        return self._all_pages(
            routes.TRAINER_JOBS.format(account=self.account),
            ListTrainerJobsResponse,
            "rlor_trainer_jobs",
            {"showDeleted": str(show_deleted).lower()},
        )

    def delete_trainer_job(self, job_id: str) -> TrainerJobResource:
        return self._call("DELETE", self._job(job_id), TrainerJobResource)

    def resume_trainer_job(self, job_id: str) -> TrainerJobResource:
        path = routes.RESUME_TRAINER_JOB.format(account=self.account, job_id=job_id)
        return self._call("POST", path, TrainerJobResource)

    # --- deployments -------------------------------------------------------------------------------------

    def _deployment(self, deployment_id: str) -> str:
        return routes.DEPLOYMENT.format(account=self.account, deployment_id=deployment_id)

    def create_deployment(self, request: CreateDeploymentRequest, deployment_id: str) -> DeploymentResource:
        return self._call(
            "POST",
            routes.DEPLOYMENTS.format(account=self.account),
            DeploymentResource,
            params={"deploymentId": deployment_id},
            json=request.to_json_dict(),
        )

    def get_deployment(self, deployment_id: str) -> DeploymentResource:
        return self._call("GET", self._deployment(deployment_id), DeploymentResource)

    def list_deployments(self) -> list[DeploymentResource]:
        path = routes.DEPLOYMENTS.format(account=self.account)
        return self._all_pages(path, ListDeploymentsResponse, "deployments")

    def update_deployment(self, deployment_id: str, request: UpdateDeploymentRequest) -> DeploymentResource:
        body = request.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return self._call("PATCH", self._deployment(deployment_id), DeploymentResource, json=body)

    def _hot_load_target(self, deployment_id: str) -> dict[str, str]:
        return {routes.DEPLOYMENT_HEADER: names.deployment_name(self.account, deployment_id)}

    def hot_load(self, deployment_id: str, identity: str) -> HotLoadStatus:
        """Start loading a sampler snapshot of the deployment's trainer job on every replica."""
        return self._call(
            "POST",
            routes.HOT_LOAD,
            HotLoadStatus,
            json=HotLoadRequest(identity=identity).to_json_dict(),
            headers=self._hot_load_target(deployment_id),
        )

    def hot_load_status(self, deployment_id: str) -> HotLoadStatus:
        return self._call("GET", routes.HOT_LOAD, HotLoadStatus, headers=self._hot_load_target(deployment_id))

    def delete_deployment(self, deployment_id: str) -> DeploymentResource:
        return self._call("DELETE", self._deployment(deployment_id), DeploymentResource, params={"hard": "true"})
