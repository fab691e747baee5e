"""The `shapeyard` command: run a server, browse and validate shapes, manage jobs, deployments and accounts.

Commands other than `serve`, `admin` and `demo` talk to a running server over HTTP (`--base-url`, `--api-key`, or
the environment variables SHAPEYARD_BASE_URL and SHAPEYARD_API_KEY). `admin` works on the database directly, as
the operator of the machine. One module per command group.
"""

from __future__ import annotations

from typing import Annotated

import typer

from shapeyard.cli import admin, cookbook, deployments, jobs, shapes
from shapeyard.cli.common import Remote
from shapeyard.cli.serve import serve

app = typer.Typer(help="shapeyard: open, self-hosted post-training on versioned training shapes.", no_args_is_help=True)
app.command()(serve)
app.add_typer(shapes.app, name="shapes")
app.add_typer(jobs.app, name="jobs")
app.add_typer(deployments.app, name="deployments")
app.add_typer(admin.app, name="admin")
app.add_typer(cookbook.app, name="cookbook")


@app.callback()
def main(
    base_url: Annotated[str, typer.Option(envvar="SHAPEYARD_BASE_URL", help="Server URL.")] = Remote.base_url,
    api_key: Annotated[str, typer.Option(envvar="SHAPEYARD_API_KEY", help="Your API key.")] = "",
) -> None:
    Remote.base_url, Remote.api_key = base_url, api_key


@app.command()
def demo() -> None:
    """Full-parameter SFT of the embedded tiny model on two-digit addition, on an in-process server (`make demo`)."""
    from shapeyard.cli import demo as run_demo

    run_demo.main()
