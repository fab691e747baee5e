"""The worker side of the local launcher: what every launched worker process does at start."""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent() -> None:
    """Workers are children of the server: when it is gone, so are they (no orphans holding memory and ports)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
