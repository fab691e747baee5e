"""deployments remember the snapshot they serve

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("snapshot_identity", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("snapshot_path", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("snapshot_path")
        batch.drop_column("snapshot_identity")
