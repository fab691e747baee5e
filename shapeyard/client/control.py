"""A typed client for the control plane, over the same wire schema the server uses."""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

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
from shapeyard.wire.inference import DEPLOYMENT_HEADER, HOT_LOAD_PATH, HotLoadRequest, HotLoadStatus

T = TypeVar("T", bound=BaseModel)


class ApiError(Exception):
    """A non-2xx answer, carrying the server's status and message."""

    def __init__(self, http_status: int, status: str, message: str) -> None:
        super().__init__(f"HTTP {http_status} {status}: {message}")
        self.http_status, self.status, self.message = http_status, status, message


def raise_for_error(response: httpx.Response) -> None:
    """A shapeyard error answer (`{"error": {"status", "message"}}`) as an ApiError; others with their text."""
    if not response.is_error:
        return
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        raise ApiError(response.status_code, "", response.text) from None
    raise ApiError(response.status_code, error.get("status", ""), error.get("message", ""))


def split_version(name: str) -> tuple[str, str | None]:
    shape, _, version = name.partition("/versions/")
    return shape, version or None


class ControlClient:
    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers={"X-Api-Key": api_key}, timeout=timeout)
        self._account: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def _call(self, method: str, path: str, model: type[T], **kwargs: Any) -> T:
        response = self._http.request(method, path, **kwargs)
        raise_for_error(response)
        return model.model_validate(response.json())

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
            accounts = self._call("GET", "/v1/accounts", ListAccountsResponse).accounts
            self._account = accounts[0].name.removeprefix("accounts/")
        return self._account

    # --- shapes ------------------------------------------------------------------------------------------

    def get_model(self, name: str) -> ModelResource:
        return self._call("GET", f"/v1/{name}", ModelResource)

    def list_training_shapes(self, account: str = "fireworks") -> list[TrainingShapeResource]:
        return self._all_pages(f"/v1/accounts/{account}/trainingShapes", ListTrainingShapesResponse, "training_shapes")

    def get_training_shape(self, name: str) -> TrainingShapeResource:
        return self._call("GET", f"/v1/{name}", TrainingShapeResource)

    def list_training_shape_versions(
        self, shape: str = "accounts/-/trainingShapes/-", filter: str = ""
    ) -> list[TrainingShapeVersionResource]:
        return self._all_pages(
            f"/v1/{shape}/versions",
            ListTrainingShapeVersionsResponse,
            "training_shape_versions",
            {"filter": filter},
        )

    def resolve_training_shape(self, name: str) -> TrainingShapeVersionResource:
        """A bare name resolves to the latest validated version; a pinned one is returned as is."""
        shape, version = split_version(name)
        return self._call("GET", f"/v1/{shape}/versions/{version or 'latest'}", TrainingShapeVersionResource)

    def validate_training_shape(self, name: str) -> TrainingShapeVersionResource:
        shape, version = split_version(name)
        if version is None:
            version = self.get_training_shape(shape).latest_version.name.rsplit("/", 1)[1]
        return self._call("POST", f"/v1/{shape}/versions/{version}:validate", TrainingShapeVersionResource)

    def deployment_shape_versions(self, shape: str) -> ListDeploymentShapeVersionsResponse:
        return self._call("GET", f"/v1/{shape}/versions", ListDeploymentShapeVersionsResponse)

    # --- trainer jobs ------------------------------------------------------------------------------------

    def create_trainer_job(
        self, request: CreateTrainerJobRequest, *, job_id: str = "", training_shape: str = ""
    ) -> TrainerJobResource:
        params = {k: v for k, v in (("trainingShape", training_shape), ("rlorTrainerJobId", job_id)) if v}
        return self._call(
            "POST",
            f"/v1/accounts/{self.account}/rlorTrainerJobs",
            TrainerJobResource,
            params=params,
            json=request.to_json_dict(),
        )

    def get_trainer_job(self, job_id: str) -> TrainerJobResource:
        return self._call("GET", f"/v1/accounts/{self.account}/rlorTrainerJobs/{job_id}", TrainerJobResource)

    def list_trainer_jobs(self, show_deleted: bool = False) -> list[TrainerJobResource]:
        return self._all_pages(
            f"/v1/accounts/{self.account}/rlorTrainerJobs",
            ListTrainerJobsResponse,
            "rlor_trainer_jobs",
            {"showDeleted": str(show_deleted).lower()},
        )

    def delete_trainer_job(self, job_id: str) -> TrainerJobResource:
        return self._call("DELETE", f"/v1/accounts/{self.account}/rlorTrainerJobs/{job_id}", TrainerJobResource)

    def resume_trainer_job(self, job_id: str) -> TrainerJobResource:
        return self._call("POST", f"/v1/accounts/{self.account}/rlorTrainerJobs/{job_id}:resume", TrainerJobResource)

    # --- deployments -------------------------------------------------------------------------------------

    def create_deployment(self, request: CreateDeploymentRequest, deployment_id: str) -> DeploymentResource:
        return self._call(
            "POST",
            f"/v1/accounts/{self.account}/deployments",
            DeploymentResource,
            params={"deploymentId": deployment_id},
            json=request.to_json_dict(),
        )

    def get_deployment(self, deployment_id: str) -> DeploymentResource:
        return self._call("GET", f"/v1/accounts/{self.account}/deployments/{deployment_id}", DeploymentResource)

    def list_deployments(self) -> list[DeploymentResource]:
        return self._all_pages(f"/v1/accounts/{self.account}/deployments", ListDeploymentsResponse, "deployments")

    def update_deployment(self, deployment_id: str, request: UpdateDeploymentRequest) -> DeploymentResource:
        return self._call(
            "PATCH",
            f"/v1/accounts/{self.account}/deployments/{deployment_id}",
            DeploymentResource,
            json=request.model_dump(mode="json", by_alias=True, exclude_unset=True),
        )

    def hot_load(self, deployment_id: str, identity: str) -> HotLoadStatus:
        """Start loading a sampler snapshot of the deployment's trainer job on every replica."""
        return self._call(
            "POST",
            HOT_LOAD_PATH,
            HotLoadStatus,
            json=HotLoadRequest(identity=identity).model_dump(exclude_none=True),
            headers={DEPLOYMENT_HEADER: f"accounts/{self.account}/deployments/{deployment_id}"},
        )

    def hot_load_status(self, deployment_id: str) -> HotLoadStatus:
        return self._call(
            "GET",
            HOT_LOAD_PATH,
            HotLoadStatus,
            headers={DEPLOYMENT_HEADER: f"accounts/{self.account}/deployments/{deployment_id}"},
        )

    def delete_deployment(self, deployment_id: str) -> DeploymentResource:
        return self._call(
            "DELETE",
            f"/v1/accounts/{self.account}/deployments/{deployment_id}",
            DeploymentResource,
            params={"hard": "true"},
        )
