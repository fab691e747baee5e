"""The trainer gateway: `/training/v1/rlorTrainerJobs/{account}/{job}/api/v1/*` reaches the job's worker.

The caller's key must belong to the job's account. The gateway adds the worker's token, forwards the request as
is and returns the worker's answer as is; while the job has no running worker it answers 503 with the job's
state (the SDK's readiness probe waits on exactly that).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from shapeyard.control.auth import require_account
from shapeyard.control.deps import CallerDep, PlaneDep
from shapeyard.control.gateways.workers import call_worker
from shapeyard.store.tables import TrainerJob
from shapeyard.wire import names, routes
from shapeyard.wire.errors import Unavailable

router = APIRouter(tags=["trainer gateway"])
_FORWARDED_HEADERS = ("content-type", "accept", "x-idempotency-key", "x-stainless-package-version")
GATEWAY_ROUTE = routes.TRAINER_GATEWAY + routes.TRAINER_API + "/{path:path}"


async def trainer_gateway(
    account: str, job_id: str, path: str, request: Request, caller: CallerDep, control: PlaneDep
) -> Response:
    name = str(names.trainer_job(names.job_name(account, job_id)))
    require_account(caller, account, f"trainer job {name}")
    listener = control.launcher.listener(name)
    if listener is None:

        def state() -> str:
            with control.db.session() as session:
                job = session.get(TrainerJob, name)
                return f"{job.state}: {job.status_message}" if job else "not found"

        raise Unavailable(f"trainer job {name} has no running worker ({await run_in_threadpool(state)})")
    headers = {key: value for key, value in request.headers.items() if key.lower() in _FORWARDED_HEADERS}
    target = f"{routes.TRAINER_API}/{path}" + (f"?{request.url.query}" if request.url.query else "")
    status, content_type, content = await call_worker(
        control.worker_http, listener, request.method, target, await request.body(), headers
    )
    return Response(content, status, media_type=content_type)


router.add_api_route(GATEWAY_ROUTE, trainer_gateway, methods=["GET"], operation_id="trainer_gateway_get")
router.add_api_route(GATEWAY_ROUTE, trainer_gateway, methods=["POST"], operation_id="trainer_gateway_post")
