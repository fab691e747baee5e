"""The control-plane FastAPI application: accounts, shapes, trainer jobs, deployments."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpcore
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from shapeyard.catalog.loader import Catalog, load_catalog, with_local_weights
from shapeyard.catalog.sync import sync_catalog
from shapeyard.config import ServerSettings
from shapeyard.errors import ShapeyardError, validation_message
from shapeyard.launch.base import Launcher
from shapeyard.launch.local import LocalLauncher
from shapeyard.store import accounts
from shapeyard.store.db import Database
from shapeyard.wire.base import CamelModel

log = logging.getLogger("shapeyard.control")

_HTTP_STATUS_NAMES = {
    400: ("INVALID_ARGUMENT", 3),
    401: ("UNAUTHENTICATED", 16),
    403: ("PERMISSION_DENIED", 7),
    404: ("NOT_FOUND", 5),
    405: ("UNIMPLEMENTED", 12),
    409: ("ALREADY_EXISTS", 6),
}


class BootstrapKeys(CamelModel):
    account: str
    api_key: str
    tinker_api_key: str


@dataclass
class ControlPlane:
    """Everything a request handler needs; built once per server."""

    settings: ServerSettings
    db: Database
    catalog: Catalog
    bootstrap: BootstrapKeys
    launcher: Launcher
    worker_http: httpcore.AsyncConnectionPool | None = None  # set while the app runs (see create_app)
    # held while a job's worker is started, stopped or its state changes, so that a DELETE never races the
    # supervisor into restarting a worker (or overwriting DELETED) from a stale read
    lifecycle: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: ServerSettings) -> ControlPlane:
        """Migrate the database, load the catalog, make sure the bootstrap account has its keys."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.db_url)
        db.upgrade()
        catalog = with_local_weights(load_catalog(), settings.model_dirs)
        with db.session() as session:
            added = sync_catalog(session, catalog)
            keys = _bootstrap_keys(session, settings)
        if added:
            log.info("catalog: added %d shape versions", len(added))
        launcher = LocalLauncher(settings.cpu_worker_slots, settings.worker_threads)
        return cls(settings, db, catalog, keys, launcher)

    def close(self) -> None:
        self.launcher.close()
        self.db.dispose()


def _bootstrap_keys(session, settings: ServerSettings) -> BootstrapKeys:
    """Keys from the environment when set; otherwise the ones generated on first start, kept in the data dir
    (readable by the owner only) so that a restart prints the same keys."""
    accounts.ensure_account(session, settings.account)
    saved_path: Path = settings.data_dir / "bootstrap-keys.json"
    saved = json.loads(saved_path.read_text()) if saved_path.exists() else {}
    api_key = settings.api_key or saved.get("apiKey") or accounts.generate_key()
    tinker_key = settings.tinker_api_key or saved.get("tinkerApiKey") or accounts.generate_key(tinker=True)
    for key in (api_key, tinker_key):
        accounts.add_key(session, settings.account, key, admin=True)
    keys = BootstrapKeys(account=settings.account, api_key=api_key, tinker_api_key=tinker_key)
    if not saved_path.exists():
        saved_path.touch(mode=0o600)
        saved_path.write_text(json.dumps(keys.to_json_dict(), indent=2))
    return keys


def _error(status_code: int, status: str, grpc_code: int, message: str) -> JSONResponse:
    body = {"error": {"code": grpc_code, "message": message, "status": status}}
    return JSONResponse(body, status_code=status_code)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ShapeyardError)
    async def _shapeyard(_: Request, exc: ShapeyardError) -> JSONResponse:
        return _error(exc.http_status, exc.status, exc.grpc_code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, "INVALID_ARGUMENT", 3, validation_message(exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        status, code = _HTTP_STATUS_NAMES.get(exc.status_code, ("UNKNOWN", 2))
        return _error(exc.status_code, status, code, str(exc.detail))


def create_app(control: ControlPlane) -> FastAPI:
    from shapeyard.control import accounts as accounts_api
    from shapeyard.control import deployments, gateway, inference, jobs, serverless, shapes  # they import ControlPlane
    from shapeyard.control.supervisor import Supervisor

    supervisor = Supervisor(control)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        control.worker_http = gateway.worker_client()
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
    for module in (accounts_api, shapes, jobs, deployments, gateway, inference, serverless):
        app.include_router(module.router)

    @app.get("/healthz", tags=["server"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
