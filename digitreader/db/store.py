"""Writes and reads shared by the embedded pipeline, the workers, the CLI and the review page.

Every write here runs inside the caller's session/transaction; `digitreader.db.session_scope`
gives one. Storing a document's results is idempotent: it replaces whatever that document had.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import ColumnElement, Table, and_, delete, false, func, insert, not_, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from digitreader.db.locks import batch_in_progress
from digitreader.db.models import (
    DOCUMENT_FINISHED_OK,
    Batch,
    Digit,
    Document,
    Field,
    FileHash,
    ModelVersion,
    Page,
    iso_utc,
    utcnow,
)
from digitreader.errors import NotFoundError
from digitreader.text import printable

if TYPE_CHECKING:  # numpy's import is not needed to read batches (`status`, `batches`, `export`)
    from digitreader.pipeline.assemble import PageResult

log = logging.getLogger(__name__)

UNFINISHED_BATCH = ("running", "interrupted")
#: A distributed batch's document that no run has put on the broker this long after the batch was
#: registered is stranded (the broker was down when it was submitted: exit 7), not about to be queued
#: by the run that registered it, which publishes right after its commit.
STRANDED_AFTER = dt.timedelta(seconds=60)
PENDING_DOCUMENT = ("pending", "processing")


#: Values per IN (...) query: well under the 65,535 parameters a PostgreSQL statement may hold.
IN_CHUNK = 10_000

#: Failures that a file's bytes decide: the same content read again fails the same way, so a later
#: submission skips it as it skips content already read (a broken scan left in a hot folder is not
#: read, and failed, by every run); `--force` reads it again. Not here: what settings or the moment
#: decide (too_large, timeout, template_mismatch, worker_lost, internal), nor an unreadable file (no
#: content known: a stand-in id per path).
FAILED_FOR_GOOD = (
    "empty_file",
    "truncated",
    "unreadable",
    "unsupported",
    "encrypted",
    "empty_page",
    "blank_page",
    "all_black",
    "damaged",
)

#: A file hash not renewed in this many days is forgotten (`save_file_hashes`): the table holds about a
#: year of a hot folder's files, not every file ever submitted; a file forgotten is only hashed again.
FILE_HASH_DAYS = 365
#: Rows per statement when saving file hashes (5 values each: under SQLite's 32,766 parameters).
FILE_HASH_CHUNK = 2_000

#: The PostgreSQL transaction advisory lock `hold_registration` takes (derived from the project's name).
REGISTRATION_LOCK_KEY = zlib.crc32(b"digitreader.registration")


#: `text` as a database can store it: a file name's bytes that are not UTF-8 as `\xNN` (`text.printable`).
db_text = printable


@dataclass(frozen=True)
class InputFile:
    """A file to process, identified by its content."""

    path: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class SkippedFile:
    path: str
    sha256: str
    # "processed" (already done in batch `batch_id`), "failed" (failed in batch `batch_id` for a reason its
    # bytes decide: `FAILED_FOR_GOOD`), "in_progress" (pending in batch `batch_id`, which another run is
    # reading now) or "duplicate" (same content twice in this submission)
    reason: str
    batch_id: int | None = None


@dataclass
class BatchPlan:
    """What `register_batch` decided: the batch, the documents left to process, what was skipped."""

    batch_id: int
    resumed: bool
    todo: list[tuple[int, str]]  # (document id, path) still to process
    total: int  # documents in the batch
    skipped: list[SkippedFile] = field(default_factory=list)
    # Another run holds the batch (`claim` said no): wait for its lock, then read what it left
    # (`take_over_batch`); `todo` is what was pending when it was registered.
    busy: bool = False


def register_batch(
    session: Session,
    files: Sequence[InputFile],
    *,
    force: bool = False,
    template: str | None = None,
    threshold: float | None = None,
    model_version: str | None = None,
    mode: str = "embedded",
    options: dict[str, Any] | None = None,
    claim: Callable[[int], bool] | None = None,
    held_elsewhere: Callable[[int], bool] | None = None,
) -> BatchPlan:
    """Create a batch for `files` (or resume an unfinished one holding exactly these files).

    - The same content twice in one submission is registered once.
    - Without `force`, a file whose content was already processed successfully (any batch) is
      skipped, and an interrupted batch of the same submission is resumed: one holding exactly these
      contents, but for those other batches had read already (skipped when it was created, skipped
      again). Its pending documents are processed, the finished ones kept. So re-running a command
      after Ctrl-C or a crash completes the same batch without duplicates, also in a folder that
      holds yesterday's scans beside today's.
    - With `force`, a new batch processes every file again (results of older batches are kept).
    - `claim(batch_id)` (the embedded run's `locks.BatchLock.try_acquire`) is asked before a batch is
      handed over; where another run holds the batch being resumed, the plan says `busy` and the
      batch is left as it is. Registrations take turns (`hold_registration`), so two runs of one
      submission started together make one batch, not two.
    - `held_elsewhere(batch_id)` (`locks.batch_in_progress`): a new batch leaves out the files still
      pending in an unfinished batch that another run is reading now (skipped, "in_progress"): a
      hot folder submitted again while the last run still reads it gets only what is new.
    """
    hold_registration(session)
    unique: dict[str, InputFile] = {}
    skipped: list[SkippedFile] = []
    for f in files:
        if f.sha256 in unique:
            skipped.append(SkippedFile(f.path, f.sha256, "duplicate"))
        else:
            unique[f.sha256] = f
    shas = set(unique)

    # Contents already read successfully, with the latest batch that read each; asked in chunks, since
    # a statement holds at most 65,535 parameters on PostgreSQL and a day's cheques can be more files.
    done_in: dict[str, int] = {}
    chunks = _chunks(shas)
    if not force:
        for chunk in chunks:
            done_in.update(
                session.execute(
                    select(Document.sha256, func.max(Document.batch_id))
                    .where(Document.sha256.in_(chunk), Document.status.in_(DOCUMENT_FINISHED_OK))
                    .group_by(Document.sha256)
                ).all()
            )

    # Contents that failed for good (`FAILED_FOR_GOOD`) and were never read successfully: skipped too.
    failed_in: dict[str, int] = {}
    if not force:
        for chunk in chunks:
            failed_in.update(
                session.execute(
                    select(Document.sha256, func.max(Document.batch_id))
                    .where(
                        Document.sha256.in_(chunk),
                        Document.status == "failed",
                        Document.error_code.in_(FAILED_FOR_GOOD),
                    )
                    .group_by(Document.sha256)
                ).all()
            )
        for sha in done_in.keys() & failed_in.keys():
            del failed_in[sha]
    known = done_in.keys() | failed_in.keys()

    if not force and shas:
        for batch in _batches_within(session, chunks):
            docs = session.execute(
                select(Document.id, Document.path, Document.sha256, Document.status).where(
                    Document.batch_id == batch.id
                )
            ).all()
            batch_shas = {d.sha256 for d in docs}
            # The same submission: the batch holds its files, but for those that other batches had
            # read already when it was created (skipped then, and now).
            if batch_shas and batch_shas <= shas and (shas - batch_shas) <= known:
                # Pending here but read since by another batch (a run in between that made a batch of
                # its own, a file having arrived): read there, not again here.
                gone = [d for d in docs if d.status in PENDING_DOCUMENT and d.sha256 in done_in]
                if gone and batch.mode == "embedded" and mode == "embedded":
                    _drop_pending(session, [d.id for d in gone])
                    for d in sorted(gone, key=lambda d: unique[d.sha256].path):
                        skipped.append(SkippedFile(unique[d.sha256].path, d.sha256, "processed", done_in[d.sha256]))
                    log.info("batch %s: %d pending document(s) read by other batches since", batch.id, len(gone))
                    gone_ids = {d.id for d in gone}
                    docs = [d for d in docs if d.id not in gone_ids]
                # The files are opened where this submission found them (the stored path is for people:
                # see db_text; and a folder moved since still resumes).
                todo: list[tuple[int, str]] = [
                    (d.id, unique[d.sha256].path) for d in docs if d.status in PENDING_DOCUMENT
                ]
                for sha in sorted(shas - batch_shas, key=lambda h: unique[h].path):
                    if sha in done_in:
                        skipped.append(SkippedFile(unique[sha].path, sha, "processed", done_in[sha]))
                    else:
                        skipped.append(SkippedFile(unique[sha].path, sha, "failed", failed_in[sha]))
                if claim is not None and not claim(batch.id):
                    log.info("batch %s is being read by another run: %d of %d documents left", batch.id,
                             len(todo), len(docs))  # fmt: skip
                    return BatchPlan(batch.id, True, todo, len(docs), skipped, busy=True)
                batch.status = "running"
                session.flush()
                log.info("resuming batch %s: %d of %d documents left", batch.id, len(todo), len(docs))
                return BatchPlan(batch.id, True, todo, len(docs), skipped)

    for sha, batch_id in done_in.items():
        f = unique.pop(sha)
        skipped.append(SkippedFile(f.path, sha, "processed", batch_id))
    for sha, batch_id in failed_in.items():
        f = unique.pop(sha)
        skipped.append(SkippedFile(f.path, sha, "failed", batch_id))
    if held_elsewhere is not None and not force and unique:
        for sha, batch_id in _being_read(session, _chunks(unique), held_elsewhere).items():
            f = unique.pop(sha)
            skipped.append(SkippedFile(f.path, sha, "in_progress", batch_id))
    if held_elsewhere is not None and mode == "embedded":
        _take_over_pending(session, chunks, set(unique), held_elsewhere)
    elif held_elsewhere is not None and mode == "distributed" and unique:
        _take_over_stranded(session, _chunks(unique))

    batch = Batch(
        status="running",
        mode=mode,
        template=template,
        threshold=threshold,
        model_version=model_version,
        options={"force": force, **(options or {})},
    )
    session.add(batch)
    session.flush()
    files_left = list(unique.values())
    rows: list[dict[str, Any]] = [
        {"batch_id": batch.id, "path": db_text(f.path), "sha256": f.sha256, "size_bytes": f.size_bytes,
         "status": "pending"}
        for f in files_left
    ]  # fmt: skip
    todo = []
    if rows:
        ids = session.scalars(insert(Document).returning(Document.id, sort_by_parameter_order=True), rows).all()
        todo = [(i, f.path) for i, f in zip(ids, files_left, strict=True)]  # the path to open, as given
    busy = claim is not None and not claim(batch.id)  # a new batch: only a moment's `status` could hold it
    return BatchPlan(batch.id, False, todo, len(rows), skipped, busy=busy)


def _batches_within(session: Session, chunks: Sequence[Sequence[str]]) -> list[Batch]:
    """The latest unfinished batches (20 at most, newest first) whose every document has one of these
    contents: the ones a submission of them may resume. Counted in the database, so that only those
    batches' documents are loaded, not those of every unfinished batch of tens of thousands of files."""
    recent = session.scalars(
        select(Batch).where(Batch.status.in_(UNFINISHED_BATCH)).order_by(Batch.id.desc()).limit(20)
    ).all()
    if not recent:
        return []
    ids = [b.id for b in recent]
    totals = dict(
        session.execute(
            select(Document.batch_id, func.count()).where(Document.batch_id.in_(ids)).group_by(Document.batch_id)
        ).all()
    )
    inside: dict[int, int] = {}
    for chunk in chunks:
        for batch_id, n in session.execute(
            select(Document.batch_id, func.count())
            .where(Document.batch_id.in_(ids), Document.sha256.in_(chunk))
            .group_by(Document.batch_id)
        ).all():
            inside[batch_id] = inside.get(batch_id, 0) + int(n)
    return [b for b in recent if totals.get(b.id) and inside.get(b.id) == totals[b.id]]


def _chunks(shas: Iterable[str]) -> list[list[str]]:
    """Contents in sorted chunks of `IN_CHUNK`, for IN (...) queries."""
    ordered = sorted(shas)
    return [ordered[i : i + IN_CHUNK] for i in range(0, len(ordered), IN_CHUNK)]


def _being_read(
    session: Session, chunks: Sequence[Sequence[str]], held_elsewhere: Callable[[int], bool]
) -> dict[str, int]:
    """Of these contents, those pending in an unfinished batch that another run holds: {sha: batch}."""
    pending: dict[str, int] = {}
    for chunk in chunks:
        pending.update(
            session.execute(
                select(Document.sha256, func.max(Document.batch_id))
                .join(Batch, Batch.id == Document.batch_id)
                .where(
                    Document.sha256.in_(chunk),
                    Document.status.in_(PENDING_DOCUMENT),
                    Batch.status.in_(UNFINISHED_BATCH),
                    not_(_stranded()),
                )
                .group_by(Document.sha256)
            ).all()
        )
    held = {b for b in set(pending.values()) if held_elsewhere(b)}
    return {sha: b for sha, b in pending.items() if b in held}


def _stranded() -> ColumnElement[bool]:
    """A document of a distributed batch that no run put on the broker (`STRANDED_AFTER`): no worker
    will read it until that batch's own submission is run again, so it is no one's now."""
    return and_(
        Batch.mode == "distributed",
        Document.status == "pending",
        Document.queued_at.is_(None),
        Batch.created_at < now() - STRANDED_AFTER,
    )


def _take_over_stranded(session: Session, chunks: Sequence[Sequence[str]]) -> None:
    """A new distributed batch is about to read these contents: the stranded documents of them
    (`_stranded`) leave their batch, which is closed if nothing is left for it to read. Before, the
    new batch skipped them as "being read" by the stranded batch, and they waited there until the
    orphan sweep queued them or the same file set was submitted again."""
    rows: list[tuple[int, int]] = []
    for chunk in chunks:
        rows += session.execute(
            select(Document.id, Document.batch_id)
            .join(Batch, Batch.id == Document.batch_id)
            .where(Document.sha256.in_(chunk), Batch.status.in_(UNFINISHED_BATCH), _stranded())
        ).all()
    by_batch: dict[int, list[int]] = {}
    for doc_id, batch_id in rows:
        by_batch.setdefault(batch_id, []).append(doc_id)
    for batch_id, ids in sorted(by_batch.items()):
        _drop_pending(session, ids)
        log.info("batch %s: %d document(s) never queued, taken over by a new batch", batch_id, len(ids))
        _close_if_nothing_pending(session, batch_id)


def _take_over_pending(
    session: Session, chunks: Sequence[Sequence[str]], reading: set[str], held_elsewhere: Callable[[int], bool]
) -> None:
    """A new batch is about to read the contents `reading` (of the submission's, in `chunks`). An
    unfinished embedded batch holding some of the submission's contents that no run is reading
    (stopped, and not resumed because the submission has changed since: a file arrived, one cannot be
    read, `--force`) gives up its pending documents of `reading`, which it would otherwise read again
    when its own submission is run again (the same scan in two batches), and, with nothing left
    pending (also one stopped after its last document, before it was closed), it is closed rather than
    left "interrupted" for a run that never comes."""
    rows: list[tuple[int, int, str, str]] = []
    for chunk in chunks:
        rows += session.execute(
            select(Document.id, Document.batch_id, Document.sha256, Document.status)
            .join(Batch, Batch.id == Document.batch_id)
            .where(Document.sha256.in_(chunk), Batch.status.in_(UNFINISHED_BATCH), Batch.mode == "embedded")
        ).all()
    by_batch: dict[int, list[int]] = {}
    for doc_id, batch_id, sha, status in rows:
        ids = by_batch.setdefault(batch_id, [])
        if status in PENDING_DOCUMENT and sha in reading:
            ids.append(doc_id)
    for batch_id, ids in sorted(by_batch.items()):
        if held_elsewhere(batch_id):  # another run reads it now (a `--force` run beside it)
            continue
        if ids:
            _drop_pending(session, ids)
            log.info("batch %s: %d pending document(s) taken over by a new batch", batch_id, len(ids))
        _close_if_nothing_pending(session, batch_id)


def _close_if_nothing_pending(session: Session, batch_id: int) -> None:
    """A batch whose documents were taken over by a new one is closed when none is left to read,
    rather than left "running" or "interrupted" for a run that never comes."""
    if not session.scalar(
        select(func.count()).where(Document.batch_id == batch_id, Document.status.in_(PENDING_DOCUMENT))
    ):
        status = _final_status(document_counts(session, batch_id), interrupted=False)
        session.execute(update(Batch).where(Batch.id == batch_id).values(status=status, finished_at=utcnow()))
        log.info("batch %s: nothing left to read, closed (%s)", batch_id, status)


def _drop_pending(session: Session, ids: Sequence[int]) -> None:
    """Remove documents never read (pending: no page stored) from their batch."""
    for i in range(0, len(ids), IN_CHUNK):
        chunk = list(ids[i : i + IN_CHUNK])
        session.execute(delete(Page).where(Page.document_id.in_(chunk)))
        session.execute(
            delete(Document).where(Document.id.in_(chunk), Document.status.in_(PENDING_DOCUMENT)),
            execution_options={"synchronize_session": False},
        )


def hold_registration(session: Session) -> None:
    """Registrations take turns, for the rest of this transaction: what one reads (batches to resume,
    contents already read) is then what the one before it committed. PostgreSQL: a transaction
    advisory lock; SQLite: its one write lock, taken by a no-op UPDATE (a read first would start from
    a snapshot another registration can make stale)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REGISTRATION_LOCK_KEY})
    elif dialect == "sqlite":
        session.execute(
            update(Batch).where(false()).values(status=Batch.status), execution_options={"synchronize_session": False}
        )


def known_file_hashes(session: Session, paths: Iterable[str]) -> dict[str, tuple[str, str, int]]:
    """The files among `paths` (absolute, as `db_text` gives them) hashed before: {path: (stamp, sha256,
    size)}, the stamp being the file's stat when it was hashed (`pipeline.hashcache`)."""
    out: dict[str, tuple[str, str, int]] = {}
    for chunk in _chunks(paths):
        rows = session.execute(
            select(FileHash.path, FileHash.stamp, FileHash.sha256, FileHash.size_bytes).where(FileHash.path.in_(chunk))
        ).all()
        out.update((r.path, (r.stamp, r.sha256, int(r.size_bytes))) for r in rows)
    return out


def save_file_hashes(session: Session, rows: Sequence[tuple[str, str, str, int]]) -> None:
    """Remember files just hashed, [(path, stamp, sha256, size)], replacing what was known of each path;
    and forget the hashes older than `FILE_HASH_DAYS` (when the table grows: a run that hashed nothing
    writes nothing). On SQLite and PostgreSQL an upsert, in path order, so that two runs saving the same
    files at once neither fail nor deadlock."""
    if not rows:
        return
    now = utcnow()
    session.execute(delete(FileHash).where(FileHash.hashed_at < now - dt.timedelta(days=FILE_HASH_DAYS)))
    latest = {r[0]: r for r in rows}  # a path twice: the last hash of it
    values = [
        {"path": p, "stamp": st, "sha256": sha, "size_bytes": size, "hashed_at": now}
        for p, st, sha, size in (latest[k] for k in sorted(latest))
    ]
    dialect = session.get_bind().dialect.name
    for i in range(0, len(values), FILE_HASH_CHUNK):
        chunk = values[i : i + FILE_HASH_CHUNK]
        if dialect in ("sqlite", "postgresql"):
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as upsert
            else:
                from sqlalchemy.dialects.postgresql import insert as upsert  # type: ignore[assignment]
            stmt = upsert(FileHash).values(chunk)
            session.execute(
                stmt.on_conflict_do_update(
                    index_elements=["path"],
                    set_={c: stmt.excluded[c] for c in ("stamp", "sha256", "size_bytes", "hashed_at")},
                )
            )
        else:
            session.execute(delete(FileHash).where(FileHash.path.in_([v["path"] for v in chunk])))
            session.execute(insert(FileHash), chunk)


def take_over_batch(session: Session, batch_id: int) -> tuple[set[int], str]:
    """After waiting for another run's lock on a batch: the ids of its documents still pending, and
    its status. A batch with pending documents, or left running by a process that is gone, is marked
    running again (this run finishes it); a finished batch is left as it is."""
    batch = get_batch(session, batch_id)
    pending = set(
        session.scalars(
            select(Document.id).where(Document.batch_id == batch_id, Document.status.in_(PENDING_DOCUMENT))
        ).all()
    )
    if pending or batch.status in UNFINISHED_BATCH:
        batch.status = "running"
        session.flush()
    return pending, batch.status


def record_unreadable(session: Session, batch_id: int, path: str, reason: str) -> None:
    """A file that could not even be read (permissions, gone): a failed document of the batch."""
    # A stand-in for the content no one could read, one per path (the path cut to fit made two files of
    # one long folder the same document: a unique-constraint error that ended the whole run).
    stand_in = "unreadable:" + hashlib.sha256(os.fsencode(path)).hexdigest()[:53]
    doc = Document(batch_id=batch_id, path=db_text(path), sha256=stand_in, status="pending")
    session.add(doc)
    session.flush()
    store_document_failure(session, doc.id, "unreadable", f"{path}: {reason}")


def _page_rows(pages: Sequence[PageResult]) -> list[dict[str, Any]]:
    return [
        {
            "number": p.number,
            "width": p.width,
            "height": p.height,
            "skew_degrees": float(p.skew_degrees),
            "rotation": int(p.rotation),
            "timings": {k: round(float(v), 6) for k, v in p.timings.items()} or None,
        }
        for p in pages
    ]


def _box_list(box: Sequence[int] | None) -> list[int] | None:
    return None if box is None else [int(v) for v in box]


def hold_document(session: Session, document_id: int) -> None:
    """Take the write lock on a document for this transaction, before anything of it is read or
    written, with a no-op UPDATE of its row: PostgreSQL locks the row, SQLite takes its one write lock
    (its reads outside a write transaction would not wait for another's commit). Two processes that
    store the same document at once (two re-runs of one interrupted batch) then store it one after the
    other, the second replacing the first's rows, instead of the second failing on the pages' unique
    (document, number); two review corrections in one document re-derive its fields in turn."""
    session.execute(
        update(Document).where(Document.id == document_id).values(status=Document.status),
        execution_options={"synchronize_session": False},
    )


def store_document_results(
    session: Session,
    document_id: int,
    pages: Sequence[PageResult],
    *,
    model_version: str | None,
    seconds: float | None = None,
    timings: dict[str, float] | None = None,
    warnings: Sequence[str] = (),
) -> str:
    """Replace the document's pages/fields/digits with `pages` and mark it done or needs_review.

    `warnings`: what the image decoders said of damaged data while its pages were read
    (`DocumentCut.warnings`), kept with the document.

    Idempotent (a second call replaces the first's rows). Returns the document's new status.
    """
    hold_document(session, document_id)
    session.execute(delete(Page).where(Page.document_id == document_id))
    page_rows = _page_rows(pages)
    for r in page_rows:
        r["document_id"] = document_id
    # Table-level (Core) inserts: the ORM's bulk path costs more per row than the row itself here.
    conn = session.connection()
    # Declarative classes type __table__ as FromClause; these are mapped Tables.
    pages_t = cast(Table, Page.__table__)
    fields_t = cast(Table, Field.__table__)
    digits_t = cast(Table, Digit.__table__)
    page_ids = (
        conn.execute(insert(pages_t).returning(pages_t.c.id, sort_by_parameter_order=True), page_rows).scalars().all()
        if page_rows
        else []
    )
    field_rows: list[dict[str, Any]] = []
    for page_id, page in zip(page_ids, pages, strict=True):
        for ordinal, f in enumerate(page.fields):
            x, y, w, h = (int(v) for v in f.bbox)
            field_rows.append(
                {
                    "page_id": page_id,
                    "ordinal": ordinal,
                    "name": f.name,
                    "kind": f.kind,
                    "x": x,
                    "y": y,
                    "w": w,
                    "h": h,
                    "value": f.value,
                    "confidence": f.confidence,
                    "needs_review": f.needs_review,
                    "flags": list(f.flags),
                    "length": f.length,
                    "pattern": f.pattern,
                    "strip": getattr(f, "strip", None),
                    "strip_box": _box_list(getattr(f, "strip_box", None)),
                }
            )
    field_ids = (
        conn.execute(insert(fields_t).returning(fields_t.c.id, sort_by_parameter_order=True), field_rows)
        .scalars()
        .all()
        if field_rows
        else []
    )
    digit_rows: list[dict[str, Any]] = []
    all_fields = [f for p in pages for f in p.fields]
    for field_id, f in zip(field_ids, all_fields, strict=True):
        for d in f.digits:
            x, y, w, h = (int(v) for v in d.bbox)
            digit_rows.append(
                {
                    "field_id": field_id,
                    "position": d.position,
                    "x": x,
                    "y": y,
                    "w": w,
                    "h": h,
                    "crop": None if d.crop is None or d.blank else bytes(d.crop.astype("uint8").tobytes()),
                    "blank": d.blank,
                    "label": d.label,
                    "confidence": d.confidence,
                    "top3": [list(t) for t in d.top3] or None,
                    "non_digit": d.non_digit,
                    "needs_review": d.needs_review,
                    "model_version": None if d.blank else model_version,
                }
            )
    if digit_rows:
        conn.execute(insert(digits_t), digit_rows)
    status = "needs_review" if any(p.needs_review for p in pages) else "done"
    session.execute(
        update(Document)
        .where(Document.id == document_id)
        .values(
            status=status,
            error_code=None,
            error_message=None,
            page_count=len(pages),
            finished_at=utcnow(),
            seconds=seconds,
            timings={k: round(float(v), 6) for k, v in (timings or {}).items()} or None,
            attempts=Document.attempts + 1,
            warnings=[db_text(w) for w in warnings] or None,
        )
    )
    return status


def store_document_failure(
    session: Session,
    document_id: int,
    code: str,
    message: str,
    *,
    page_count: int | None = None,
    seconds: float | None = None,
) -> None:
    """Mark a document failed with its error (its earlier results, if any, are removed)."""
    hold_document(session, document_id)
    session.execute(delete(Page).where(Page.document_id == document_id))
    session.execute(
        update(Document)
        .where(Document.id == document_id)
        .values(
            status="failed",
            error_code=code[:32],
            error_message=db_text(message),
            page_count=page_count,
            finished_at=utcnow(),
            seconds=seconds,
            attempts=Document.attempts + 1,
            warnings=None,
        )
    )


def _final_status(counts: dict[str, int], *, interrupted: bool) -> str:
    total = sum(counts.values())
    failed = counts.get("failed", 0)
    pending = sum(counts.get(s, 0) for s in PENDING_DOCUMENT)
    if interrupted or pending:
        return "interrupted"
    if failed and failed == total:
        return "failed"
    return "partial" if failed else "done"


def finish_batch(
    session: Session,
    batch_id: int,
    *,
    seconds: float | None = None,
    interrupted: bool = False,
    add_seconds: bool = False,
) -> str:
    """Set the batch's final status from its documents: done, partial, failed (or interrupted).

    `add_seconds`: `seconds` is this run's time on the batch, added to what earlier runs spent on it
    (a batch resumed after a stop: its time is all its runs' time)."""
    status = _final_status(document_counts(session, batch_id), interrupted=interrupted)
    spent: Any = seconds
    if add_seconds and seconds is not None:
        spent = func.coalesce(Batch.seconds, 0.0) + seconds
    values: dict[str, Any] = {"status": status, "seconds": spent}
    if status != "interrupted":
        values["finished_at"] = utcnow()
    session.execute(update(Batch).where(Batch.id == batch_id).values(**values))
    return status


def can_be_id(session: Session, row_id: int) -> bool:
    """Whether `row_id` fits the database's id columns (SQLite's INTEGER: 64 bits; PostgreSQL's: 32). A
    larger one (or one under 1) names no row, and the driver would refuse it: an OverflowError on
    SQLite, "integer out of range" on PostgreSQL, where the caller means "no such row"."""
    sqlite = session.get_bind().dialect.name == "sqlite"
    return 0 < row_id <= (2**63 - 1 if sqlite else 2**31 - 1)


def get_batch(session: Session, batch_id: int | None = None) -> Batch:
    """The batch `batch_id`, or the latest batch when None. Raises NotFoundError, also for an id no
    batch can have (`can_be_id`: `status 99999999999999999999999`)."""
    if batch_id is None:
        batch = session.scalars(select(Batch).order_by(Batch.id.desc()).limit(1)).first()
        if batch is None:
            raise NotFoundError("there are no batches yet", hint="submit some scans: digitreader submit scans/")
        return batch
    batch = session.get(Batch, batch_id) if can_be_id(session, batch_id) else None
    if batch is None:
        raise NotFoundError(f"batch {batch_id} does not exist", hint="digitreader status lists the latest batch")
    return batch


def document_counts(session: Session, batch_id: int) -> dict[str, int]:
    rows = session.execute(
        select(Document.status, func.count()).where(Document.batch_id == batch_id).group_by(Document.status)
    ).all()
    return {status: int(n) for status, n in rows}


def pages_read(session: Session, batch_id: int) -> int:
    """Pages of the batch's documents stored so far (done or needs review): one cheap sum, for
    progress while a batch runs."""
    total = session.scalar(
        select(func.sum(Document.page_count)).where(
            Document.batch_id == batch_id, Document.status.in_(("done", "needs_review"))
        )
    )
    return int(total or 0)


def batch_stats(session: Session, batch_id: int) -> dict[str, int]:
    """Pages (and of them those read turned upright), fields, digits (non-blank), blank cells, flagged
    digits and fields of a batch."""
    pages = select(Page.id).join(Document, Page.document_id == Document.id).where(Document.batch_id == batch_id)
    page_count = session.scalar(select(func.count()).select_from(pages.subquery())) or 0
    turned_q = pages.where(Page.rotation != 0)
    turned = session.scalar(select(func.count()).select_from(turned_q.subquery())) or 0
    field_q = select(Field.id).where(Field.page_id.in_(pages))
    fields = session.scalar(select(func.count()).select_from(field_q.subquery())) or 0
    flagged_fields = (
        session.scalar(select(func.count()).select_from(field_q.where(Field.needs_review.is_(True)).subquery())) or 0
    )
    digit_base = select(Digit.id).where(Digit.field_id.in_(field_q))
    digits = session.scalar(select(func.count()).select_from(digit_base.where(Digit.blank.is_(False)).subquery()))
    blanks = session.scalar(select(func.count()).select_from(digit_base.where(Digit.blank.is_(True)).subquery()))
    flagged = session.scalar(
        select(func.count()).select_from(digit_base.where(Digit.needs_review.is_(True)).subquery())
    )
    return {
        "pages": int(page_count),
        "pages_turned": int(turned),
        "fields": int(fields),
        "flagged_fields": int(flagged_fields),
        "digits": int(digits or 0),
        "blank_cells": int(blanks or 0),
        "flagged_digits": int(flagged or 0),
    }


def current_status(session: Session, batch: Batch) -> str:
    """The batch's status as it stands: "interrupted" for an embedded batch still marked running whose
    run is gone (killed, or its machine stopped: no process holds its `locks.BatchLock`)."""
    if batch.status == "running" and batch.mode == "embedded":
        bind = session.get_bind()
        if isinstance(bind, Engine) and batch_in_progress(bind, batch.id) is False:
            return "interrupted"
    return batch.status


def list_batches(
    session: Session, *, limit: int = 20, status: str | None = None, empty: bool = False
) -> list[dict[str, Any]]:
    """The latest batches, newest first (`digitreader batches`): each one's status as it stands
    (`current_status`), documents by status, pages stored and flagged digits. `status` keeps only
    the batches in that status ("interrupted" includes those still marked running whose run is gone).
    Batches without documents (a hot folder submitted again with nothing new) only with `empty`."""
    query = select(Batch).order_by(Batch.id.desc())
    if not empty:
        query = query.where(_has_documents())
    if status is not None:
        stored = (status, "running") if status == "interrupted" else (status,)
        query = query.where(Batch.status.in_(stored))
    rows: list[tuple[Batch, str]] = []
    # (Batches stored as interrupted or running are few: those are read until `limit` are found.)
    for batch in session.scalars(query if status == "interrupted" else query.limit(limit)):
        now = current_status(session, batch)
        if status is None or now == status:
            rows.append((batch, now))
        if len(rows) == limit:
            break
    ids = [b.id for b, _ in rows]
    by_status: dict[int, dict[str, int]] = {i: {} for i in ids}
    pages: dict[int, int] = {}
    flagged: dict[int, int] = {}
    if ids:
        for batch_id, doc_status, n, page_count in session.execute(
            select(Document.batch_id, Document.status, func.count(), func.sum(Document.page_count))
            .where(Document.batch_id.in_(ids))
            .group_by(Document.batch_id, Document.status)
        ):
            by_status[batch_id][doc_status] = int(n)
            if doc_status in DOCUMENT_FINISHED_OK:
                pages[batch_id] = pages.get(batch_id, 0) + int(page_count or 0)
        flagged = dict(
            session.execute(
                select(Document.batch_id, func.count())
                .select_from(Digit)
                .join(Field, Digit.field_id == Field.id)
                .join(Page, Field.page_id == Page.id)
                .join(Document, Page.document_id == Document.id)
                .where(Document.batch_id.in_(ids), Digit.needs_review.is_(True))
                .group_by(Document.batch_id)
            ).all()
        )
    return [
        {
            "batch": b.id,
            "status": now,
            "mode": b.mode,
            "created_at": iso_utc(b.created_at),
            "finished_at": iso_utc(b.finished_at),
            "seconds": b.seconds,
            "documents": {"total": sum(by_status[b.id].values()), **by_status[b.id]},
            "pages": pages.get(b.id, 0),
            "flagged_digits": int(flagged.get(b.id, 0)),
            "model_version": b.model_version,
        }
        for b, now in rows
    ]


def _has_documents() -> Any:
    return select(Document.id).where(Document.batch_id == Batch.id).exists()


def batch_status(session: Session, batch_id: int | None) -> dict[str, Any]:
    """Where a batch stands (`digitreader status`): its status, model and threshold, documents by
    status, the counts of `batch_stats`, and each failed document's error.

    None: the latest batch with documents, and in `newer_empty` how many batches without any came
    after it (a hot folder submitted again with nothing new makes one each time, and the batch a
    clerk asks about is the last one that read something); the latest batch when none has documents."""
    newer_empty = 0
    if batch_id is None:
        batch = session.scalars(select(Batch).where(_has_documents()).order_by(Batch.id.desc()).limit(1)).first()
        if batch is None:
            batch = get_batch(session)
        else:
            newer_empty = int(session.scalar(select(func.count()).where(Batch.id > batch.id)) or 0)
    else:
        batch = get_batch(session, batch_id)
    counts = document_counts(session, batch.id)
    return {
        "batch": batch.id,
        "status": current_status(session, batch),
        "created_at": iso_utc(batch.created_at),
        "finished_at": iso_utc(batch.finished_at),
        "seconds": batch.seconds,
        "model_version": batch.model_version,
        "model_precision": (batch.options or {}).get("precision"),  # fp32 or int8: the file that read
        "threshold": batch.threshold,
        "documents": {"total": sum(counts.values()), **counts},
        **batch_stats(session, batch.id),
        "failures": [
            {"path": d.path, "code": d.error_code, "message": d.error_message} for d in failures(session, batch.id)
        ],
        "warnings": [{"path": d.path, "status": d.status, "warnings": d.warnings} for d in warned(session, batch.id)],
        "no_fields": [d.path for d in fieldless(session, batch.id)],
        "newer_empty": newer_empty,
    }


def ensure_model_version(
    session: Session,
    version: str,
    sha256: str,
    *,
    path: str | Path | None = None,
    threshold: float | None = None,
    metrics: dict[str, Any] | None = None,
) -> ModelVersion:
    """Register a model the first time it is used; the first model registered becomes active.

    Safe against other processes registering the same version at the same moment (two `submit`s on
    a new database, inference workers starting together): on SQLite and PostgreSQL the row is
    inserted with ON CONFLICT DO NOTHING, so the one that comes second keeps the first one's row
    instead of failing on the unique version."""
    found = select(ModelVersion).where(ModelVersion.version == version)
    mv = session.scalars(found).first()
    if mv is not None:
        return mv
    has_active = session.scalar(select(func.count()).where(ModelVersion.status == "active")) or 0
    values = {
        "version": version,
        "sha256": sha256,
        "path": str(path) if path is not None else None,
        "threshold": threshold,
        "metrics": metrics,
        "status": "candidate" if has_active else "active",
        "created_at": utcnow(),
    }
    dialect = session.get_bind().dialect.name
    if dialect not in ("sqlite", "postgresql"):
        mv = ModelVersion(**values)
        session.add(mv)
        session.flush()
        return mv
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as upsert
    else:
        from sqlalchemy.dialects.postgresql import insert as upsert  # type: ignore[assignment]
    session.execute(upsert(ModelVersion).values(**values).on_conflict_do_nothing(index_elements=["version"]))
    return session.scalars(found).one()


def failures(session: Session, batch_id: int) -> list[Document]:
    return list(
        session.scalars(
            select(Document).where(Document.batch_id == batch_id, Document.status == "failed").order_by(Document.id)
        ).all()
    )


def warned(session: Session, batch_id: int) -> list[Document]:
    """The batch's documents read from damaged image data (with `warnings`)."""
    return list(
        session.scalars(
            select(Document)
            .where(Document.batch_id == batch_id, Document.warnings.is_not(None), Document.status != "failed")
            .order_by(Document.id)
        ).all()
    )


def fieldless(session: Session, batch_id: int) -> list[Document]:
    """The batch's documents read (done or needing review) in which no digit field was found."""
    has_field = select(Field.id).join(Page, Field.page_id == Page.id).where(Page.document_id == Document.id).exists()
    return list(
        session.scalars(
            select(Document)
            .where(Document.batch_id == batch_id, Document.status.in_(("done", "needs_review")), ~has_field)
            .order_by(Document.id)
        ).all()
    )


def iter_documents(session: Session, batch_id: int) -> Iterable[Document]:
    return session.scalars(select(Document).where(Document.batch_id == batch_id).order_by(Document.id))


def now() -> dt.datetime:
    return utcnow()
