"""`digitreader batches`: the latest batches, one line each (thin adapter)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import typer

from digitreader.cli.output import local_time, print_json
from digitreader.settings import get_settings


class BatchState(StrEnum):
    running = "running"
    interrupted = "interrupted"
    done = "done"
    partial = "partial"
    failed = "failed"


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("batch", "created", "status", "docs", "done", "review", "failed", "pending", "pages", "flagged", "seconds")
    lines = [head]
    for r in rows:
        d = r["documents"]
        lines.append(
            (
                str(r["batch"]),
                local_time(r["created_at"]),
                r["status"],
                str(d["total"]),
                str(d.get("done", 0)),
                str(d.get("needs_review", 0)),
                str(d.get("failed", 0)),
                str(d.get("pending", 0) + d.get("processing", 0)),
                str(r["pages"]),
                str(r["flagged_digits"]),
                f"{r['seconds']:.1f}" if r["seconds"] else "",
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    left = {1, 2}  # created, status: text, left-aligned; the counts right-aligned
    return "\n".join(
        "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in lines
    )


def batches(
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="How many batches, newest first."),
    status: BatchState | None = typer.Option(None, "--status", help="Only the batches in this status."),
    show_all: bool = typer.Option(
        False, "--all", "-a", help="Also the batches without documents (a run that found nothing new)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a list) instead of a table."),
) -> None:
    """List the latest batches: status, documents (done, needing review, failed, pending), pages,
    flagged digits and seconds, one line each. A batch still marked running whose run is gone
    (killed) shows as interrupted: run its submit command again to finish it. Batches without
    documents (a run that found nothing new in its folder) are left out unless --all. Times are this
    machine's local time; --json gives them in UTC (ISO 8601 with the offset).

    Example:  digitreader batches --status partial   (batches where some documents failed)
    """
    from digitreader.db import session_scope
    from digitreader.db.store import list_batches

    with session_scope(get_settings()) as s:
        rows = list_batches(s, limit=limit, status=str(status) if status is not None else None, empty=show_all)
    if as_json:
        print_json(rows)
    elif rows:
        typer.echo(_table(rows))
    else:
        typer.echo("no batches" + (f" in status {status}" if status is not None else ""), err=True)


def register(app: typer.Typer) -> None:
    app.command("batches")(batches)
