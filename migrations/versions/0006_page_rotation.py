"""Page rotation: how many degrees clockwise a page was turned to be read (0, 90, 180, 270), for a
page scanned upside down or on its side (pipeline/orient.py). Pages stored before were read as they lay.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 08:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pages") as batch:
        batch.add_column(sa.Column("rotation", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("pages") as batch:
        batch.drop_column("rotation")
