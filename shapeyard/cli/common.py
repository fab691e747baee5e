"""What the command groups share: the server the remote commands talk to, the console, and error reporting."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.table import Table

from shapeyard.client import ApiError, ControlClient
from shapeyard.client.managed import JobFailedError
from shapeyard.client.sampling import HotLoadError
from shapeyard.control.settings import DEFAULT_PORT

T = TypeVar("T")
console = Console()
DataDir = Annotated[Path, typer.Option("--data-dir", help="Database, checkpoints, snapshots and logs.")]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", envvar="SHAPEYARD_DATABASE_URL", help="SQLAlchemy URL; default SQLite"),
]


class Remote:
    """Connection options of the remote commands (set by the `shapeyard` callback)."""

    base_url: str = f"http://127.0.0.1:{DEFAULT_PORT}"
    api_key: str = ""


def client() -> ControlClient:
    if not Remote.api_key:
        console.print("[red]No API key: pass --api-key or set SHAPEYARD_API_KEY.[/red]")
        raise typer.Exit(2)
    return ControlClient(Remote.base_url, Remote.api_key)


def remote(action: Callable[[], T]) -> T:
    """Run a remote action; print the server's message instead of a traceback."""
    try:
        return action()
    except ApiError as exc:
        console.print(f"[red]{exc.status or exc.http_status or 'failed'}[/red]: {exc.message}")
        raise typer.Exit(1) from None
    except httpx.TransportError as exc:
        console.print(f"[red]cannot reach {Remote.base_url}[/red]: {exc}")
        raise typer.Exit(1) from None
    except (JobFailedError, HotLoadError) as exc:
        console.print(f"[red]failed[/red]: {exc}")
        raise typer.Exit(1) from None


def print_fields(title: str, fields: dict[str, Any]) -> None:
    table = Table("field", "value", title=title)
    for key, value in fields.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    console.print(table)
