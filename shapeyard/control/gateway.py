"""The trainer gateway: `/training/v1/rlorTrainerJobs/{account}/{job}/api/v1/*` reaches the job's worker.

The caller's key must belong to the job's account. The gateway adds the worker's token, forwards the request as
is and returns the worker's answer as is; while the job has no running worker it answers 503 with the job's
state (the SDK's readiness probe waits on exactly that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from shapeyard.control.auth import require_account
from shapeyard.control.deps import CallerDep, PlaneDep
from shapeyard.errors import NotFound, ShapeyardError, Unavailable
from shapeyard.store.accounts import Caller
from shapeyard.store.tables import TrainerJob
from shapeyard.wire import names
from shapeyard.wire.worker import WORKER_TOKEN_HEADER

if TYPE_CHECKING:
    from shapeyard.control.app import ControlPlane

router = APIRouter(tags=["trainer gateway"])


class WorkerError(ShapeyardError):
    """A worker's error answer, passed on with its own status."""

    def __init__(self, http_status: int, status: str, message: str) -> None:
        super().__init__(message)
        self.http_status, self.status = http_status, status


# retrieve_future long-polls for up to 25 s on the worker; the SDK waits 45 s.
_client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0), limits=httpx.Limits(max_keepalive_connections=64))
_FORWARDED_HEADERS = ("content-type", "accept", "x-idempotency-key", "x-stainless-package-version")


async def relay(
    control: ControlPlane,
    caller: Caller,
    job_id: str,
    op: str,
    payload: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST a trainer-protocol call to one of the caller's jobs and return its JSON answer; an error answer is
    raised with the worker's status and message."""
    name = names.job_name(caller.account, names.check_id("job id", job_id))
    endpoint = control.launcher.endpoint(name)
    if endpoint is None:
        raise NotFound(f"trainer job {name} has no running worker")
    upstream = await _client.post(
        f"{endpoint.url}/api/v1/{op}", json=payload, headers={**(headers or {}), WORKER_TOKEN_HEADER: endpoint.token}
    )
    answer = upstream.json()
    if upstream.is_error:
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        raise WorkerError(upstream.status_code, error.get("status", "UNKNOWN"), error.get("message", upstream.text))
    return answer


async def forward(endpoint_url: str, token: str, path: str, request: Request) -> Response:
    headers = {key: value for key, value in request.headers.items() if key.lower() in _FORWARDED_HEADERS}
    headers[WORKER_TOKEN_HEADER] = token
    upstream = await _client.request(
        request.method,
        f"{endpoint_url}/api/v1/{path}",
        params=request.query_params,
        content=await request.body(),
        headers=headers,
    )
    return Response(upstream.content, upstream.status_code, media_type=upstream.headers.get("content-type"))


GATEWAY_PATH = "/training/v1/rlorTrainerJobs/{account}/{job_id}/api/v1/{path:path}"


async def trainer_gateway(
    account: str, job_id: str, path: str, request: Request, caller: CallerDep, control: PlaneDep
) -> Response:
    name = str(names.trainer_job(names.job_name(account, job_id)))
    require_account(caller, account, f"trainer job {name}")
    endpoint = control.launcher.endpoint(name)
    if endpoint is None:

        def state() -> str:
            with control.db.session() as session:
                job = session.get(TrainerJob, name)
                return f"{job.state}: {job.status_message}" if job else "not found"

        raise Unavailable(f"trainer job {name} has no running worker ({await run_in_threadpool(state)})")
    return await forward(endpoint.url, endpoint.token, path, request)


router.add_api_route(GATEWAY_PATH, trainer_gateway, methods=["GET"], operation_id="trainer_gateway_get")
router.add_api_route(GATEWAY_PATH, trainer_gateway, methods=["POST"], operation_id="trainer_gateway_post")
