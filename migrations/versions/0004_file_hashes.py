"""File hashes: the SHA-256 of each submitted file with the stat stamp it had when it was hashed, so
that a folder submitted again is not read again file by file (rsync's quick check).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "file_hashes",
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("stamp", sa.String(length=120), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("hashed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("path", name=op.f("pk_file_hashes")),
    )
    op.create_index(op.f("ix_file_hashes_hashed_at"), "file_hashes", ["hashed_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_file_hashes_hashed_at"), table_name="file_hashes")
    op.drop_table("file_hashes")
