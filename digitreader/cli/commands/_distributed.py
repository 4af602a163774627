"""CLI side of the distributed mode, called by `submit` and `status` (not a command itself: the
leading underscore keeps it out of command discovery)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from digitreader.cli.output import err, progress
from digitreader.errors import BrokerError, BusyError, InputError, UsageError
from digitreader.settings import Settings

log = logging.getLogger(__name__)


def submit_distributed(
    paths: list[str],
    settings: Settings,
    *,
    template: Path | None,
    threshold: float | None,
    force: bool,
    quiet: bool,
    wait: bool,
    exit_if_busy: bool = False,
) -> None:
    """Queue the batch on the broker, print its id on stdout at once; with `wait`, show progress
    until it is finished and exit like the embedded submit (0, 3 some failed, 4 all failed).
    `exit_if_busy` (--if-busy exit): a resumed batch whose documents are all queued by an earlier run
    and still unread (the workers are at it) is busy: its id, then exit 11, as the embedded submit."""
    from digitreader import distributed as dist

    if not settings.broker_url:
        raise UsageError("--queue needs a broker: DIGITREADER_BROKER_URL is not set",
                         hint="e.g. export DIGITREADER_BROKER_URL=redis://127.0.0.1:6379/0")  # fmt: skip
    from digitreader.cli.commands.submit import _Bar

    reading = _Bar(quiet)  # its bar while files new to the hash cache are read (`_Bar.hashing`)
    try:
        sub = dist.submit_batch(paths, settings, template=template, threshold=threshold, force=force,
                                on_hashed=reading.hashing)  # fmt: skip
    except BrokerError as exc:
        if exc.batch_id is not None:  # registered, not queued: its id alone on stdout, as always
            typer.echo(str(exc.batch_id))
        raise
    finally:
        reading.stop()
    typer.echo(str(sub.batch_id))
    if exit_if_busy and sub.resumed and not sub.queued and sub.in_queue:
        raise BusyError(sub.batch_id, f"{sub.in_queue} document(s) queued for the worker pools")
    if not quiet:
        busy = sum(1 for f in sub.skipped if f.reason == "in_progress")
        skipped = (f", {len(sub.skipped) - busy} skipped (already processed, failed before, or duplicate)"
                   if len(sub.skipped) > busy else "")  # fmt: skip
        skipped += f", {busy} skipped (being read by another batch now)" if busy else ""
        skipped += f", {sub.in_queue} queued by an earlier run and not again" if sub.in_queue else ""
        err.print(f"batch {sub.batch_id}{' (resumed)' if sub.resumed else ''}: queued {sub.queued} of "
                  f"{sub.total} document(s){skipped}", highlight=False, markup=False)  # fmt: skip
        if sub.unsettled:
            err.print(f"  left {len(sub.unsettled)} modified in the last {settings.settle_seconds:g} s for the next "
                      "run (still being written?)", highlight=False, markup=False)  # fmt: skip
        if sub.queued and not wait:
            err.print(f"  follow it with: digitreader status {sub.batch_id}", highlight=False, markup=False)
        _warn_without_workers(settings)
    if not wait:
        return
    bar = progress(transient=True, disable=quiet or not err.is_terminal)
    with bar:
        task = bar.add_task(f"batch {sub.batch_id}", total=sub.total)

        def show(p: dist.Progress) -> None:
            failed = p.counts.get("failed", 0)
            label = f"batch {sub.batch_id}: {p.pages} page{'s' if p.pages != 1 else ''}"
            bar.update(task, completed=p.finished, total=p.total,
                       description=label + (f", {failed} failed" if failed else ""))  # fmt: skip

        prog = dist.wait_for_batch(sub.batch_id, settings, on_progress=show)
    if not quiet:
        by = ", ".join(f"{k} {v}" for k, v in sorted(prog.counts.items()))
        err.print(f"batch {sub.batch_id}: {prog.status} ({by})", highlight=False, markup=False)
        _details(settings, sub.batch_id)
    if prog.status == "failed":
        raise InputError(f"every document of batch {sub.batch_id} failed", code="batch_failed",
                         hint=f"digitreader status {sub.batch_id} lists the reasons")  # fmt: skip
    if prog.status == "partial":
        from digitreader.cli.commands.submit import PartialBatchError

        raise PartialBatchError(
            f"{prog.counts.get('failed', 0)} document(s) of batch {sub.batch_id} failed; the others were stored",
            hint=f"digitreader status {sub.batch_id} lists the reasons",
        )


def _details(settings: Settings, batch_id: int) -> None:
    """What the embedded submit's summary says beyond the counts, from the database (the workers did
    the reading): pages, digits, flagged, and the documents that failed, were read from damaged image
    data or had no digit field, each by name (`status`'s lines, indented)."""
    from digitreader.cli.commands.status import status_text
    from digitreader.db import session_scope
    from digitreader.db.store import batch_status

    with session_scope(settings) as s:
        st = batch_status(s, batch_id)
    lines = status_text(st).splitlines()[2:]  # after the batch's and the documents' lines, said above
    err.print("\n".join(f"  {line}" for line in lines), highlight=False, markup=False)


def _warn_without_workers(settings: Settings) -> None:
    from digitreader.distributed import PAGES_QUEUE, broker_status

    try:
        st = broker_status(settings, timeout=1.0)
    except BrokerError as exc:
        log.warning("%s", exc)
        return
    if not any(PAGES_QUEUE in w["queues"] for w in st["workers"]):
        err.print("  note: no page worker is running; start one: digitreader worker --pool page",
                  highlight=False, markup=False)  # fmt: skip
    if not any("infer" in w["queues"] for w in st["workers"]):
        err.print("  note: no inference worker is running; start one: digitreader worker --pool infer",
                  highlight=False, markup=False)  # fmt: skip


def broker_section(settings: Settings) -> dict[str, Any]:
    """`status`'s view of the pools: queue depths and live workers (or why it cannot tell)."""
    from digitreader.distributed import broker_status

    try:
        return broker_status(settings)
    except BrokerError as exc:
        return {"error": str(exc)}


def broker_text(b: dict[str, Any]) -> str:
    if "error" in b:
        return f"broker: {b['error']}"
    q = ", ".join(f"{k} {v} waiting" for k, v in b["queues"].items())
    lines = [f"broker {b['broker']}: {q}, {b['unacked']} delivered not yet acknowledged"]
    if not b["workers"]:
        lines.append("workers: none alive (digitreader worker --pool page|infer)")
    else:
        lines.append(f"workers ({len(b['workers'])}):")
        lines += [f"  {w['name']}: {', '.join(w['queues'])}; {w['active']} running" for w in b["workers"]]
    return "\n".join(lines)
