"""The `shapeyard` command: run a server, browse and validate shapes, manage jobs, deployments and accounts.

Commands other than `serve` and `admin` talk to a running server over HTTP (`--base-url`, `--api-key`, or the
environment variables SHAPEYARD_BASE_URL and SHAPEYARD_API_KEY). `admin` works on the database directly, as
the operator of the machine.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from shapeyard.catalog.loader import PUBLIC_ACCOUNT, training_shape_name
from shapeyard.client.control import ApiError, ControlClient
from shapeyard.client.futures import RequestFailedError
from shapeyard.client.managed import JobFailedError
from shapeyard.client.sampling import HotLoadError, hot_load_and_wait
from shapeyard.config import DEFAULT_ACCOUNT, DEFAULT_PORT, ServerSettings
from shapeyard.wire.control import TrainerJobResource, TrainingShapeVersionResource

app = typer.Typer(help="shapeyard: open, self-hosted post-training on versioned training shapes.", no_args_is_help=True)
shapes_app = typer.Typer(help="Browse and validate training shapes.", no_args_is_help=True)
jobs_app = typer.Typer(help="Trainer jobs of your account.", no_args_is_help=True)
deployments_app = typer.Typer(help="Deployments of your account.", no_args_is_help=True)
admin_app = typer.Typer(help="Accounts and keys, straight in the database (operator only).", no_args_is_help=True)
cookbook_app = typer.Typer(help="Training recipes and their bundled tasks.", no_args_is_help=True)
app.add_typer(shapes_app, name="shapes")
app.add_typer(jobs_app, name="jobs")
app.add_typer(deployments_app, name="deployments")
app.add_typer(admin_app, name="admin")
app.add_typer(cookbook_app, name="cookbook")

console = Console()
DataDir = Annotated[Path, typer.Option("--data-dir", help="Database, checkpoints, snapshots and logs.")]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", envvar="SHAPEYARD_DATABASE_URL", help="SQLAlchemy URL; default SQLite"),
]
MODES = {"policy": "POLICY_TRAINER", "lora": "LORA_TRAINER", "forward-only": "FORWARD_ONLY"}


class Remote:
    """Connection options shared by the remote commands."""

    base_url: str = f"http://127.0.0.1:{DEFAULT_PORT}"
    api_key: str = ""


@app.callback()
def main(
    base_url: Annotated[str, typer.Option(envvar="SHAPEYARD_BASE_URL", help="Server URL.")] = Remote.base_url,
    api_key: Annotated[str, typer.Option(envvar="SHAPEYARD_API_KEY", help="Your API key.")] = "",
) -> None:
    Remote.base_url, Remote.api_key = base_url, api_key


def _client() -> ControlClient:
    if not Remote.api_key:
        console.print("[red]No API key: pass --api-key or set SHAPEYARD_API_KEY.[/red]")
        raise typer.Exit(2)
    return ControlClient(Remote.base_url, Remote.api_key)


def _run(action: Any) -> Any:
    """Run a remote action; print the server's message instead of a traceback."""
    try:
        return action()
    except ApiError as exc:
        console.print(f"[red]{exc.status or exc.http_status}[/red]: {exc.message}")
        raise typer.Exit(1) from None
    except httpx.TransportError as exc:
        console.print(f"[red]cannot reach {Remote.base_url}[/red]: {exc}")
        raise typer.Exit(1) from None
    except (RequestFailedError, JobFailedError, HotLoadError) as exc:
        console.print(f"[red]failed[/red]: {exc}")
        raise typer.Exit(1) from None


# --- serve -----------------------------------------------------------------------------------------------


def _model_dirs(items: list[str]) -> dict[str, str]:
    pairs = [item.partition("=") for item in items]
    for item, (name, equals, path) in zip(items, pairs, strict=True):
        if not (name and equals and path):
            console.print(f"[red]--model-dir {item!r}[/red]: expected MODEL=DIR, e.g. qwen3-0p6b=/models/Qwen3-0.6B")
            raise typer.Exit(2)
    return {name: path for name, _, path in pairs}


@app.command()
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
    model_dir: Annotated[
        list[str] | None,
        typer.Option(help="MODEL=DIR: load this catalog model's weights from a local HF directory (repeatable)."),
    ] = None,
) -> None:
    """Run the control plane and its workers. The bootstrap account's keys come from SHAPEYARD_API_KEY and
    SHAPEYARD_TINKER_API_KEY, or are generated on first start and printed."""
    import uvicorn

    from shapeyard.control.app import ControlPlane, create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = ServerSettings(
        data_dir=data_dir,
        database_url=database_url,
        host=host,
        port=port,
        account=account,
        worker_threads=worker_threads,
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


# --- shapes ----------------------------------------------------------------------------------------------


def _shape_row(version: TrainingShapeVersionResource) -> list[str]:
    snap = version.snapshot
    shape, _, version_id = version.name.partition("/versions/")
    nodes = f" x{snap.node_count} nodes" if snap.node_count > 1 else ""
    flags = "latest validated" if version.latest_validated else ("validated" if version.validated else "not validated")
    return [
        shape.removeprefix(f"accounts/{PUBLIC_ACCOUNT}/trainingShapes/"),
        snap.base_model.removeprefix(f"accounts/{PUBLIC_ACCOUNT}/models/"),
        snap.trainer_mode,
        f"{snap.accelerator_count} x {snap.accelerator_type}{nodes}",
        f"{snap.max_supported_context_length:,}",
        version_id,
        flags,
    ]


@shapes_app.command("list")
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
        full = model if model.startswith("accounts/") else f"accounts/{PUBLIC_ACCOUNT}/models/{model}"
        terms.append(f'snapshot.base_model="{full}"')
    if mode:
        if mode not in MODES and mode not in MODES.values():
            console.print(f"[red]--mode must be one of {', '.join(MODES)}[/red]")
            raise typer.Exit(2)
        terms.append(f"snapshot.trainer_mode={MODES.get(mode, mode)}")
    if accelerator:
        terms.append(f'snapshot.accelerator_type="{accelerator}"')
    with _client() as client:
        versions = _run(lambda: client.list_training_shape_versions(filter=" AND ".join(terms)))
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


def _print_fields(title: str, fields: dict[str, Any]) -> None:
    table = Table("field", "value", title=title)
    for key, value in fields.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    console.print(table)


@shapes_app.command("show")
def shapes_show(shape: Annotated[str, typer.Argument(help="Shape id or full name.")]) -> None:
    """Every field of a shape's latest version, all its versions, its validation report and deployment shape."""
    name = training_shape_name(shape)
    with _client() as client:
        resource = _run(lambda: client.get_training_shape(name))
        versions = _run(lambda: client.list_training_shape_versions(name))
        latest = resource.latest_version
        deployment_shape = latest.snapshot.deployment_shape_version
        deployment = _run(lambda: client.deployment_shape_versions(deployment_shape.split("/versions/")[0]))
    _print_fields(f"{latest.name}", latest.snapshot.to_json_dict())
    table = Table("version", "created", "validated", "latest validated", "public")
    for version in versions:
        table.add_row(
            version.name.rsplit("/", 1)[1],
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
        _print_fields(f"linked deployment shape {linked.name}", linked.snapshot.to_json_dict())


@shapes_app.command("validate")
def shapes_validate(
    shape: Annotated[str, typer.Argument(help="Shape id or full name, optionally /versions/<v>.")],
) -> None:
    """Re-run validation of a version (admin key): the memory plan, plus a real smoke step where the hardware is."""
    with _client() as client:
        version = _run(lambda: client.validate_training_shape(training_shape_name(shape)))
    console.print(f"{version.name}: {'[green]validated[/green]' if version.validated else '[red]not validated[/red]'}")
    report = _report_table(version)
    if report is not None:
        console.print(report)
    elif version.validation_report:
        console.print(version.validation_report.summary)
    if not version.validated:
        raise typer.Exit(1)


# --- jobs and deployments --------------------------------------------------------------------------------


def _job_row(job: TrainerJobResource) -> list[str]:
    return [
        job.name.rsplit("/", 1)[1],
        job.state.value.removeprefix("JOB_STATE_"),
        job.training_shape.split("/trainingShapes/")[-1] or "(manual)",
        job.training_config.base_model.rsplit("/", 1)[1],
        job.trainer_mode,
        str(job.create_time),
    ]


@jobs_app.command("list")
def jobs_list(
    deleted: Annotated[bool, typer.Option("--deleted", help="Include deleted jobs.")] = False,
) -> None:
    with _client() as client:
        jobs = _run(lambda: client.list_trainer_jobs(show_deleted=deleted))
    table = Table("job", "state", "shape", "model", "mode", "created")
    for job in jobs:
        table.add_row(*_job_row(job))
    console.print(table)


@jobs_app.command("show")
def jobs_show(job_id: str) -> None:
    with _client() as client:
        job = _run(lambda: client.get_trainer_job(job_id))
    _print_fields(job.name, job.to_json_dict())


@jobs_app.command("delete")
def jobs_delete(job_id: str) -> None:
    with _client() as client:
        job = _run(lambda: client.delete_trainer_job(job_id))
    console.print(f"{job.name}: {job.state.value}")


@deployments_app.command("list")
def deployments_list() -> None:
    with _client() as client:
        deployments = _run(client.list_deployments)
    table = Table("deployment", "state", "model", "shape", "replicas", "trainer job")
    for dep in deployments:
        table.add_row(
            dep.name.rsplit("/", 1)[1],
            dep.state.value,
            dep.base_model.rsplit("/", 1)[1],
            (dep.deployment_shape or "(shapeless)").split("/deploymentShapes/")[-1],
            f"{dep.min_replica_count}-{dep.max_replica_count}",
            dep.hot_load_trainer_job.rsplit("/", 1)[-1],
        )
    console.print(table)


@deployments_app.command("show")
def deployments_show(deployment_id: str) -> None:
    with _client() as client:
        dep = _run(lambda: client.get_deployment(deployment_id))
    _print_fields(dep.name, dep.to_json_dict())


@deployments_app.command("hot-load")
def deployments_hot_load(
    deployment_id: str,
    identity: Annotated[str, typer.Argument(help="A sampler snapshot the deployment's trainer job saved.")],
    wait: Annotated[bool, typer.Option(help="Wait until every replica serves it.")] = True,
) -> None:
    """Load a trainer's sampler snapshot on every replica; the old weights serve until it is loaded."""
    with _client() as client:
        if wait:
            _run(lambda: hot_load_and_wait(client, deployment_id, identity))
        else:
            _run(lambda: client.hot_load(deployment_id, identity))
        status = _run(lambda: client.hot_load_status(deployment_id))
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


# --- cookbook -------------------------------------------------------------------------------------------


RecipeConfig = Annotated[Path, typer.Option("--config", help="Recipe config (YAML or JSON).")]


def _load_recipe(path: Path, model: type) -> Any:
    """The recipe's config; without a `server` section it runs against this command's server and key."""
    from pydantic import ValidationError

    from shapeyard.cookbook.config import ServerSection, load_config

    try:
        settings = load_config(path, model)
    except (OSError, ValidationError) as exc:
        console.print(f"[red]{path}[/red]: {exc}")
        raise typer.Exit(2) from None
    if "server" not in settings.model_fields_set:
        settings.server = ServerSection(base_url=Remote.base_url, api_key=Remote.api_key)
    return settings


def _run_recipe(path: Path, recipe: Any, model: type) -> Any:
    settings = _load_recipe(path, model)
    return _run(lambda: recipe.run(settings))


def _scores(evaluations: list[dict[str, float]], key: str, label: str) -> str:
    return f"; {label} " + " -> ".join(f"{e[key]:.1%}" for e in evaluations) if evaluations else ""


@cookbook_app.command("sft")
def cookbook_sft(config: RecipeConfig) -> None:
    """Supervised fine-tuning on chat JSONL (see shapeyard/cookbook/sft.py for the config)."""
    from shapeyard.cookbook import sft

    result = _run_recipe(config, sft, sft.SFTConfig)
    console.print(
        f"job {result.job_id}: {result.steps} steps, loss {result.first_loss:.4f} -> {result.final_loss:.4f}; "
        f"checkpoint {result.checkpoint}, sampler snapshot {result.sampler_path}"
    )


@cookbook_app.command("dpo")
def cookbook_dpo(config: RecipeConfig) -> None:
    """Preference training on (prompt, chosen, rejected) JSONL (see shapeyard/cookbook/dpo.py)."""
    from shapeyard.cookbook import dpo

    result = _run_recipe(config, dpo, dpo.DPOConfig)
    console.print(
        f"job {result.job_id}: {result.steps} steps, loss {result.first_loss:.4f} -> {result.final_loss:.4f}"
        f"{_scores(result.evaluations, 'preference_accuracy', 'held-out preference accuracy')}; "
        f"checkpoint {result.checkpoint}"
    )


@cookbook_app.command("rl")
def cookbook_rl(config: RecipeConfig) -> None:
    """GRPO-style RL with a verifiable reward, sampling from a deployment (see shapeyard/cookbook/rl.py)."""
    from shapeyard.cookbook import rl

    result = _run_recipe(config, rl, rl.RLConfig)
    console.print(
        f"job {result.job_id}: {result.steps} steps, mean reward {result.rewards[0]:.3f} -> {result.rewards[-1]:.3f}"
        f"{_scores(result.evaluations, 'accuracy', 'held-out accuracy')}; checkpoint {result.checkpoint}"
    )


@cookbook_app.command("task")
def cookbook_task(
    name: Annotated[str, typer.Argument(help="addition, flip, reverse or flip-preferences")],
    out: Annotated[Path, typer.Option("--out", help="Directory for train.jsonl and test.jsonl.")] = Path("data"),
) -> None:
    """Write a bundled synthetic task as JSONL: chat examples, or preference pairs for DPO."""
    from shapeyard.cookbook.data import write_jsonl
    from shapeyard.cookbook.tasks import digits

    tasks = {
        "addition": digits.addition_splits,
        "flip": digits.flip_splits,
        "reverse": digits.reverse_splits,
        "flip-preferences": digits.flip_preference_splits,
    }
    if name not in tasks:
        console.print(f"[red]unknown task {name!r}[/red]; bundled tasks: {', '.join(tasks)}")
        raise typer.Exit(2)
    train, test = tasks[name]()
    console.print(f"{write_jsonl(train, out / 'train.jsonl')}: {len(train)} examples")
    console.print(f"{write_jsonl(test, out / 'test.jsonl')}: {len(test)} examples")


# --- admin -----------------------------------------------------------------------------------------------


def _in_database(data_dir: Path, database_url: str | None, action: Any) -> Any:
    """Run `action(session)` in one transaction on the server's database, migrating it first."""
    from shapeyard.errors import ShapeyardError
    from shapeyard.store.db import Database

    db = Database(ServerSettings(data_dir=data_dir, database_url=database_url).db_url)
    try:
        db.upgrade()
        with db.session() as session:
            return action(session)
    except ShapeyardError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None
    finally:
        db.dispose()


@admin_app.command("create-account")
def admin_create_account(
    name: Annotated[str, typer.Argument(help="Account id: lowercase letters, digits, dashes.")],
    data_dir: DataDir = Path("data"),
    database_url: DatabaseUrl = None,
    tinker: Annotated[bool, typer.Option(help="Also mint a tml- key for the tinker client.")] = True,
) -> None:
    """Create an account and print its first API key(s)."""
    from shapeyard.store import accounts

    def create(session: Any) -> list[str]:
        accounts.create_account(session, name)
        keys = [accounts.add_key(session, name)]
        if tinker:
            keys.append(accounts.add_key(session, name, tinker=True))
        return keys

    keys = _in_database(data_dir, database_url, create)
    console.print(f"account [bold]{name}[/bold]")
    for key in keys:
        console.print(f"  key {key}")


@admin_app.command("create-key")
def admin_create_key(
    account: str,
    data_dir: DataDir = Path("data"),
    database_url: DatabaseUrl = None,
    tinker: Annotated[bool, typer.Option(help="A tml- key, as the tinker client requires.")] = False,
    admin: Annotated[bool, typer.Option(help="May edit the shape catalog and use skipValidations.")] = False,
) -> None:
    """Mint another API key for an account."""
    from shapeyard.store import accounts

    console.print(
        _in_database(data_dir, database_url, lambda s: accounts.add_key(s, account, tinker=tinker, admin=admin))
    )


@admin_app.command("list-accounts")
def admin_list_accounts(data_dir: DataDir = Path("data"), database_url: DatabaseUrl = None) -> None:
    from shapeyard.store import accounts

    def rows(session: Any) -> list[list[str]]:
        result = []
        for account in accounts.list_accounts(session):
            keys = accounts.list_keys(session, account.name)
            labels = ", ".join(f"{k.prefix}...{' (admin)' if k.is_admin else ''}" for k in keys)
            result.append([account.name, labels, str(account.create_time)])
        return result

    table = Table("account", "keys", "created")
    for row in _in_database(data_dir, database_url, rows):
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    app()
