"""`digitreader submit PATH...`: read the digits of scans into the database (thin adapter)."""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import TaskID

from digitreader.cli.output import err, failure_line, progress, shown, warning_line
from digitreader.errors import BusyError, DigitreaderError, ExitCode, InputError
from digitreader.pipeline.report import BatchReport, DocumentReport, ProgressHook
from digitreader.settings import get_settings

log = logging.getLogger(__name__)


class PartialBatchError(DigitreaderError):
    """The batch ran, but some documents failed (exit code 3)."""

    exit_code = ExitCode.PARTIAL
    code = "partial"


class IfBusy(StrEnum):
    wait = "wait"
    exit = "exit"


class _Bar(ProgressHook):
    """Progress bar (terminal only) and one line per failed document on stderr. The bar counts
    documents; its label counts what they held so far: "batch 7: 120 pages, 4 flagged, 1 failed"."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = progress(transient=True, disable=quiet or not err.is_terminal)
        self.task: TaskID | None = None
        self.shown: dict[int, float] = {}  # document id -> the share of it the bar shows already
        self.batch_id = 0
        self.waited: TaskID | None = None  # the other run's bar, while this one waits for it
        self.hashed: TaskID | None = None  # files read to be hashed, before the batch is made
        self.pages = self.flagged = self.failed = 0

    def label(self) -> str:
        counts = [f"{self.pages} page{'s' if self.pages != 1 else ''}"]
        counts += [f"{self.flagged} flagged"] if self.flagged else []
        counts += [f"{self.failed} failed"] if self.failed else []
        return f"batch {self.batch_id}: {', '.join(counts)}"

    def hashing(self, done: int, total: int) -> None:
        # Files new to the hash cache are read whole first: minutes for a large folder on a share.
        if self.hashed is None:
            self.bar.start()
            self.hashed = self.bar.add_task("reading new files to hash them", total=total)
        self.bar.update(self.hashed, completed=done, total=total)

    def _done_hashing(self) -> None:
        if self.hashed is not None:
            self.bar.remove_task(self.hashed)
            self.hashed = None

    def started(self, batch_id: int, todo: int, total: int) -> None:
        typer.echo(str(batch_id))  # the batch id, alone on stdout, as soon as it exists
        self._done_hashing()
        if self.waited is not None:
            self.bar.remove_task(self.waited)
        self.batch_id = batch_id
        self.bar.start()
        self.task = self.bar.add_task(self.label(), total=todo)

    def waiting(self, batch_id: int, finished: int, total: int, holder: str | None = None) -> None:
        # The other run's progress, on a bar of its own until this run starts.
        if self.waited is None:
            self._done_hashing()
            if not self.quiet:
                who = f" ({holder})" if holder else ""
                err.print(
                    f"batch {batch_id} is being read by another digitreader run of these files{who}; waiting "
                    "for it to end (Ctrl-C stops waiting and leaves the batch to it)",
                    highlight=False,
                    markup=False,
                    soft_wrap=True,  # one line, whatever the width: for people and for grep alike
                )
            self.bar.start()
            self.waited = self.bar.add_task(f"batch {batch_id}: another run", total=total)
        self.bar.update(self.waited, completed=finished, total=total)

    def part_done(self, document_id: int, done: int, parts: int) -> None:
        # A long document moves the bar as its parts are cut; the last share comes when it is stored.
        share = done / (parts + 1)
        if self.task is not None:
            self.bar.advance(self.task, share - self.shown.get(document_id, 0.0))
        self.shown[document_id] = share

    def document_done(self, report: DocumentReport) -> None:
        self.pages += report.pages
        self.flagged += report.flagged
        self.failed += report.status == "failed"
        if self.task is not None:
            self.bar.update(self.task, advance=1.0 - self.shown.pop(report.document_id, 0.0), description=self.label())
        if report.status == "failed" and not self.quiet:
            line = failure_line(report.path, report.error_code, report.error_message)
            self.bar.console.print(f"[red]failed[/red] {escape(line)}", highlight=False, markup=True)
        if report.warnings and not self.quiet:
            line = warning_line(report.path, report.warnings)
            self.bar.console.print(f"[yellow]warning[/yellow] {escape(line)}", highlight=False, markup=True)

    def stop(self) -> None:
        self.bar.stop()


def _skipped(rep: BatchReport, reason: str) -> tuple[int, str]:
    """How many files the batch skipped for `reason`, and the batches named ("3, 7")."""
    files = [s for s in rep.skipped if s.reason == reason]
    return len(files), ", ".join(map(str, sorted({s.batch_id for s in files if s.batch_id is not None})))


def _summary(rep: BatchReport, settle: float = 0.0) -> str:
    done = sum(1 for d in rep.processed if d.status == "done")
    review = sum(1 for d in rep.processed if d.status == "needs_review")
    failed = len(rep.failed)
    share = f" ({100.0 * rep.flagged / rep.digits:.1f} %)" if rep.digits else ""
    rate = f", {rep.pages / rep.seconds:.1f} pages/s" if rep.seconds > 0 and rep.pages else ""
    how = " (resumed after another run of these files)" if rep.waited else " (resumed)" if rep.resumed else ""
    lines = [
        f"batch {rep.batch_id}{how}: {rep.status}",
        f"  documents {len(rep.processed)} ({done} done, {review} need review, {failed} failed)"
        + (f", {len(rep.skipped)} skipped" if rep.skipped else ""),
        f"  pages {rep.pages}"
        + (f" ({rep.turned} turned upright)" if rep.turned else "")
        + f", digits {rep.digits}, flagged {rep.flagged}{share}",
        f"  {rep.seconds:.1f} s{rate}; model {rep.model_version}"
        + (f" ({rep.precision})" if rep.precision else "")
        + f", threshold {rep.threshold:.3f}"
        if rep.threshold is not None
        else f"  {rep.seconds:.1f} s{rate}",
    ]
    n, batches = _skipped(rep, "processed")
    if n:
        lines.append(f"  skipped {n} already processed (batch {batches}); use --force to read them again")
    n, batches = _skipped(rep, "failed")
    if n:
        lines.append(
            f"  skipped {n} that failed before (batch {batches}: the same bytes fail the same way); "
            "replace them, or use --force to read them again"
        )
    n, batches = _skipped(rep, "in_progress")
    if n:
        lines.append(f"  skipped {n} being read by another run now (batch {batches})")
    dups = [s for s in rep.skipped if s.reason == "duplicate"]
    if rep.unsettled:
        lines.append(
            f"  left {len(rep.unsettled)} modified in the last {settle:g} s for the next run (still being written?)"
        )
    if dups:
        lines.append(f"  skipped {len(dups)} duplicate file(s) (same content as another file of this batch)")
    if rep.warned:
        lines.append(
            f"  read from damaged image data ({len(rep.warned)}; check them: digitreader status {rep.batch_id}):"
        )
        lines += [f"    {warning_line(d.path, d.warnings)}" for d in rep.warned[:20]]
        if len(rep.warned) > 20:
            lines.append(f"    ... and {len(rep.warned) - 20} more")
    if rep.fieldless:
        lines.append(f"  no digit field found in {len(rep.fieldless)} (not a form, or scanned at another scale?):")
        lines += [f"    {shown(d.path)}" for d in rep.fieldless[:20]]
        if len(rep.fieldless) > 20:
            lines.append(f"    ... and {len(rep.fieldless) - 20} more: digitreader status {rep.batch_id}")
    if rep.failed:
        lines.append(f"  failures ({len(rep.failed)}):")
        lines += [f"    {failure_line(d.path, d.error_code, d.error_message)}" for d in rep.failed[:20]]
        if len(rep.failed) > 20:
            lines.append(f"    ... and {len(rep.failed) - 20} more: digitreader status {rep.batch_id}")
    return "\n".join(lines)


def submit(
    paths: list[str] = typer.Argument(..., help="Scan files, folders (searched recursively) or globs."),
    template: Path | None = typer.Option(
        None, "--template", "-t", exists=True, dir_okay=False, help="Form template (YAML) naming the fields."
    ),
    threshold: float | None = typer.Option(
        None, "--threshold", min=0.0, max=1.0, help="Review threshold on confidence (default: the model's)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Read files again even if their content was read before (and hash each file again)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary (errors only)."),
    queue: bool = typer.Option(
        False,
        "--queue",
        help="Distributed: queue on DIGITREADER_BROKER_URL for the "
        "worker pools (the default when a broker is set) and return at once.",
    ),
    wait: bool = typer.Option(False, "--wait", help="Distributed: show progress until the batch is done."),
    settle: float | None = typer.Option(
        None,
        "--settle",
        min=0.0,
        help="Leave out files modified less than SECONDS ago (a scanner still writing them into a hot "
        "folder); the next run reads them. Default: DIGITREADER_SETTLE_SECONDS (0).",
        metavar="SECONDS",
    ),
    if_busy: IfBusy = typer.Option(
        IfBusy.wait,
        "--if-busy",
        help="When another run is reading these files: 'wait' for it, then read what it leaves, or "
        "'exit' at once with code 11 (for cron jobs that must not pile up).",
    ),
) -> None:
    """Read the handwritten digits of scans (PNG, JPEG, TIFF, BMP, PDF) into a new batch.

    Prints the batch id alone on stdout; progress and a summary (documents, pages, digits,
    flagged, failed, seconds) go to stderr. A file that cannot be read is recorded as failed with
    its reason and the batch goes on. Files whose content was already processed are skipped, and so
    are those that failed before for a reason their bytes decide (truncated, encrypted, blank...;
    --force reads both again), and a file unchanged since it was last hashed (the same size, times
    and inode) is not even read to know its content; re-running the same command after Ctrl-C or a
    crash finishes the interrupted batch without duplicates. Started while another run reads the same files, it waits
    for that run and reads only what it leaves; files another run is reading are skipped by a new
    batch (a hot folder submitted again).

    Exit code: 0 all documents read, 3 some failed, 4 all failed, 2 bad arguments, 5 no model,
    6 database error, 11 another run is reading these files (--if-busy exit), 130 interrupted
    (Ctrl-C), 143 stopped by SIGTERM (a re-run completes the batch).

    Distributed mode (DIGITREADER_BROKER_URL set, or --queue): the batch is queued for the worker
    pools and its id printed at once (exit 7: broker unreachable); --wait follows it to the end.

    Example:  BATCH=$(digitreader submit scans/) && digitreader export "$BATCH" --format csv
    """
    settings = get_settings()
    if settle is not None:
        settings = settings.model_copy(update={"settle_seconds": settle})
    if queue or settings.distributed:  # distributed mode (README "Distributed mode")
        from digitreader.cli.commands._distributed import submit_distributed

        return submit_distributed(paths, settings, template=template, threshold=threshold, force=force,
                                  quiet=quiet, wait=wait, exit_if_busy=if_busy is IfBusy.exit)  # fmt: skip
    from digitreader.pipeline.process import process_batch

    hook = _Bar(quiet)
    try:
        rep = process_batch(paths, settings, template=template, threshold=threshold, force=force, hook=hook,
                            wait_if_busy=if_busy is IfBusy.wait)  # fmt: skip
    except BusyError as exc:
        typer.echo(str(exc.batch_id))  # the batch that holds these files, alone on stdout as always
        raise
    finally:
        hook.stop()
    if not quiet:
        err.print(_summary(rep, settings.settle_seconds), highlight=False, markup=False)
    failed = sum(1 for d in rep.processed if d.status == "failed") if not rep.resumed else None
    if rep.status == "failed":  # every document of the batch failed
        raise InputError(f"every document of batch {rep.batch_id} failed", code="batch_failed",
                         hint=f"digitreader status {rep.batch_id} lists the reasons")  # fmt: skip
    if rep.status == "partial":
        some = f"{failed} document(s)" if failed else "some documents"
        raise PartialBatchError(f"{some} of batch {rep.batch_id} failed; the others were stored",
                                hint=f"digitreader status {rep.batch_id} lists the reasons")  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)
