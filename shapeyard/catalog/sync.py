"""Loads the catalog files into the database.

Idempotent: an entry whose content equals its shape's latest version adds nothing; a changed entry adds a new
version (validated by the memory plan as it is written); removed entries leave their versions in place.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from shapeyard.catalog.loader import Catalog
from shapeyard.shapes.admin import validate_version
from shapeyard.shapes.validation import validate_deployment_shape
from shapeyard.store import catalog as store
from shapeyard.store.accounts import ensure_account
from shapeyard.store.tables import DeploymentShapeVersion, TrainingShapeVersion
from shapeyard.wire.names import PUBLIC_ACCOUNT


def sync_catalog(session: Session, catalog: Catalog) -> list[str]:
    """Returns the names of the versions it added."""
    added: list[str] = []
    ensure_account(session, PUBLIC_ACCOUNT)
    for spec in catalog.models.values():
        store.put_model(session, spec)
    session.flush()

    for entry in catalog.deployment_shapes:
        current = store.latest_version(session, DeploymentShapeVersion, entry.name, validated_only=False)
        if current is not None and store.deployment_snapshot(current) == entry.snapshot:
            continue
        row = store.add_deployment_version(session, entry.name, entry.snapshot, public=True)
        store.record_validation(row, validate_deployment_shape(entry.snapshot, catalog.models, catalog.accelerators))
        added.append(row.name)

    for entry in catalog.training_shapes:
        link = store.latest_version(session, DeploymentShapeVersion, entry.deployment_shape, validated_only=False)
        assert link is not None, "the loader checks that every linked deployment shape exists"
        snapshot = entry.snapshot(link.name)
        current = store.latest_version(session, TrainingShapeVersion, entry.name, validated_only=False)
        if current is not None and store.training_snapshot(current) == snapshot:
            continue
        row = store.add_training_version(session, entry.name, snapshot, public=True)
        validate_version(session, row, catalog.accelerators)
        added.append(row.name)
    return added
