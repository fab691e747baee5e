"""Shared fixtures: real shapeyard servers (uvicorn on loopback) over SQLite or PostgreSQL. What the tests share
besides fixtures is in tests/helpers.py."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.helpers import RunningServer, run_server, unique

POSTGRES_URL = os.environ.get("SHAPEYARD_TEST_POSTGRES_URL")


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


@pytest.fixture(scope="module")
def training_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server that runs real trainer workers (two CPU slots), shared by one test module."""
    with run_server(tmp_path_factory.mktemp("training"), cpu_slots=2) as running:
        yield running


@pytest.fixture
def training_http(training_server: RunningServer) -> Iterator[httpx.Client]:
    with training_server.http() as client:
        yield client
