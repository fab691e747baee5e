"""`shapeyard serve`: the control plane and its workers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.panel import Panel

from shapeyard.cli.common import DatabaseUrl, DataDir, console
from shapeyard.control.settings import DEFAULT_ACCOUNT, DEFAULT_PORT, ServerSettings


def _model_dirs(items: list[str]) -> dict[str, str]:
    pairs = [item.partition("=") for item in items]
    for item, (name, equals, path) in zip(items, pairs, strict=True):
        if not (name and equals and path):
            console.print(f"[red]--model-dir {item!r}[/red]: expected MODEL=DIR, e.g. qwen3-0p6b=/models/Qwen3-0.6B")
            raise typer.Exit(2)
    return {name: path for name, _, path in pairs}


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = DEFAULT_PORT,
    data_dir: DataDir = Path("data"),
    database_url: DatabaseUrl = None,
    account: Annotated[str, typer.Option(help="Bootstrap account (admin of this server).")] = DEFAULT_ACCOUNT,
    cpu_worker_slots: Annotated[
        int | None, typer.Option(help="CPU workers that may run at once (default: one per core).")
    ] = None,
    worker_threads: Annotated[int, typer.Option(help="torch threads per CPU worker.")] = 1,
    warm_workers: Annotated[
        int, typer.Option(help="trainer workers kept started ahead for one-rank CPU jobs (about 0.4 GiB each).")
    ] = 1,
    model_dir: Annotated[
        list[str] | None,
        typer.Option(help="MODEL=DIR: load this catalog model's weights from a local HF directory (repeatable)."),
    ] = None,
) -> None:
    """Run the control plane and its workers. The bootstrap account's keys come from SHAPEYARD_API_KEY and
    SHAPEYARD_TINKER_API_KEY, or are generated on first start and printed."""
    import uvicorn

    from shapeyard.control.app import create_app
    from shapeyard.control.state import ControlPlane

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = ServerSettings(
        data_dir=data_dir,
        database_url=database_url,
        host=host,
        port=port,
        account=account,
        worker_threads=worker_threads,
        warm_workers=warm_workers,
        model_dirs=_model_dirs(model_dir or []),
    )
    if cpu_worker_slots is not None:
        settings.cpu_worker_slots = cpu_worker_slots
    try:
        control = ControlPlane.open(settings)
    except ValueError as exc:  # a --model-dir naming no catalog model
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    keys = control.bootstrap
    console.print(
        Panel.fit(
            f"account      [bold]{keys.account}[/bold]\n"
            f"API key      [bold]{keys.api_key}[/bold]\n"
            f"tinker key   [bold]{keys.tinker_api_key}[/bold]\n"
            f"base URL     {settings.base_url}\n"
            f"data dir     {settings.data_dir}",
            title="shapeyard server",
        )
    )
    try:
        uvicorn.run(create_app(control), host=host, port=port, log_level="warning")
    finally:
        control.close()
