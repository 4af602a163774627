"""`digitreader export BATCH --format json|csv [-o FILE]`: a batch's results (thin adapter)."""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from pathlib import Path

import typer

from digitreader.cli.output import STDOUT, err, output_file, shown
from digitreader.settings import get_settings

log = logging.getLogger(__name__)


class Format(StrEnum):
    json = "json"
    csv = "csv"


def export(
    batch: int = typer.Argument(..., help="Batch id (printed by submit)."),
    fmt: Format = typer.Option(Format.json, "--format", "-f", help="json (everything) or csv (one row per field)."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write to this file instead of stdout (replaced whole at the end; - is stdout)."
    ),
) -> None:
    """Export a batch's results: every document, page, field and digit with its box and confidence.

    JSON follows the "digitreader.results/v1" shape described in the README; boxes are in pixels of
    the page as submitted. CSV has one row per field (document, page, field, value, confidence,
    flag); a document with no field gets one row with empty field columns (a failed one with its
    error). Documents of a batch still running that are not read yet are left out (said on stderr;
    "unread" in the JSON): export it again when it ends.

    Example:  digitreader export 12 --format csv -o results.csv
    """
    from digitreader.db import session_scope
    from digitreader.export import export_json, write_csv

    settings = get_settings()
    with session_scope(settings) as s:
        if fmt is Format.json:
            doc = export_json(s, batch)
            text = json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
            status, unread = doc["status"], doc["unread"]
        else:
            import io

            buf = io.StringIO()
            rows, unread, status = write_csv(s, batch, buf)
            text = buf.getvalue()
            log.info("%d rows", rows)
    if unread:
        err.print(_unread_note(batch, status, unread), highlight=False, markup=False)
    if output is None or str(output) == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with output_file(output) as fh:  # whole or not at all; the umask's mode, or the old file's
        fh.write(text)
    err.print(f"wrote {shown(str(output))}", highlight=False, markup=False)


def _unread_note(batch: int, status: str, unread: int) -> str:
    """What stderr says of a batch exported before its documents were all read (exit 0 all the same)."""
    left = f"{unread} document{'s' if unread != 1 else ''} not read yet {'are' if unread != 1 else 'is'} left out"
    if status == "interrupted":
        return (
            f"batch {batch} was interrupted: {left}; run the same submit command again to finish it, "
            "then export it again"
        )
    return f"batch {batch} is still running: {left}; export it again when it ends"


def register(app: typer.Typer) -> None:
    app.command("export")(export)
