"""`shapeyard jobs`: the trainer jobs of your account."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from shapeyard.cli.common import client, console, print_fields, remote
from shapeyard.wire import names
from shapeyard.wire.control import TrainerJobResource

app = typer.Typer(help="Trainer jobs of your account.", no_args_is_help=True)


def _job_row(job: TrainerJobResource) -> list[str]:
    return [
        names.short(job.name),
        job.state.value.removeprefix("JOB_STATE_"),
        job.training_shape.split(f"/{names.TRAINING_SHAPES}/")[-1] or "(manual)",
        names.short(job.training_config.base_model),
        job.trainer_mode,
        str(job.create_time),
    ]


@app.command("list")
def jobs_list(
    deleted: Annotated[bool, typer.Option("--deleted", help="Include deleted jobs.")] = False,
) -> None:
    with client() as control:
        jobs = remote(lambda: control.list_trainer_jobs(show_deleted=deleted))
    table = Table("job", "state", "shape", "model", "mode", "created")
    for job in jobs:
        table.add_row(*_job_row(job))
    console.print(table)


@app.command("show")
def jobs_show(job_id: str) -> None:
    with client() as control:
        job = remote(lambda: control.get_trainer_job(job_id))
    print_fields(job.name, job.to_json_dict())


@app.command("delete")
def jobs_delete(job_id: str) -> None:
    with client() as control:
        job = remote(lambda: control.delete_trainer_job(job_id))
    console.print(f"{job.name}: {job.state.value}")
