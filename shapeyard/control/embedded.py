"""An in-process shapeyard server (uvicorn on a background thread), for the demo, recipes and tests."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from shapeyard.control.app import create_app
from shapeyard.control.settings import ServerSettings
from shapeyard.control.state import BootstrapKeys, ControlPlane
from shapeyard.launch.local import free_port


class EmbeddedServer:
    """`with EmbeddedServer(settings) as server:` serves on settings.host (a free port when settings.port is 0)."""

    def __init__(self, settings: ServerSettings) -> None:
        if not settings.port:
            settings.port = free_port()
        self.settings = settings
        self.control = ControlPlane.open(settings)
        self.app = create_app(self.control)
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host=settings.host, port=settings.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, name="shapeyard-server", daemon=True)

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    @property
    def keys(self) -> BootstrapKeys:
        return self.control.bootstrap

    def __enter__(self) -> EmbeddedServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.control.close()
                raise RuntimeError(f"shapeyard server did not start on {self.base_url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: Any) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=60)
        self.control.close()
