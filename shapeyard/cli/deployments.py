"""`shapeyard deployments`: the deployments of your account, and hot-loading snapshots into them."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from shapeyard.cli.common import client, console, print_fields, remote
from shapeyard.client.sampling import hot_load_and_wait
from shapeyard.wire import names

app = typer.Typer(help="Deployments of your account.", no_args_is_help=True)


@app.command("list")
def deployments_list() -> None:
    with client() as control:
        deployments = remote(control.list_deployments)
    table = Table("deployment", "state", "model", "shape", "replicas", "trainer job")
    for dep in deployments:
        table.add_row(
            names.short(dep.name),
            dep.state.value,
            names.short(dep.base_model),
            (dep.deployment_shape or "(shapeless)").split(f"/{names.DEPLOYMENT_SHAPES}/")[-1],
            f"{dep.min_replica_count}-{dep.max_replica_count}",
            names.short(dep.hot_load_trainer_job),
        )
    console.print(table)


@app.command("show")
def deployments_show(deployment_id: str) -> None:
    with client() as control:
        dep = remote(lambda: control.get_deployment(deployment_id))
    print_fields(dep.name, dep.to_json_dict())


@app.command("hot-load")
def deployments_hot_load(
    deployment_id: str,
    identity: Annotated[str, typer.Argument(help="A sampler snapshot the deployment's trainer job saved.")],
    wait: Annotated[bool, typer.Option(help="Wait until every replica serves it.")] = True,
) -> None:
    """Load a trainer's sampler snapshot on every replica; the old weights serve until it is loaded."""
    with client() as control:
        if wait:
            remote(lambda: hot_load_and_wait(control, deployment_id, identity))
        else:
            remote(lambda: control.hot_load(deployment_id, identity))
        status = remote(lambda: control.hot_load_status(deployment_id))
    table = Table("replica", "serving", "ready", "stage", "target")
    for replica in sorted(status.replicas, key=lambda r: r.replica):
        state = replica.loading_state
        table.add_row(
            str(replica.replica),
            replica.current_snapshot_identity or "(base model)",
            "yes" if replica.readiness else "no",
            state.stage if not state.error else f"{state.stage}: {state.error}",
            state.target_snapshot_identity or "",
        )
    console.print(table)
