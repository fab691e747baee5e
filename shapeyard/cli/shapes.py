"""`shapeyard shapes`: browse and validate training shapes."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from shapeyard.cli.common import client, console, print_fields, remote
from shapeyard.wire import names
from shapeyard.wire.control import TrainingShapeVersionResource

app = typer.Typer(help="Browse and validate training shapes.", no_args_is_help=True)
MODES = {"policy": "POLICY_TRAINER", "lora": "LORA_TRAINER", "forward-only": "FORWARD_ONLY"}


def _public_short(name: str, collection: str) -> str:
    return name.removeprefix(names.resource_name(names.PUBLIC_ACCOUNT, collection, ""))


def _shape_row(version: TrainingShapeVersionResource) -> list[str]:
    snap = version.snapshot
    shape, version_id = names.split_version(version.name)
    nodes = f" x{snap.node_count} nodes" if snap.node_count > 1 else ""
    flags = "latest validated" if version.latest_validated else ("validated" if version.validated else "not validated")
    return [
        _public_short(shape, names.TRAINING_SHAPES),
        _public_short(snap.base_model, names.MODELS),
        snap.trainer_mode,
        f"{snap.accelerator_count} x {snap.accelerator_type}{nodes}",
        f"{snap.max_supported_context_length:,}",
        version_id or "",
        flags,
    ]


@app.command("list")
def shapes_list(
    model: Annotated[str | None, typer.Option(help="Base model, short or full name.")] = None,
    mode: Annotated[str | None, typer.Option(help="policy, lora or forward-only.")] = None,
    accelerator: Annotated[str | None, typer.Option(help="Accelerator type, e.g. NVIDIA_B200_180GB or CPU.")] = None,
    all_versions: Annotated[
        bool, typer.Option("--all-versions", help="Every version, not only the latest validated.")
    ] = False,
) -> None:
    """List training shapes (the latest validated version of each)."""
    terms = [] if all_versions else ["latest_validated=true"]
    if model:
        terms.append(f'snapshot.base_model="{names.public(names.MODELS, model)}"')
    if mode:
        if mode not in MODES and mode not in MODES.values():
            console.print(f"[red]--mode must be one of {', '.join(MODES)}[/red]")
            raise typer.Exit(2)
        terms.append(f"snapshot.trainer_mode={MODES.get(mode, mode)}")
    if accelerator:
        terms.append(f'snapshot.accelerator_type="{accelerator}"')
    with client() as control:
        versions = remote(lambda: control.list_training_shape_versions(filter=" AND ".join(terms)))
    table = Table("shape", "model", "mode", "accelerators", "context", "version", "status")
    for version in sorted(versions, key=lambda v: v.name):
        table.add_row(*_shape_row(version))
    console.print(table)
    console.print(f"{len(versions)} shape version(s)")


def _report_table(version: TrainingShapeVersionResource) -> Table | None:
    report = version.validation_report
    if report is None or report.memory_plan is None:
        return None
    plan = report.memory_plan
    table = Table("per device", "GiB", title=f"memory plan: {report.summary}")
    for label, value in [
        ("weights", plan.weights_gib),
        ("gradients", plan.gradients_gib),
        ("optimizer state", plan.optimizer_state_gib),
        ("gathered layers", plan.gathered_layers_gib),
        ("activations", plan.activations_gib),
        ("loss", plan.loss_gib),
        ("runtime overhead", plan.runtime_overhead_gib),
        ("total", plan.total_gib),
        ("usable", plan.usable_memory_gib),
    ]:
        table.add_row(label, f"{value:,.2f}")
    if report.smoke:
        smoke = report.smoke
        table.add_row("smoke peak", f"{smoke.peak_memory_gib:,.2f} ({smoke.step_seconds:.2f} s/step, {smoke.device})")
    return table


@app.command("show")
def shapes_show(shape: Annotated[str, typer.Argument(help="Shape id or full name.")]) -> None:
    """Every field of a shape's latest version, all its versions, its validation report and deployment shape."""
    name = names.public(names.TRAINING_SHAPES, shape)
    with client() as control:
        resource = remote(lambda: control.get_training_shape(name))
        versions = remote(lambda: control.list_training_shape_versions(name))
        latest = resource.latest_version
        deployment_shape = latest.snapshot.deployment_shape_version
        deployment = remote(lambda: control.deployment_shape_versions(names.unversioned(deployment_shape)))
    print_fields(f"{latest.name}", latest.snapshot.to_json_dict())
    table = Table("version", "created", "validated", "latest validated", "public")
    for version in versions:
        table.add_row(
            names.short(version.name),
            str(version.create_time),
            str(version.validated),
            str(version.latest_validated),
            str(version.public),
        )
    console.print(table)
    report = _report_table(latest)
    if report is not None:
        console.print(report)
    linked = next((v for v in deployment.deployment_shape_versions if v.name == deployment_shape), None)
    if linked is not None:
        print_fields(f"linked deployment shape {linked.name}", linked.snapshot.to_json_dict())


@app.command("validate")
def shapes_validate(
    shape: Annotated[str, typer.Argument(help="Shape id or full name, optionally /versions/<v>.")],
) -> None:
    """Re-run validation of a version (admin key): the memory plan, plus a real smoke step where the hardware is."""
    with client() as control:
        version = remote(lambda: control.validate_training_shape(names.public(names.TRAINING_SHAPES, shape)))
    console.print(f"{version.name}: {'[green]validated[/green]' if version.validated else '[red]not validated[/red]'}")
    report = _report_table(version)
    if report is not None:
        console.print(report)
    elif version.validation_report:
        console.print(version.validation_report.summary)
    if not version.validated:
        raise typer.Exit(1)
