"""`digitreader status [BATCH]`: where a batch stands (thin adapter)."""

from __future__ import annotations

import logging
from typing import Any

import typer

from digitreader.cli.output import failure_line, local_time, print_json, shown, warning_line
from digitreader.settings import get_settings

log = logging.getLogger(__name__)


def status_text(st: dict[str, Any]) -> str:
    """`store.batch_status` as `status` prints it (also the end of a distributed `submit --wait`)."""
    docs = st["documents"]
    by = ", ".join(f"{k} {v}" for k, v in sorted(docs.items()) if k != "total")
    share = f" ({100.0 * st['flagged_digits'] / st['digits']:.1f} %)" if st["digits"] else ""
    lines = [
        f"batch {st['batch']}: {st['status']} (created {local_time(st['created_at'], seconds=True)}"
        + (f", {st['seconds']:.1f} s" if st["seconds"] else "")
        + ")",
        f"documents: {docs['total']}" + (f" ({by})" if by else ""),
        f"pages: {st['pages']}"
        + (f" ({st['pages_turned']} turned upright)" if st.get("pages_turned") else "")
        + f", fields: {st['fields']} ({st['flagged_fields']} need review), "
        f"digits: {st['digits']}, flagged digits: {st['flagged_digits']}{share}, blank cells: {st['blank_cells']}",
    ]
    if st.get("newer_empty"):
        n = st["newer_empty"]
        lines.append(
            f"the {n} later batch{'es' if n > 1 else ''} had nothing new to read (digitreader batches --all lists them)"
        )
    if st["status"] == "interrupted":
        lines.append("interrupted: run the same submit command again to finish it")
    if st.get("warnings"):
        lines.append(f"read from damaged image data ({len(st['warnings'])}; each message in the export):")
        lines += [f"  {warning_line(w['path'], w['warnings'])}" for w in st["warnings"]]
    if st.get("no_fields"):
        lines.append(f"no digit field found in {len(st['no_fields'])} (not a form, or scanned at another scale?):")
        lines += [f"  {shown(path)}" for path in st["no_fields"]]
    if st["failures"]:
        lines.append(f"failures ({len(st['failures'])}):")
        lines += [f"  {failure_line(f['path'], f['code'], f['message'])}" for f in st["failures"]]
    return "\n".join(lines)


def status(
    batch: int | None = typer.Argument(
        None,
        help="Batch id (default: the latest batch that read something; a run finding nothing new makes an empty one).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Show a batch: documents by status, pages, digits, flagged digits, and why documents failed.

    With DIGITREADER_BROKER_URL set it also shows the queues (messages waiting, delivered but not
    acknowledged) and the live workers with their pools and running tasks. Times are this machine's
    local time; --json gives them in UTC (ISO 8601 with the offset).

    Example:  digitreader status 12 --json
    """
    from digitreader.db import session_scope
    from digitreader.db.store import batch_status

    settings = get_settings()
    with session_scope(settings) as s:
        st = batch_status(s, batch)
    if settings.distributed:  # queue depths and live workers of the pools
        from digitreader.cli.commands._distributed import broker_section, broker_text

        st["broker"] = broker_section(settings)
    if as_json:
        print_json(st)
    else:
        typer.echo(status_text(st) + ("\n" + broker_text(st["broker"]) if "broker" in st else ""))


def register(app: typer.Typer) -> None:
    app.command("status")(status)
