"""The server's FastAPI application: the control-plane API, the gateways to the workers, and the supervisor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from shapeyard.control.api import accounts, deployments, jobs, shapes
from shapeyard.control.gateways import inference, tinker, trainer
from shapeyard.control.gateways.workers import worker_pool
from shapeyard.control.lifecycle.supervisor import Supervisor
from shapeyard.control.state import ControlPlane
from shapeyard.runtime.http import install_error_handlers
from shapeyard.wire import routes

ROUTERS = (
    accounts.router,
    shapes.router,
    jobs.router,
    deployments.router,
    trainer.router,
    inference.router,
    tinker.router,
)


def create_app(control: ControlPlane) -> FastAPI:
    supervisor = Supervisor(control)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        control.worker_http = worker_pool()
        supervisor.start()
        yield
        supervisor.stop()
        await control.worker_http.aclose()

    app = FastAPI(
        title="shapeyard",
        version="0.1.0",
        description="Control plane: accounts, training shapes, trainer jobs and deployments.",
        lifespan=lifespan,
    )
    app.state.control = control
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)

    @app.get(routes.HEALTH, tags=["server"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
