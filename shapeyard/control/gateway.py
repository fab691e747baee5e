"""The trainer gateway: `/training/v1/rlorTrainerJobs/{account}/{job}/api/v1/*` reaches the job's worker.

The caller's key must belong to the job's account. The gateway adds the worker's token, forwards the request as
is and returns the worker's answer as is; while the job has no running worker it answers 503 with the job's
state (the SDK's readiness probe waits on exactly that).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpcore
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from shapeyard.control.auth import require_account
from shapeyard.control.deps import CallerDep, PlaneDep
from shapeyard.errors import NotFound, ShapeyardError, Unavailable
from shapeyard.launch.base import Endpoint
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


def worker_client() -> httpcore.AsyncConnectionPool:
    """One per running app (it belongs to the app's event loop). httpcore rather than httpx: the gateway sits on
    the training hot path, and the thinner client costs about half the CPU per request."""
    return httpcore.AsyncConnectionPool(max_connections=256, max_keepalive_connections=64)


_FORWARDED_HEADERS = ("content-type", "accept", "x-idempotency-key", "x-stainless-package-version")
# retrieve_future long-polls for up to 25 s on the worker; the SDKs wait 45 s.
_TIMEOUTS = {"timeout": {"connect": 5.0, "read": 60.0, "write": 60.0, "pool": 60.0}}


def raise_worker_error(status: int, content: bytes) -> None:
    """A worker's error answer, raised with its own status and message."""
    if status < 400:
        return
    try:
        error = json.loads(content).get("error", {})
    except (ValueError, AttributeError):
        error = {}
    raise WorkerError(status, error.get("status", "UNKNOWN"), error.get("message", content.decode()))


async def call_worker(
    pool: httpcore.AsyncConnectionPool,
    endpoint: Endpoint,
    method: str,
    target: str,
    body: bytes,
    headers: dict[str, str],
) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request to a worker, with the worker's token added."""
    pairs = [(k.encode(), v.encode()) for k, v in headers.items()]
    pairs.append((WORKER_TOKEN_HEADER.encode(), endpoint.token.encode()))
    response = await pool.request(method, f"{endpoint.url}{target}", headers=pairs, content=body, extensions=_TIMEOUTS)
    content_type = next((v.decode() for k, v in response.headers if k.lower() == b"content-type"), "application/json")
    return response.status, content_type, response.content


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
    status, _, content = await call_worker(
        control.worker_http,
        endpoint,
        "POST",
        f"/api/v1/{op}",
        json.dumps(payload).encode(),
        {**(headers or {}), "content-type": "application/json"},
    )
    raise_worker_error(status, content)
    return json.loads(content)


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
    headers = {key: value for key, value in request.headers.items() if key.lower() in _FORWARDED_HEADERS}
    target = f"/api/v1/{path}" + (f"?{request.url.query}" if request.url.query else "")
    status, content_type, content = await call_worker(
        control.worker_http, endpoint, request.method, target, await request.body(), headers
    )
    return Response(content, status, media_type=content_type)


router.add_api_route(GATEWAY_PATH, trainer_gateway, methods=["GET"], operation_id="trainer_gateway_get")
router.add_api_route(GATEWAY_PATH, trainer_gateway, methods=["POST"], operation_id="trainer_gateway_post")
