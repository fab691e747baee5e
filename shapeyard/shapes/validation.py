"""Validation: a shape version may be used only once it is proven to fit its hardware.

Static checks (the model and accelerator exist, the linked deployment shape serves the same model, the
sharding is consistent) plus the memory plan. The trainer adds a real smoke step where the hardware exists.
"""

from __future__ import annotations

from shapeyard.shapes.memory import plan_memory, plan_serving
from shapeyard.shapes.recipe import pending, shape_recipe
from shapeyard.wire.shapes import (
    AcceleratorSpec,
    DeploymentShapeSnapshot,
    ModelSpec,
    TrainingShapeSnapshot,
    ValidationReport,
)


def _missing(
    base_model: str,
    accelerator_type: str,
    models: dict[str, ModelSpec],
    accelerators: dict[str, AcceleratorSpec],
) -> list[str]:
    problems = []
    if base_model not in models:
        problems.append(f"base model {base_model} is not in the catalog")
    if accelerator_type not in accelerators:
        problems.append(
            f"acceleratorType {accelerator_type} is unknown; known types: {', '.join(sorted(accelerators))}"
        )
    return problems


def validate_training_shape(
    snapshot: TrainingShapeSnapshot,
    deployment_shape: DeploymentShapeSnapshot | None,
    models: dict[str, ModelSpec],
    accelerators: dict[str, AcceleratorSpec],
    *,
    deployment_shape_validated: bool = True,
) -> ValidationReport:
    problems = _missing(snapshot.base_model, snapshot.accelerator_type, models, accelerators)
    if deployment_shape is None:
        problems.append(f"linked deployment shape {snapshot.deployment_shape_version} does not exist")
    elif not deployment_shape_validated:
        problems.append(f"linked deployment shape {snapshot.deployment_shape_version} is not validated")
    elif deployment_shape.base_model != snapshot.base_model:
        problems.append(
            f"linked deployment shape {snapshot.deployment_shape_version} serves {deployment_shape.base_model}, "
            f"not {snapshot.base_model}"
        )
    if problems:
        return ValidationReport(passed=False, summary="; ".join(problems), problems=problems)
    accelerator = accelerators[snapshot.accelerator_type]
    plan = plan_memory(models[snapshot.base_model], snapshot, accelerator)
    missing = pending(shape_recipe(snapshot, accelerator))
    summary = plan.summary()
    if missing:
        summary += f"; today's trainer does not apply {', '.join(missing)}: "
        summary += "jobs on this shape are refused until it does"
    return ValidationReport(
        passed=plan.fits, summary=summary, problems=plan.problems, pending=missing, memory_plan=plan
    )


def validate_deployment_shape(
    snapshot: DeploymentShapeSnapshot,
    models: dict[str, ModelSpec],
    accelerators: dict[str, AcceleratorSpec],
) -> ValidationReport:
    problems = _missing(snapshot.base_model, snapshot.accelerator_type, models, accelerators)
    if problems:
        return ValidationReport(passed=False, summary="; ".join(problems), problems=problems)
    plan = plan_serving(
        models[snapshot.base_model],
        snapshot.precision,
        accelerators[snapshot.accelerator_type],
        snapshot.accelerator_count,
    )
    return ValidationReport(passed=plan.fits, summary=plan.summary(), serving_plan=plan)
