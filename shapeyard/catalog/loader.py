"""Reads the catalog files in this folder into typed entries.

The files are the source of truth a reviewer reads; `shapeyard.catalog.sync` loads them into the database. They
name models and shapes by short ids of the public catalog account (`wire.names.public`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from shapeyard.wire import names
from shapeyard.wire.shapes import (
    AcceleratorSpec,
    DeploymentShapeSnapshot,
    ModelSpec,
    TrainerMode,
    TrainingShapeSnapshot,
    WeightsSource,
)

CATALOG_DIR = Path(__file__).parent


@dataclass(frozen=True)
class DeploymentShapeEntry:
    name: str
    snapshot: DeploymentShapeSnapshot


@dataclass(frozen=True)
class TrainingShapeEntry:
    name: str
    deployment_shape: str  # unversioned; linked at its current version when loaded
    fields: dict[str, Any]

    def snapshot(self, deployment_shape_version: str) -> TrainingShapeSnapshot:
        return TrainingShapeSnapshot.model_validate({**self.fields, "deploymentShapeVersion": deployment_shape_version})


@dataclass(frozen=True)
class Catalog:
    accelerators: dict[str, AcceleratorSpec]
    models: dict[str, ModelSpec]
    deployment_shapes: list[DeploymentShapeEntry]
    training_shapes: list[TrainingShapeEntry]


def with_local_weights(catalog: Catalog, directories: Mapping[str, str]) -> Catalog:
    """The catalog with the named models' weights read from local HF directories (`shapeyard serve --model-dir`)."""
    models = dict(catalog.models)
    for name, directory in directories.items():
        full = names.public(names.MODELS, name)
        if full not in models:
            raise ValueError(f"model-dir {name}: no such model in the catalog; models: {', '.join(sorted(models))}")
        models[full] = models[full].model_copy(update={"weights": WeightsSource(local_dir=directory)})
    return replace(catalog, models=models)


def _read(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        return yaml.safe_load(handle)


def _training_entry(raw: dict[str, Any], defaults: dict[str, Any]) -> TrainingShapeEntry:
    raw = dict(raw)
    shape_id = raw.pop("shape")
    deployment_shape = names.public(names.DEPLOYMENT_SHAPES, raw.pop("deploymentShape"))
    fields = {key: value for key, value in defaults.items() if key != "maxLoraRank"}
    if raw.get("trainerMode") == TrainerMode.LORA_TRAINER:
        fields["maxLoraRank"] = defaults["maxLoraRank"]
    fields.update(raw)
    fields["baseModel"] = names.public(names.MODELS, fields["baseModel"])
    entry = TrainingShapeEntry(names.public(names.TRAINING_SHAPES, shape_id), deployment_shape, fields)
    entry.snapshot("placeholder")  # fail at load time, naming the entry, if a field is wrong
    return entry


@cache
def load_catalog(directory: Path = CATALOG_DIR) -> Catalog:
    accelerators = {
        item["acceleratorType"]: AcceleratorSpec.model_validate(item)
        for item in _read(directory / "accelerators.yaml")["accelerators"]
    }
    models = {item["name"]: ModelSpec.model_validate(item) for item in _read(directory / "models.yaml")["models"]}
    deployment_shapes = [
        DeploymentShapeEntry(
            names.public(names.DEPLOYMENT_SHAPES, item["shape"]),
            DeploymentShapeSnapshot.model_validate(
                {
                    **{k: v for k, v in item.items() if k != "shape"},
                    "baseModel": names.public(names.MODELS, item["baseModel"]),
                }
            ),
        )
        for item in _read(directory / "deployment_shapes.yaml")["shapes"]
    ]
    training = _read(directory / "training_shapes.yaml")
    training_shapes = []
    for item in training["shapes"]:
        try:
            training_shapes.append(_training_entry(item, training["defaults"]))
        except Exception as exc:
            raise ValueError(f"training_shapes.yaml entry {item.get('shape')!r}: {exc}") from exc
    catalog = Catalog(accelerators, models, deployment_shapes, training_shapes)
    _check_references(catalog)
    return catalog


def _check_references(catalog: Catalog) -> None:
    """A catalog that names something it does not define is a bug in the files: fail loudly at load time."""
    serving = {entry.name: entry.snapshot for entry in catalog.deployment_shapes}
    problems = []
    for entry in catalog.deployment_shapes:
        if entry.snapshot.base_model not in catalog.models:
            problems.append(f"{entry.name}: unknown model {entry.snapshot.base_model}")
        if entry.snapshot.accelerator_type not in catalog.accelerators:
            problems.append(f"{entry.name}: unknown accelerator {entry.snapshot.accelerator_type}")
    for entry in catalog.training_shapes:
        model, accelerator = entry.fields["baseModel"], entry.fields["acceleratorType"]
        if model not in catalog.models:
            problems.append(f"{entry.name}: unknown model {model}")
        if accelerator not in catalog.accelerators:
            problems.append(f"{entry.name}: unknown accelerator {accelerator}")
        linked = serving.get(entry.deployment_shape)
        if linked is None:
            problems.append(f"{entry.name}: unknown deployment shape {entry.deployment_shape}")
        elif linked.base_model != model:
            problems.append(f"{entry.name}: deployment shape {entry.deployment_shape} serves {linked.base_model}")
    if problems:
        raise ValueError("catalog files are inconsistent:\n" + "\n".join(problems))
