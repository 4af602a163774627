"""Review and registry: corrections keep the digit's state before them (for undo) and where they came
from; model versions keep where they came from, when they went live and their last gate decision.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 21:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("corrections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("previous", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("source", sa.String(length=16), nullable=True))
        batch_op.create_index(batch_op.f("ix_corrections_created_at"), ["created_at"], unique=False)

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_version", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("gate", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("gate")
        batch_op.drop_column("promoted_at")
        batch_op.drop_column("parent_version")

    with op.batch_alter_table("corrections", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_corrections_created_at"))
        batch_op.drop_column("source")
        batch_op.drop_column("previous")
