"""Field strips: each field keeps its strip of the page (a small greyscale JPEG) and the page region
it shows, so the review page can show the digit in its place on the page.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fields", schema=None) as batch_op:
        batch_op.add_column(sa.Column("strip", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("strip_box", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fields", schema=None) as batch_op:
        batch_op.drop_column("strip_box")
        batch_op.drop_column("strip")
