"""`shapeyard cookbook`: the training recipes, run from a config file, and their bundled tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError

from shapeyard.cli.common import Remote, console, remote
from shapeyard.cookbook.config import ServerSection, load_config

app = typer.Typer(help="Training recipes and their bundled tasks.", no_args_is_help=True)
RecipeConfig = Annotated[Path, typer.Option("--config", help="Recipe config (YAML or JSON).")]


def _run_recipe(path: Path, recipe: Any, model: type[BaseModel]) -> Any:
    """The recipe run on its config; without a `server` section it runs against this command's server and key."""
    try:
        settings = load_config(path, model)
    except (OSError, ValidationError) as exc:
        console.print(f"[red]{path}[/red]: {exc}")
        raise typer.Exit(2) from None
    if "server" not in settings.model_fields_set:
        settings.server = ServerSection(base_url=Remote.base_url, api_key=Remote.api_key)
    return remote(lambda: recipe.run(settings))


def _scores(evaluations: list[dict[str, float]], key: str, label: str) -> str:
    return f"; {label} " + " -> ".join(f"{e[key]:.1%}" for e in evaluations) if evaluations else ""


@app.command("sft")
def cookbook_sft(config: RecipeConfig) -> None:
    """Supervised fine-tuning on chat JSONL (see shapeyard/cookbook/sft.py for the config)."""
    from shapeyard.cookbook import sft

    result = _run_recipe(config, sft, sft.SFTConfig)
    console.print(
        f"job {result.job_id}: {result.steps} steps, loss {result.first_loss:.4f} -> {result.final_loss:.4f}; "
        f"checkpoint {result.checkpoint}, sampler snapshot {result.sampler_path}"
    )


@app.command("dpo")
def cookbook_dpo(config: RecipeConfig) -> None:
    """Preference training on (prompt, chosen, rejected) JSONL (see shapeyard/cookbook/dpo.py)."""
    from shapeyard.cookbook import dpo

    result = _run_recipe(config, dpo, dpo.DPOConfig)
    console.print(
        f"job {result.job_id}: {result.steps} steps, loss {result.first_loss:.4f} -> {result.final_loss:.4f}"
        f"{_scores(result.evaluations, 'preference_accuracy', 'held-out preference accuracy')}; "
        f"checkpoint {result.checkpoint}"
    )


@app.command("rl")
def cookbook_rl(config: RecipeConfig) -> None:
    """GRPO-style RL with a verifiable reward, sampling from a deployment (see shapeyard/cookbook/rl.py)."""
    from shapeyard.cookbook import rl

    result = _run_recipe(config, rl, rl.RLConfig)
    console.print(
        f"job {result.job_id}: {result.steps} steps, mean reward {result.rewards[0]:.3f} -> {result.rewards[-1]:.3f}"
        f"{_scores(result.evaluations, 'accuracy', 'held-out accuracy')}; checkpoint {result.checkpoint}"
    )


@app.command("task")
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
