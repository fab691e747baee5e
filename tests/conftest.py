"""Shared fixtures: real shapeyard servers (uvicorn on loopback) over SQLite or PostgreSQL."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine, text

from shapeyard.config import ServerSettings
from shapeyard.control.app import ControlPlane
from shapeyard.server import EmbeddedServer
from shapeyard.store import accounts

POSTGRES_URL = os.environ.get("SHAPEYARD_TEST_POSTGRES_URL")
API_KEY = "fw_test_bootstrap_key"
TINKER_KEY = "tml-test-bootstrap-key"


@dataclass
class RunningServer:
    control: ControlPlane
    app: FastAPI
    base_url: str
    api_key: str = API_KEY
    tinker_key: str = TINKER_KEY

    def http(self, api_key: str | None = None) -> httpx.Client:
        key = self.api_key if api_key is None else api_key
        headers = {"X-Api-Key": key} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)

    def add_account(self, name: str, *, admin: bool = False) -> str:
        """A second tenant: returns its (non-admin unless asked) API key."""
        with self.control.db.session() as session:
            accounts.ensure_account(session, name)
            return accounts.add_key(session, name, admin=admin)

    @property
    def account(self) -> str:
        return self.control.settings.account


@contextmanager
def run_server(
    data_dir: Path, database_url: str | None = None, cpu_slots: int = 0, model_dirs: dict[str, str] | None = None
) -> Iterator[RunningServer]:
    """cpu_slots=0 runs the control plane alone: jobs wait in PENDING and no worker starts."""
    settings = ServerSettings(
        data_dir=data_dir,
        database_url=database_url,
        port=0,
        api_key=API_KEY,
        tinker_api_key=TINKER_KEY,
        cpu_worker_slots=cpu_slots,
        model_dirs=model_dirs or {},
    )
    with EmbeddedServer(settings) as server:
        yield RunningServer(server.control, server.app, server.base_url)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for tests that only add their own uniquely named resources."""
    with run_server(tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with server.http() as client:
        yield client


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind. PostgreSQL cases need SHAPEYARD_TEST_POSTGRES_URL (.ci/run sets it)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shapeyard.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("no PostgreSQL server: set SHAPEYARD_TEST_POSTGRES_URL (.ci/run starts one)")
    name = f"shapeyard_test_{secrets.token_hex(4)}"
    admin = create_engine(
        POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@dataclass
class Tenant:
    account: str
    key: str
    http: httpx.Client


@pytest.fixture
def tenant(server: RunningServer) -> Iterator[Tenant]:
    """A fresh, non-admin account of its own on the shared server."""
    account = unique("tenant")
    key = server.add_account(account)
    with server.http(key) as http:
        yield Tenant(account, key, http)


def same_record(after: dict, before: dict) -> bool:
    """Equal but for what the supervisor may move meanwhile (servers without workers put jobs in PENDING, and
    deployments report their replicas waiting)."""
    moving = ("state", "statusMessage", "updateTime", "replicas")
    return {k: v for k, v in after.items() if k not in moving} == {k: v for k, v in before.items() if k not in moving}


@pytest.fixture(scope="module")
def training_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server that runs real trainer workers (two CPU slots), shared by one test module."""
    with run_server(tmp_path_factory.mktemp("training"), cpu_slots=2) as running:
        yield running


def tiny_datum(tokens: list[int], weights: list[float] | None = None) -> dict:
    """A trainer-protocol Datum as JSON: inputs drop the last token, targets the first."""
    inputs = {"target_tokens": {"data": tokens[1:], "dtype": "int64"}}
    if weights is not None:
        inputs["weights"] = {"data": weights[1:], "dtype": "float32"}
    return {"model_input": {"chunks": [{"tokens": tokens[:-1], "type": "encoded_text"}]}, "loss_fn_inputs": inputs}


@pytest.fixture
def training_http(training_server: RunningServer) -> Iterator[httpx.Client]:
    with training_server.http() as client:
        yield client
