"""Server settings: one data dir per server holds the database, checkpoints, snapshots and worker logs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from shapeyard.store.db import sqlite_url
from shapeyard.store.layout import DataDir

DEFAULT_PORT = 8000
DEFAULT_ACCOUNT = "local"


@dataclass
class ServerSettings:
    data_dir: Path
    database_url: str | None = None  # default: SQLite file in the data dir
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    account: str = DEFAULT_ACCOUNT  # the bootstrap account, admin of this server
    # CPU trainer workers that may run at once (each on one torch thread unless worker_threads says otherwise).
    cpu_worker_slots: int = field(default_factory=lambda: max(os.cpu_count() or 1, 1))
    worker_threads: int = 1
    # trainer workers started ahead, their modules imported, each waiting to take the next one-rank CPU job
    warm_workers: int = 0
    # model name (short or full) -> a local HF directory its workers load instead of the catalog's weights source
    model_dirs: dict[str, str] = field(default_factory=dict)
    api_key: str | None = field(default_factory=lambda: os.environ.get("SHAPEYARD_API_KEY"))
    tinker_api_key: str | None = field(default_factory=lambda: os.environ.get("SHAPEYARD_TINKER_API_KEY"))

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()

    @property
    def files(self) -> DataDir:
        return DataDir(self.data_dir)

    @property
    def db_url(self) -> str:
        return self.database_url or os.environ.get("SHAPEYARD_DATABASE_URL") or sqlite_url(self.files.database)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"
