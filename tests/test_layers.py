"""The package's layers: each subpackage imports only the ones below it, and processes import only what they need.

The import graph is read from the source (every import, at module level or inside a function, except those under
`if TYPE_CHECKING:`); the process rules are checked in fresh interpreters, from `sys.modules` after the process
has done its start-up work.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import shapeyard

# Bottom to top: a subpackage may import those before it in this list, and none after it.
LAYERS = [
    "wire",  # the schema: names, routes, errors, shape types, messages
    "store",  # tables, queries, migrations, the data dir's layout, where weights are
    "shapes",  # memory plan, validation, filters, resolution, shape admin
    "catalog",  # the catalog files and their sync into the database
    "launch",  # launchers, hardware
    "runtime",  # what every worker process sets up
    "models",  # loading, the tiny model, chat rendering, sampling backends
    "trainer",  # the trainer worker
    "serving",  # the deployment worker
    "control",  # the server: state, app, API, gateways, lifecycle
    "client",  # the Python client
    "cookbook",  # recipes
    "cli",  # the command
]
# Rules beyond the order: the server runs no model code; workers do not depend on the control plane; user code that
# only uses the client needs nothing but the schema.
FORBIDDEN = {
    "control": {"models", "trainer", "serving"},
    "trainer": {"shapes", "catalog", "launch", "serving", "control"},
    "serving": {"shapes", "catalog", "launch", "trainer", "control"},
    "client": set(LAYERS) - {"wire", "client"},
}
ROOT = Path(shapeyard.__file__).parent


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return skipped


def imports() -> list[tuple[str, str, str]]:
    """(importing subpackage, imported subpackage, where) for every import of one subpackage by another."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        parts = module.split(".")
        if len(parts) < 3:  # shapeyard/__init__.py
            continue
        tree = ast.parse(path.read_text(), str(path))
        skipped = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
            elif isinstance(node, ast.ImportFrom):
                raise AssertionError(f"{path}:{node.lineno}: relative import; this package uses absolute imports")
            else:
                continue
            for target in targets:
                names = target.split(".")
                if names[0] == "shapeyard" and len(names) > 1 and names[1] != parts[1]:
                    found.append((parts[1], names[1], f"{path.relative_to(ROOT.parent)}:{node.lineno}"))
    return found


def test_every_subpackage_is_in_a_layer():
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    modules = {path.stem for path in ROOT.glob("*.py")} - {"__init__"}
    assert packages == set(LAYERS), "a new subpackage needs a place in LAYERS"
    assert not modules, f"top-level modules belong in a subpackage: {sorted(modules)}"


def test_subpackages_import_only_the_layers_below_them():
    edges = imports()
    assert edges, "the import graph is not empty"
    upward = [
        f"{where}: {source} imports {target}"
        for source, target, where in edges
        if LAYERS.index(target) > LAYERS.index(source)
    ]
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)
    forbidden = [
        f"{where}: {source} imports {target}" for source, target, where in edges if target in FORBIDDEN.get(source, ())
    ]
    assert not forbidden, "forbidden imports:\n" + "\n".join(forbidden)


def loaded_after(script: str) -> list[str]:
    """The modules a fresh interpreter has loaded after running `script`."""
    code = f"{script}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_server_process_imports_no_model_code(tmp_path: Path):
    """A server opened, its app serving requests (a job created and listed, shapes read): no torch,
    transformers, peft or safetensors."""
    modules = loaded_after(f"""
from pathlib import Path
from fastapi.testclient import TestClient
from shapeyard.control.app import create_app
from shapeyard.control.settings import ServerSettings
from shapeyard.control.state import ControlPlane

settings = ServerSettings(data_dir=Path({str(tmp_path)!r}), api_key="fw_layers_test", cpu_worker_slots=0)
control = ControlPlane.open(settings)
with TestClient(create_app(control), headers={{"X-Api-Key": "fw_layers_test"}}) as client:
    shape = "accounts/fireworks/trainingShapes/tiny-qwen3-2k-cpu-lora"
    assert client.get(f"/v1/{{shape}}/versions/latest").status_code == 200
    job = {{"trainingConfig": {{"baseModel": "accounts/fireworks/models/tiny-qwen3", "loraRank": 8}}}}
    created = client.post("/v1/accounts/local/rlorTrainerJobs", params={{"trainingShape": shape}}, json=job)
    assert created.status_code == 200
    assert client.get("/v1/accounts/local/rlorTrainerJobs").status_code == 200
control.close()
""")
    assert "shapeyard.control.app" in modules and "sqlalchemy" in modules  # the script did its work
    model_code = [m for m in modules if m.split(".")[0] in {"torch", "transformers", "peft", "safetensors"}]
    assert not model_code, model_code


def test_worker_processes_import_no_database_or_control_plane_code(tmp_path: Path):
    """A trainer worker's processes and a deployment worker with their models loaded (the tiny model): no
    sqlalchemy, alembic, catalog, shapes or control-plane code."""
    modules = loaded_after(f"""
from pathlib import Path
from shapeyard.models.loading import weights_path
from shapeyard.models.transformers_sampler import TransformersSampler
from shapeyard.serving.worker import HotLoader, create_worker_app
from shapeyard.trainer import worker
from shapeyard.trainer.compute import build_backend, build_service
from shapeyard.trainer.world import World
from shapeyard.wire.shapes import TrainerMode, TrainingRecipe, WeightsSource
from shapeyard.wire.worker import DeploymentWorkerSpec, TrainerWorkerSpec, WorkerLaunch, WorkerProcess

weights = WeightsSource(embedded="tiny-qwen3")
trainer = TrainerWorkerSpec(
    base_model="accounts/fireworks/models/tiny-qwen3", weights=weights, max_context_length=64,
    work_dir=Path({str(tmp_path)!r}) / "job", job_name="accounts/local/rlorTrainerJobs/layers",
    trainer_mode=TrainerMode.LORA_TRAINER, lora_rank=4, max_lora_rank=4, forward_only=False,
    recipe=TrainingRecipe(
        compute_precision="float32", trainable_precision="float32", frozen_precision="float32",
        activation_checkpointing=False, activation_offloading=False, micro_batch_tokens=64, loss_chunk_tokens=4096,
    ),
)
launch = WorkerLaunch[TrainerWorkerSpec](spec=trainer, process=WorkerProcess(device="cpu", threads=1))
service = build_service(trainer, build_backend(launch, World(rank=0, size=1, device="cpu")))
assert service.backend.vocab_size == 128
deployment = DeploymentWorkerSpec(
    base_model=trainer.base_model, weights=weights, max_context_length=64, work_dir=Path({str(tmp_path)!r}) / "dep",
    deployment_name="accounts/local/deployments/layers", replica=0,
)
sampler = TransformersSampler(weights_path(weights), "cpu", 64)
create_worker_app(deployment, "token", sampler, HotLoader(sampler, 0))
""")
    assert "torch" in modules and "shapeyard.trainer.worker" in modules  # the script did its work
    outside = [
        m
        for m in modules
        if m.split(".")[0] in {"sqlalchemy", "alembic"}
        or m.startswith(("shapeyard.catalog", "shapeyard.shapes", "shapeyard.control", "shapeyard.launch"))
        or m in {"shapeyard.store.db", "shapeyard.store.tables", "shapeyard.store.catalog", "shapeyard.store.accounts"}
    ]
    assert not outside, outside
