"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "accounts",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=255), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "deployment_shapes",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("account", sa.String(length=63), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("deployment_shapes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deployment_shapes_account"), ["account"], unique=False)

    op.create_table(
        "models",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("account", sa.String(length=63), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_models_account"), ["account"], unique=False)

    op.create_table(
        "training_shapes",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("account", sa.String(length=63), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("training_shapes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_shapes_account"), ["account"], unique=False)

    op.create_table(
        "api_keys",
        sa.Column("key_sha256", sa.String(length=64), nullable=False),
        sa.Column("account", sa.String(length=63), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account"],
            ["accounts.name"],
        ),
        sa.PrimaryKeyConstraint("key_sha256"),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_account"), ["account"], unique=False)

    op.create_table(
        "deployment_shape_versions",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("shape", sa.String(length=255), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.Column("base_model", sa.String(length=255), nullable=False),
        sa.Column("validated", sa.Boolean(), nullable=False),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("validation_report", sa.JSON(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["shape"],
            ["deployment_shapes.name"],
        ),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("deployment_shape_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deployment_shape_versions_base_model"), ["base_model"], unique=False)
        batch_op.create_index(batch_op.f("ix_deployment_shape_versions_shape"), ["shape"], unique=False)

    op.create_table(
        "deployments",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("account", sa.String(length=63), nullable=False),
        sa.Column("deployment_id", sa.String(length=63), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=False),
        sa.Column("display_name", sa.String(length=255), nullable=False),
        sa.Column("base_model", sa.String(length=255), nullable=False),
        sa.Column("deployment_shape_version", sa.String(length=255), nullable=True),
        sa.Column("accelerator_type", sa.String(length=64), nullable=False),
        sa.Column("accelerator_count", sa.Integer(), nullable=False),
        sa.Column("min_replica_count", sa.Integer(), nullable=False),
        sa.Column("max_replica_count", sa.Integer(), nullable=False),
        sa.Column("hot_load_trainer_job", sa.String(length=255), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account"],
            ["accounts.name"],
        ),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deployments_account"), ["account"], unique=False)

    op.create_table(
        "trainer_jobs",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("account", sa.String(length=63), nullable=False),
        sa.Column("job_id", sa.String(length=63), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=False),
        sa.Column("display_name", sa.String(length=255), nullable=False),
        sa.Column("training_shape_version", sa.String(length=255), nullable=True),
        sa.Column("base_model", sa.String(length=255), nullable=False),
        sa.Column("trainer_mode", sa.String(length=32), nullable=False),
        sa.Column("lora_rank", sa.Integer(), nullable=False),
        sa.Column("learning_rate", sa.Float(), nullable=False),
        sa.Column("max_context_length", sa.Integer(), nullable=False),
        sa.Column("forward_only", sa.Boolean(), nullable=False),
        sa.Column("trainer_replica_count", sa.Integer(), nullable=False),
        sa.Column("accelerator_type", sa.String(length=64), nullable=False),
        sa.Column("accelerator_count", sa.Integer(), nullable=False),
        sa.Column("node_count", sa.Integer(), nullable=False),
        sa.Column("image_tag", sa.String(length=64), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account"],
            ["accounts.name"],
        ),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("trainer_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_trainer_jobs_account"), ["account"], unique=False)

    op.create_table(
        "training_shape_versions",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("shape", sa.String(length=255), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.Column("base_model", sa.String(length=255), nullable=False),
        sa.Column("trainer_mode", sa.String(length=32), nullable=False),
        sa.Column("accelerator_type", sa.String(length=64), nullable=False),
        sa.Column("max_context_length", sa.Integer(), nullable=False),
        sa.Column("total_accelerators", sa.Integer(), nullable=False),
        sa.Column("validated", sa.Boolean(), nullable=False),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("validation_report", sa.JSON(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["shape"],
            ["training_shapes.name"],
        ),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("training_shape_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_shape_versions_base_model"), ["base_model"], unique=False)
        batch_op.create_index(batch_op.f("ix_training_shape_versions_shape"), ["shape"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("training_shape_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_shape_versions_shape"))
        batch_op.drop_index(batch_op.f("ix_training_shape_versions_base_model"))

    op.drop_table("training_shape_versions")
    with op.batch_alter_table("trainer_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_trainer_jobs_account"))

    op.drop_table("trainer_jobs")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployments_account"))

    op.drop_table("deployments")
    with op.batch_alter_table("deployment_shape_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployment_shape_versions_shape"))
        batch_op.drop_index(batch_op.f("ix_deployment_shape_versions_base_model"))

    op.drop_table("deployment_shape_versions")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_account"))

    op.drop_table("api_keys")
    with op.batch_alter_table("training_shapes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_shapes_account"))

    op.drop_table("training_shapes")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_models_account"))

    op.drop_table("models")
    with op.batch_alter_table("deployment_shapes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployment_shapes_account"))

    op.drop_table("deployment_shapes")
    op.drop_table("accounts")
