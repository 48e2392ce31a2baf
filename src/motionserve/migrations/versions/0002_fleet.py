"""The multi-machine release: change tracking, claim hints, live previews, a per-owner history
index and fair queuing between owners on jobs, key roles, shared secrets, the file catalog, uploads
in progress and the worker registry.

Not released yet: until it is, a column added to `motionserve.database` goes here too (the
migration test fails until it does). After the release, changes go in a new revision.

Every NOT NULL column added to an existing table has a server default, so that rows already
there get a value, and so that nodes of the previous release, still running during a rolling
upgrade, can go on inserting rows without knowing the column.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# What releases before roles called the key they made on first start (`ensure_admin_key`).
FIRST_START_OWNER = "admin"
FIRST_START_LABEL = "created on first start"


def upgrade() -> None:
    # Plain ADD COLUMN and CREATE INDEX: SQLite does both in place, no batch (table copy) needed.
    op.add_column("jobs", sa.Column("changed_at", sa.Double))
    op.add_column("jobs", sa.Column("runner_hint", sa.String(200)))
    op.add_column("jobs", sa.Column("no_retry", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("jobs", sa.Column("preview", sa.JSON))
    op.create_index("ix_jobs_changed", "jobs", ["changed_at"])
    op.create_index("ix_jobs_finished", "jobs", ["finished_at"])
    op.create_index("ix_jobs_owner", "jobs", ["owner", "seq"])
    # Fair queuing: jobs already queued get 0, so they keep their submit order and run first.
    op.add_column("jobs", sa.Column("fair_seq", sa.BigInteger, nullable=False, server_default="0"))
    op.drop_index("ix_jobs_queue", table_name="jobs")
    op.create_index("ix_jobs_fair_queue", "jobs", ["state", "priority", "fair_seq", "seq"])
    op.create_index("ix_jobs_owner_active", "jobs", ["owner", "state", "priority", "fair_seq"])

    op.add_column("api_keys", sa.Column("role", sa.String(16), nullable=False, server_default="user"))
    keys = sa.table("api_keys", sa.column("owner"), sa.column("label"), sa.column("role"))
    op.execute(
        keys.update()
        .where(keys.c.owner == FIRST_START_OWNER, keys.c.label == FIRST_START_LABEL)
        .values(role="admin")
    )

    op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_table(
        "files",
        sa.Column("token", sa.String(64), primary_key=True),
        sa.Column("file_name", sa.String(200), nullable=False),
        sa.Column("content_type", sa.String(200), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double),
        sa.Column("kind", sa.String(16), nullable=False),
    )
    op.create_index("ix_files_expires", "files", ["expires_at"])
    op.create_table(
        "uploads",
        sa.Column("upload_id", sa.String(64), primary_key=True),
        sa.Column("token", sa.String(64), nullable=False, unique=True),
        sa.Column("file_name", sa.String(200), nullable=False),
        sa.Column("content_type", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double),
        sa.Column("backend_upload_id", sa.Text),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("warm", sa.JSON),
        sa.Column("current_job", sa.String(36)),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("last_seen", sa.Double, nullable=False),
    )


def downgrade() -> None:
    for table in ("workers", "uploads", "files", "server_secrets"):
        op.drop_table(table)
    # Dropping columns: SQLite recreates the table (batch mode); the migration runs with SQLite's
    # foreign keys off, so recreating `jobs` does not cascade into job_logs and webhooks.
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("role")
    op.drop_index("ix_jobs_owner_active", table_name="jobs")
    op.drop_index("ix_jobs_fair_queue", table_name="jobs")
    op.create_index("ix_jobs_queue", "jobs", ["state", "priority", "seq"])
    op.drop_index("ix_jobs_owner", table_name="jobs")
    op.drop_index("ix_jobs_finished", table_name="jobs")
    op.drop_index("ix_jobs_changed", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        for column in ("fair_seq", "preview", "no_retry", "runner_hint", "changed_at"):
            batch.drop_column(column)
