"""An index on digits (field_id, needs_review): "has this field a flagged digit?" is asked once per
flagged field by the review queue and its counters (review/service.py). Without it SQLite answered it
by walking every flagged digit of the database for each field.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 16:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_digits_field_id_needs_review", "digits", ["field_id", "needs_review"])


def downgrade() -> None:
    op.drop_index("ix_digits_field_id_needs_review", table_name="digits")
