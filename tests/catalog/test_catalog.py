"""The catalog files: every shape of the product page's table, all validated, loaded idempotently."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from shapeyard.catalog.loader import CATALOG_DIR, load_catalog
from shapeyard.catalog.sync import sync_catalog
from shapeyard.store import catalog as store
from shapeyard.store.db import Database
from shapeyard.store.tables import TrainingShapeVersion

P, L, F = "POLICY_TRAINER", "LORA_TRAINER", "FORWARD_ONLY"
B200, B300, H200 = "NVIDIA_B200_180GB", "NVIDIA_B300_288GB", "NVIDIA_H200_141GB"

# The product page's table, transcribed: (model, mode, context in k, GPUs per node, nodes, accelerator if named).
SEED_TABLE = [
    ("qwen3p5-9b", P, 256, 2, 1, None),
    ("qwen3p5-9b", L, 256, 2, 1, None),
    ("qwen3p5-9b", F, 256, 2, 1, None),
    ("qwen3p5-27b", P, 256, 4, 1, None),
    ("qwen3p5-27b", L, 256, 4, 1, None),
    ("qwen3p5-27b", L, 64, 1, 1, None),
    ("qwen3p5-27b", F, 256, 2, 1, None),
    ("qwen3p5-35b-a3b", P, 256, 8, 1, None),
    ("qwen3p5-35b-a3b", L, 256, 8, 1, None),
    ("qwen3p5-35b-a3b", F, 256, 4, 1, None),
    ("qwen3p5-397b-a17b", P, 256, 8, 2, None),
    ("qwen3p5-397b-a17b", L, 256, 8, 1, B300),
    ("qwen3p5-397b-a17b", F, 256, 8, 1, None),
    ("gemma-4-31b-it", P, 256, 4, 1, None),
    ("gemma-4-31b-it", L, 256, 4, 1, None),
    ("gemma-4-31b-it", F, 256, 4, 1, None),
    ("gemma-4-26b-a4b-it", P, 256, 4, 1, None),
    ("gemma-4-26b-a4b-it", L, 256, 4, 1, None),
    ("gemma-4-26b-a4b-it", F, 256, 4, 1, None),
    ("llama-v3p3-70b-instruct", P, 128, 8, 1, None),
    ("llama-v3p3-70b-instruct", L, 128, 4, 1, B200),
    ("llama-v3p3-70b-instruct", F, 128, 4, 1, None),
    ("kimi-k2p5", P, 256, 8, 4, None),
    ("kimi-k2p5", L, 256, 8, 1, None),
    ("kimi-k2p5", F, 256, 8, 2, None),
    ("kimi-k2p6", P, 256, 8, 4, None),
    ("kimi-k2p6", L, 256, 8, 1, None),
    ("kimi-k2p6", F, 256, 8, 1, None),
    ("qwen3-4b", P, 64, 1, 1, None),
    ("qwen3-4b", L, 32, 1, 1, None),
    ("qwen3-4b", F, 64, 1, 1, None),
    ("qwen3-8b", P, 128, 4, 1, None),
    ("qwen3-8b", L, 256, 8, 1, H200),
    ("qwen3-8b", F, 128, 4, 1, None),
    ("qwen3-vl-8b-instruct", L, 256, 8, 1, H200),
    ("qwen3-32b", P, 64, 8, 1, None),
    ("qwen3-32b", L, 128, 1, 1, None),
    ("qwen3-32b", F, 64, 4, 1, None),
    ("qwen3-30b-a3b-instruct-2507", P, 128, 8, 1, None),
    ("qwen3-30b-a3b-instruct-2507", F, 128, 4, 1, None),
    ("qwen3-235b-a22b-instruct-2507", P, 128, 8, 2, None),
    ("qwen3-235b-a22b-instruct-2507", F, 128, 8, 1, None),
    ("qwen3p6-27b", L, 256, 4, 1, None),
    ("qwen3p6-27b", L, 128, 2, 1, None),
    ("qwen3p6-35b-a3b", L, 256, 4, 1, None),
    ("glm-5p1", L, 100, 8, 1, None),
    ("glm-5p1", L, 200, 8, 1, None),
    ("ministral-3-3b-instruct-2512", P, 16, 1, 1, None),
    ("ministral-3-3b-instruct-2512", L, 16, 1, 1, None),
    ("ministral-3-3b-instruct-2512", F, 16, 1, 1, None),
    ("nemotron-nano-3-30b-a3b", P, 256, 8, 1, None),
    ("nemotron-nano-3-30b-a3b", F, 256, 2, 1, None),
    ("nvidia-nemotron-3-super-120b-a12b-bf16", P, 256, 8, 1, B200),
    ("nvidia-nemotron-3-super-120b-a12b-bf16", L, 128, 4, 1, B200),
    ("nvidia-nemotron-3-super-120b-a12b-bf16", F, 256, 8, 1, B200),
]


def context_k(tokens: int) -> set[int]:
    return {round(tokens / 1000), round(tokens / 1024)}


def test_every_row_of_the_product_table_has_its_own_shape():
    catalog = load_catalog()
    used: set[str] = set()
    for model, mode, ctx, gpus, nodes, accelerator in SEED_TABLE:
        matches = [
            entry.name
            for entry in catalog.training_shapes
            if entry.fields["baseModel"] == f"accounts/fireworks/models/{model}"
            and entry.fields["trainerMode"] == mode
            and ctx in context_k(entry.fields["maxSupportedContextLength"])
            and entry.fields["acceleratorCount"] == gpus
            and entry.fields.get("nodeCount", 1) == nodes
            and (accelerator is None or entry.fields["acceleratorType"] == accelerator)
            and entry.name not in used
        ]
        assert matches, f"no shape for {model} {mode} {ctx}k {gpus} GPUs x {nodes} nodes"
        used.add(matches[0])
    assert "accounts/fireworks/trainingShapes/qwen3p5-9b-256k" in used


def test_every_model_of_the_table_and_the_cpu_models_are_in_the_catalog():
    models = load_catalog().models
    for model, *_ in SEED_TABLE:
        assert f"accounts/fireworks/models/{model}" in models
    tiny = models["accounts/fireworks/models/tiny-qwen3"]
    assert tiny.weights.embedded == "tiny-qwen3" and tiny.model_type == "qwen3"
    assert models["accounts/fireworks/models/qwen3-0p6b"].weights.hf_repo == "Qwen/Qwen3-0.6B"


def test_cpu_shapes_exist_in_all_three_kinds_for_two_models():
    shapes = load_catalog().training_shapes
    for model in ("tiny-qwen3", "qwen3-0p6b"):
        modes = {
            e.fields["trainerMode"]
            for e in shapes
            if e.fields["acceleratorType"] == "CPU" and e.fields["baseModel"].endswith(f"/{model}")
        }
        assert modes == {P, L, F}, model


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'c.db'}")
    database.upgrade()
    return database


def test_every_catalog_shape_is_validated_by_the_memory_plan(db: Database):
    with db.session() as session:
        sync_catalog(session, load_catalog())
        rows = store.training_versions(session)
        failures = [(row.name, row.validation_report["summary"]) for row in rows if not row.validated]
        assert rows and not failures
        for row in rows:
            plan = row.validation_report["memoryPlan"]
            assert plan["totalGib"] <= plan["usableMemoryGib"]
        assert all(row.validated for row in store.deployment_versions(session))


def test_sync_is_idempotent_and_version_names_are_deterministic(tmp_path: Path, db: Database):
    catalog = load_catalog()
    with db.session() as session:
        first = sync_catalog(session, catalog)
        assert sync_catalog(session, catalog) == []
    other = Database(f"sqlite:///{tmp_path / 'other.db'}")
    other.upgrade()
    with other.session() as session:
        assert sync_catalog(session, catalog) == first
    assert len(first) == len(catalog.training_shapes) + len(catalog.deployment_shapes)
    assert all(len(name.rsplit("/", 1)[1]) == 8 for name in first)


def test_a_changed_entry_adds_a_version_and_leaves_the_old_one(tmp_path: Path, db: Database):
    with db.session() as session:
        sync_catalog(session, load_catalog())
    changed = tmp_path / "catalog"
    shutil.copytree(CATALOG_DIR, changed, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    data = yaml.safe_load((changed / "training_shapes.yaml").read_text())
    entry = next(e for e in data["shapes"] if e["shape"] == "tiny-qwen3-2k-cpu")
    entry["maxSupportedContextLength"] = 1024
    (changed / "training_shapes.yaml").write_text(yaml.safe_dump(data))
    name = "accounts/fireworks/trainingShapes/tiny-qwen3-2k-cpu"
    with db.session() as session:
        before = store.training_versions(session, name)
        added = sync_catalog(session, load_catalog(changed))
        after = store.training_versions(session, name)
    assert len(added) == 1 and added[0].startswith(name + "/versions/")
    assert [row.name for row in after[:1]] == [before[0].name]
    assert after[0].snapshot == before[0].snapshot
    assert after[1].snapshot["maxSupportedContextLength"] == 1024 and after[1].ordinal == 2


def test_the_loader_refuses_a_catalog_that_names_what_it_does_not_define(tmp_path: Path):
    broken = tmp_path / "catalog"
    shutil.copytree(CATALOG_DIR, broken, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    data = yaml.safe_load((broken / "training_shapes.yaml").read_text())
    data["shapes"][0]["deploymentShape"] = "no-such-deployment-shape"
    (broken / "training_shapes.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="unknown deployment shape accounts/fireworks/deploymentShapes/no-such"):
        load_catalog(broken)


def test_a_linked_deployment_shape_serves_the_same_model(db: Database):
    with db.session() as session:
        sync_catalog(session, load_catalog())
        for row in session.query(TrainingShapeVersion):
            linked = row.snapshot["deploymentShapeVersion"]
            dep = store.deployment_versions(session, linked.split("/versions/")[0])
            assert dep[-1].name == linked and dep[-1].base_model == row.base_model
