"""The control plane's state: everything a request handler needs, built once per server (`ControlPlane.open`).

It owns the database, the catalog, the launcher, the connection pool to workers, the tinker entry's sessions and
the short-lived cache of API keys; none of these lives at module level, so two servers in one process share
nothing.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpcore
from sqlalchemy.orm import Session

from shapeyard.catalog.loader import Catalog, load_catalog, with_local_weights
from shapeyard.catalog.sync import sync_catalog
from shapeyard.control.sessions import TinkerSessions
from shapeyard.control.settings import ServerSettings
from shapeyard.launch.base import Launcher
from shapeyard.launch.local import LocalLauncher
from shapeyard.store import accounts
from shapeyard.store.accounts import Caller
from shapeyard.store.db import Database
from shapeyard.wire.base import CamelModel

log = logging.getLogger("shapeyard.control")
# Known keys are remembered briefly: the trainer gateway sees several requests per training step. A key removed
# from the database directly stops working within this time.
KEY_CACHE_SECONDS = 10.0


class BootstrapKeys(CamelModel):
    account: str
    api_key: str
    tinker_api_key: str


class KeyCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._known: dict[str, tuple[Caller, float]] = {}

    def get(self, key: str) -> Caller | None:
        known = self._known.get(key)
        return known[0] if known is not None and known[1] > self.clock() else None

    def put(self, key: str, caller: Caller) -> None:
        now = self.clock()
        if len(self._known) > 10_000:  # a flood of distinct keys never grows it without bound
            self._known = {k: v for k, v in self._known.items() if v[1] > now}
        self._known[key] = (caller, now + KEY_CACHE_SECONDS)


@dataclass
class ControlPlane:
    settings: ServerSettings
    db: Database
    catalog: Catalog
    bootstrap: BootstrapKeys
    launcher: Launcher
    worker_http: httpcore.AsyncConnectionPool | None = None  # set while the app runs (see `control.app`)
    # held while a job's worker is started, stopped or its state changes, so that a DELETE never races the
    # supervisor into restarting a worker (or overwriting DELETED) from a stale read
    lifecycle: threading.Lock = field(default_factory=threading.Lock)
    keys: KeyCache = field(default_factory=KeyCache)
    tinker: TinkerSessions = field(default_factory=TinkerSessions)
    completion_turns: itertools.count = field(default_factory=itertools.count)  # round-robin over replicas

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
        launcher = LocalLauncher(settings.cpu_worker_slots, settings.worker_threads, warm=settings.warm_workers)
        return cls(settings, db, catalog, keys, launcher)

    def close(self) -> None:
        self.launcher.close()
        self.db.dispose()


def _bootstrap_keys(session: Session, settings: ServerSettings) -> BootstrapKeys:
    """Keys from the environment when set; otherwise the ones generated on first start, kept in the data dir
    (readable by the owner only) so that a restart prints the same keys."""
    accounts.ensure_account(session, settings.account)
    saved_path = settings.files.bootstrap_keys
    saved = BootstrapKeys.model_validate_json(saved_path.read_text()) if saved_path.exists() else None
    api_key = settings.api_key or (saved and saved.api_key) or accounts.generate_key()
    tinker_key = settings.tinker_api_key or (saved and saved.tinker_api_key) or accounts.generate_key(tinker=True)
    for key in (api_key, tinker_key):
        accounts.add_key(session, settings.account, key, admin=True)
    keys = BootstrapKeys(account=settings.account, api_key=api_key, tinker_api_key=tinker_key)
    if saved is None:
        saved_path.touch(mode=0o600)
        saved_path.write_text(keys.model_dump_json(by_alias=True, indent=2))
    return keys
