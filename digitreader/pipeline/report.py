"""What a batch run reports as it goes and when it ends: plain data for the CLI's progress bar and
summary (`process_batch` fills them). Imports nothing heavy, so the CLI can load it to show --help."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from digitreader.db.store import SkippedFile


@dataclass
class DocumentReport:
    document_id: int
    path: str
    status: str  # done | needs_review | failed
    pages: int = 0
    digits: int = 0
    flagged: int = 0
    error_code: str | None = None
    error_message: str | None = None
    seconds: float = 0.0
    #: What the image decoders said of damaged data while its pages were read (`DocumentCut.warnings`).
    warnings: tuple[str, ...] = ()
    turned: int = 0  # pages read turned upright (scanned upside down or on their side: `PageCut.rotation`)
    fields: int | None = None  # digit fields found (None: not counted, e.g. failed)


@dataclass
class BatchReport:
    """What `process_batch` did (the CLI's summary)."""

    batch_id: int
    resumed: bool = False
    waited: bool = False  # another run of the same submission held the batch; this one waited for it
    total: int = 0  # documents in the batch
    processed: list[DocumentReport] = field(default_factory=list)  # this run
    skipped: list[SkippedFile] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # could not even be hashed
    unsettled: list[str] = field(default_factory=list)  # modified too recently (settle_seconds): left for later
    status: str = "running"
    seconds: float = 0.0
    model_version: str | None = None
    threshold: float | None = None
    precision: str | None = None  # the model file that reads: fp32, or its int8 file (DIGITREADER_PRECISION)

    @property
    def pages(self) -> int:
        return sum(d.pages for d in self.processed)

    @property
    def digits(self) -> int:
        return sum(d.digits for d in self.processed)

    @property
    def turned(self) -> int:
        return sum(d.turned for d in self.processed)

    @property
    def flagged(self) -> int:
        return sum(d.flagged for d in self.processed)

    @property
    def failed(self) -> list[DocumentReport]:
        return [d for d in self.processed if d.status == "failed"]

    @property
    def fieldless(self) -> list[DocumentReport]:
        """Documents read in which no digit field was found (a page of printed text, a form scanned at
        another scale): nothing to review, yet nothing read."""
        return [d for d in self.processed if d.status != "failed" and d.fields == 0]

    @property
    def warned(self) -> list[DocumentReport]:
        """Documents read from damaged image data (their decoders' `warnings`)."""
        return [d for d in self.processed if d.warnings]


class ProgressHook:
    """Called by `process_batch` as it goes (the CLI draws a progress bar from it)."""

    def hashing(self, done: int, total: int) -> None:
        """Files read to be hashed before the batch is made: `done` of the `total` that are new to the
        hash cache (`hashcache.py`; files known there are not read). Called from the hashing threads as
        each file is read, then `started` follows. Not called when no file needs reading."""

    def started(self, batch_id: int, todo: int, total: int) -> None: ...

    def waiting(self, batch_id: int, finished: int, total: int, holder: str | None = None) -> None:
        """Another run is reading batch `batch_id` (the same submission); this one waits for it to end,
        then reads what it left. Called when the wait begins, then about every second with the
        batch's documents finished so far (read or failed) of `total`; `holder` says who that run is
        ("process 1234"), where it can be told. `started` follows."""

    def part_done(self, document_id: int, done: int, parts: int) -> None:
        """`done` of the `parts` a long document is cut in are cut (`document.page_parts`); called for
        each but the last, and `document_done` follows when the document is stored."""

    def document_done(self, report: DocumentReport) -> None: ...
