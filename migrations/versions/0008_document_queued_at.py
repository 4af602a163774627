"""documents.queued_at: when the distributed mode put the document's page task on the broker. A
distributed batch resumed (the same submission run again, a cron line while the batch still runs)
queues only its documents never queued; before, it queued every pending document again, and copies of
one task running at once were counted as a worker dying (`worker_lost`). Documents lost from the
broker are queued again by the orphan sweep (`distributed.requeue_orphans`), as before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 17:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("queued_at")
