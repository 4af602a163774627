"""Distributed mode: the library side of the Celery worker pools (`workers/` holds thin tasks).

The same pipeline functions as the embedded mode (`digitreader.pipeline.process`): the page pool
runs `segment_document` per document, the inference pool runs `recognize_pages` over crops of many
documents at once, then `assemble_document` and `store.store_document_results` per document.

Flow of one batch:

1. `submit_batch` registers the batch and its documents (`store.register_batch`, mode
   "distributed") and COMMITS, then publishes one `pages` task per document carrying only the
   document id. Publishing after the commit means a worker never sees an id that is not in the
   database; a crash between the two leaves pending documents that re-running the same submit
   publishes again (the batch is resumed, not duplicated).
2. A page worker (`run_page_job`) claims the document row (`claim_job`: reads it and marks it
   processing in one transaction), segments it and publishes an `infer` task with the crops as
   compact bytes (`workers.codec`, ~15 KB a page, plus the fields' strips); a bad file is stored
   as failed right there. A PDF or TIFF longer than `settings.part_pages` is queued instead as one
   part task per few pages (`run_part_job`), which several page workers run at once; each keeps its
   part's cut in Redis (`PartCuts`) and the one that brings the last in joins them and goes on as
   above.
3. The inference worker (`run_infer_batch`) receives many such tasks, recognizes their crops in
   one batch, stores each document in its own transaction and closes the batch when none is left
   pending (`finish_if_complete`).

Every step is idempotent: a document already finished is skipped, and storing replaces its rows
under a row lock, so a redelivered message never duplicates a digit. Deliveries that died (worker
killed, hard time limit) are counted in Redis (`Deliveries`); past `settings.max_redeliveries` the
document is failed with code `worker_lost` instead of looping.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from digitreader import registry
from digitreader.db import Batch, Document, session_scope, store
from digitreader.db.locks import batch_in_progress
from digitreader.db.session import get_engine
from digitreader.errors import BrokerError, DatabaseError, UsageError
from digitreader.pipeline.document import DocumentCut, join_parts, page_parts, segment_document
from digitreader.pipeline.hashcache import HashCache
from digitreader.pipeline.process import (
    assemble_document,
    collect_inputs,
    hash_inputs,
    leave_unsettled,
    recognize_pages,
)
from digitreader.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Queues: CPU page work, and batched inference.
PAGES_QUEUE = "pages"
INFER_QUEUE = "infer"
QUEUES = (PAGES_QUEUE, INFER_QUEUE)
#: Task names (stable: they are in the messages).
SEGMENT_TASK = "digitreader.segment"
PART_TASK = "digitreader.segment_part"
INFER_TASK = "digitreader.infer"
#: Message header carrying the number of crops of an infer task (flush-by-size counts these).
CROPS_HEADER = "digitreader_crops"

FINISHED = ("done", "needs_review", "failed")
PENDING = store.PENDING_DOCUMENT  # ("pending", "processing")


# ----------------------------------------------------------------------------------- time limits


@dataclass(frozen=True)
class Limits:
    """Time limits of one document, and the broker's visibility timeout derived from them.

    soft: SoftTimeLimitExceeded is raised in the task -> the document fails with code `timeout`.
    hard: the worker process is killed -> the message is requeued and counted as a lost delivery.
    visibility: a message not acknowledged this long after delivery is given to another worker
    (Redis). It must exceed any task (hard limit) plus the longest retry countdown, or a slow but
    healthy task would run twice; it is also how long a document held by a worker that was killed
    as a whole waits before another worker takes it.
    """

    soft: float
    hard: float
    retry_backoff_max: int
    visibility: int


def limits(settings: Settings) -> Limits:
    soft = float(settings.document_time_limit)
    hard = soft + max(5.0, 0.25 * soft)
    backoff = int(min(30, max(5, soft)))
    return Limits(soft, hard, backoff, int(2 * hard + backoff + 1))


# -------------------------------------------------------------------------------- transient errors


class TransientError(Exception):
    """A broker or database error worth retrying (connection refused/reset, server restarting)."""


def is_transient(exc: BaseException) -> bool:
    """True for connection-level errors of the database or the broker; False for everything else
    (a bug or a bad document must not be retried: it would fail the same way)."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    if isinstance(exc, TransientError | OperationalError | InterfaceError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, DatabaseError):  # session_scope wraps OperationalError into DatabaseError
        return isinstance(exc.__cause__, OperationalError | InterfaceError)
    try:
        import redis.exceptions
        from kombu.exceptions import OperationalError as KombuOperationalError

        return isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | KombuOperationalError)
    except ImportError:  # pragma: no cover - celery[redis] is a runtime dependency
        return False


def retry_transient(fn: Callable[[], T], *, what: str, deadline: float = 120.0, logger: Any = None) -> T:
    """Call `fn`, retrying transient errors with exponential backoff (0.2 s doubling to 5 s, with
    jitter) for up to `deadline` seconds; then the last error is raised. Other errors at once."""
    logger = logger or log
    end = time.monotonic() + deadline
    delay = 0.2
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > end:
                raise
            logger.warning("%s: %s; retrying in %.1f s", what, _short(exc), delay)
            time.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(5.0, delay * 2)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# ------------------------------------------------------------------------------------ logging


class DocumentLog(logging.LoggerAdapter):
    """Log records carrying `batch_id` and `document_id` (as extra fields, and in the message)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"[batch {extra.get('batch_id')} document {extra.get('document_id')}] {msg}", kwargs


def doc_log(batch_id: int | None, document_id: int | None) -> DocumentLog:
    return DocumentLog(log, {"batch_id": batch_id, "document_id": document_id})


# ------------------------------------------------------------------------------ delivery counting


class Deliveries:
    """Per-document count of deliveries that did not come back, kept in Redis (not in memory:
    the process that would remember is the one that died).

    `start` increments and returns the count; `done` decrements when the task ends normally
    (success, handled failure, or a retry). So the count is the number of deliveries that
    crashed or were killed, plus one. Keys live a day and are namespaced by database, so several
    deployments (or test runs) can share one Redis.
    """

    TTL = 86_400

    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    @classmethod
    def from_settings(cls, settings: Settings) -> Deliveries:
        import redis

        url = settings.broker_url or ""
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise UsageError(f"the distributed mode needs a Redis broker, not {_redact(url)!r}",
                             hint="set DIGITREADER_BROKER_URL=redis://host:6379/0")  # fmt: skip
        ns = hashlib.sha1(settings.resolved_database_url.encode()).hexdigest()[:10]
        return cls(redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5), ns)

    def _key(self, stage: str, document_id: int) -> str:
        return f"digitreader:{self.namespace}:deliveries:{stage}:{document_id}"

    def start(self, stage: str, document_id: int, deadline: float = 120.0) -> int:
        key = self._key(stage, document_id)

        def incr() -> int:
            pipe = self.client.pipeline()
            pipe.incr(key)
            pipe.expire(key, self.TTL)
            return int(pipe.execute()[0])

        return retry_transient(incr, what="counting a delivery", deadline=deadline)

    def done(self, stage: str, document_id: int) -> None:
        key = self._key(stage, document_id)
        try:
            retry_transient(lambda: self.client.decr(key), what="counting a delivery", deadline=30)
        except Exception as exc:  # a missed decrement only makes the cap one delivery stricter
            log.warning("could not decrement %s: %s", key, _short(exc))

    def count(self, stage: str, document_id: int) -> int:
        return int(self.client.get(self._key(stage, document_id)) or 0)


# -------------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class DocumentJob:
    """What a worker needs to know about one document (read from the database by id)."""

    document_id: int
    batch_id: int
    path: str  # as submitted (what the export shows)
    status: str
    template: str | None
    threshold: float | None
    cwd: str | None  # where `submit` ran: relative paths are resolved against it

    def resolve(self, p: str) -> str:
        if self.cwd and not os.path.isabs(p):
            return os.path.join(self.cwd, p)
        return p

    @property
    def file(self) -> str:
        return self.resolve(self.path)


def _job_query(document_id: int) -> Any:
    return (
        select(
            Document.id,
            Document.batch_id,
            Document.path,
            Document.status,
            Batch.template,
            Batch.threshold,
            Batch.options,
        )
        .join(Batch, Batch.id == Document.batch_id)
        .where(Document.id == document_id)
    )


def _job(row: Any) -> DocumentJob:
    cwd = (row.options or {}).get("cwd") if isinstance(row.options, dict) else None
    return DocumentJob(row.id, row.batch_id, row.path, row.status, row.template, row.threshold, cwd)


def load_job(engine: Engine, document_id: int) -> DocumentJob | None:
    with session_scope(engine=engine) as s:
        row = s.execute(_job_query(document_id)).first()
    return None if row is None else _job(row)


def _mark_processing(document_id: int) -> Any:
    return (
        update(Document)
        .where(Document.id == document_id, Document.status == "pending")
        .values(status="processing", started_at=store.now())
    )


def claim_job(engine: Engine, document_id: int) -> DocumentJob | None:
    """`load_job`, and in the same transaction mark a pending document processing (started now).

    The job keeps the status read before the change: "pending" means this delivery claimed it; a
    redelivery sees "processing" (and keeps the first start time); a finished document is left as
    it is. The page task's only database work before segmenting, so it is kept to few round trips.

    On PostgreSQL it is ONE statement (the update as a data-modifying CTE, which PostgreSQL runs
    whether or not the query reads it; the select sees the row as it was before), and it commits
    without waiting for the disk flush (`set_config('synchronous_commit', 'off', true)`: this
    transaction only; ~2 ms a page). A server crash can lose at most the last few marks, which
    leaves those documents pending, and pending documents are processed all the same; every later
    commit (the results) is synchronous and flushes this one with it."""
    if engine.dialect.name == "postgresql":
        query = (
            _job_query(document_id)
            .add_cte(_mark_processing(document_id).returning(Document.id).cte("claimed"))
            .add_columns(func.set_config("synchronous_commit", "off", True).label("commit_mode"))
        )
        with engine.begin() as conn:
            row = conn.execute(query).first()
        return None if row is None else _job(row)
    with session_scope(engine=engine) as s:
        row = s.execute(_job_query(document_id)).first()
        if row is not None and row.status == "pending":
            s.execute(_mark_processing(document_id))
    return None if row is None else _job(row)


def store_failure(engine: Engine, document_id: int, code: str, message: str, **kw: Any) -> bool:
    """Mark the document failed unless it is already finished. True when this call stored it."""
    with session_scope(engine=engine) as s:
        status = s.scalar(select(Document.status).where(Document.id == document_id).with_for_update())
        if status is None or status in FINISHED:
            return False
        store.store_document_failure(s, document_id, code, message, **kw)
    return True


def store_results(engine: Engine, document_id: int, results: Sequence[Any], **kw: Any) -> str | None:
    """Store a document's results unless it is already finished (then None): the row lock makes
    two deliveries of the same document store it once."""
    with session_scope(engine=engine) as s:
        status = s.scalar(select(Document.status).where(Document.id == document_id).with_for_update())
        if status is None or status in FINISHED:
            return None
        return store.store_document_results(s, document_id, results, **kw)


def finish_if_complete(engine: Engine, batch_id: int) -> str | None:
    """Close the batch (done / partial / failed) when no document is left pending; else None.

    Called after every document is stored, in its own transaction after that commit, so the last
    document to commit always sees the others (a second close of the same batch is harmless)."""
    with session_scope(engine=engine) as s:
        pending = s.scalar(select(func.count()).where(Document.batch_id == batch_id, Document.status.in_(PENDING)))
        if pending:
            return None
        batch = s.get(Batch, batch_id)
        if batch is None:
            return None
        if batch.status not in store.UNFINISHED_BATCH:
            return batch.status
        created = batch.created_at
        seconds = None
        if created is not None:
            if created.tzinfo is None:
                created = created.replace(tzinfo=store.now().tzinfo)
            seconds = max(0.0, (store.now() - created).total_seconds())
        status = store.finish_batch(s, batch_id, seconds=seconds)
    log.info("batch %s finished: %s", batch_id, status)
    return status


def fail_unexpected(settings: Settings, document_id: int, exc: BaseException) -> None:
    """A bug outside the per-document error handling: fail this document (never the batch), so
    it does not stay pending for ever. Best effort: logged if even that cannot be stored."""
    try:
        engine = get_engine(settings)
        job = load_job(engine, document_id)
        if job is None:
            return
        msg = f"{job.path}: unexpected error in the distributed pipeline: {exc!r}"
        retry_transient(lambda: store_failure(engine, document_id, "internal", msg), what="storing a failure")
        finish_if_complete(engine, job.batch_id)
    except Exception:
        log.exception("document %s: could not record the failure", document_id)


# ------------------------------------------------------------------------------ the page stage


@dataclass(frozen=True)
class PageOutcome:
    status: str  # segmented | failed | skipped | missing | split (parts queued) | part (others still out)
    job: DocumentJob | None = None
    crops: int = 0
    #: Where a segmented document's page task spent its time (see `page_trace`); empty otherwise.
    trace: dict[str, float] = field(default_factory=dict)


def page_trace(start: float, end: float, setup: float, cut: DocumentCut, encode: float, publish: float, done: float,
               size: int) -> dict[str, float]:  # fmt: skip
    """One page task, for the log and the benchmark: `start`/`end` are wall-clock times (epoch
    seconds) of the task body; the others are seconds spent on: `setup` (claiming the document,
    counting the delivery), decode/segment/strips (`segment_document`), `encode` (the
    crops to bytes), `publish` (the infer message to the broker), `done` (the delivery count back
    down); `bytes` is the encoded cut's size and `pid` the worker process."""
    trace = {"start": start, "end": end, "setup": setup}
    trace.update({k: float(cut.timings.get(k, 0.0)) for k in ("decode", "segment", "strips")})
    trace.update(encode=encode, publish=publish, done=done, bytes=float(size), pid=float(os.getpid()))
    return trace


Publish = Callable[[DocumentJob, bytes, int], None]
#: Queues part `index` of `count` (pages first-last, from 1) of a long document for the page pool.
PublishPart = Callable[[DocumentJob, int, int, tuple[int, int]], None]


class PartCuts:
    """The encoded cuts of a long document's parts, kept in Redis until the last one is in.

    Each part task puts its part's cut (`put`, one Redis transaction: store it, count the parts in);
    a task that finds every part in gets them all back, in page order, to join and hand on. A
    redelivered part overwrites its own entry, so it is never counted twice; two tasks that both
    find the set complete both hand it on, which the inference stage stores once. Keyed by the
    document and the number of parts (the same count always means the same page ranges); kept a
    day at most, deleted once handed on."""

    TTL = 86_400

    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    @classmethod
    def beside(cls, deliveries: Deliveries) -> PartCuts:
        """On the same Redis, under the same namespace, as the delivery counts."""
        return cls(deliveries.client, deliveries.namespace)

    def _key(self, document_id: int, count: int) -> str:
        return f"digitreader:{self.namespace}:parts:{document_id}:{count}"

    def put(self, document_id: int, index: int, count: int, blob: bytes, deadline: float = 120.0) -> list[bytes] | None:
        """Store part `index`'s cut; every part's cut (index order) when all `count` are in, else None."""
        key = self._key(document_id, count)

        def put() -> int:
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(key, str(index), blob)
            pipe.expire(key, self.TTL)
            pipe.hlen(key)
            return int(pipe.execute()[-1])

        if retry_transient(put, what="keeping a part's cut", deadline=deadline) < count:
            return None
        got = retry_transient(lambda: self.client.hgetall(key), what="reading the parts' cuts", deadline=deadline)
        parts = [got.get(str(i).encode()) for i in range(count)]
        return None if any(b is None for b in parts) else parts  # another task joined them and cleared the key

    def clear(self, document_id: int, count: int) -> None:
        try:
            retry_transient(lambda: self.client.delete(self._key(document_id, count)), what="clearing parts",
                            deadline=30)  # fmt: skip
        except Exception as exc:  # the key expires on its own
            log.warning("could not clear the parts of document %s: %s", document_id, _short(exc))


def _start_delivery(
    engine: Engine, document_id: int, settings: Settings, deliveries: Deliveries, stage: str, *, claim: bool
) -> tuple[DocumentJob | None, PageOutcome | None, float]:
    """The start of a page-pool task: read (and with `claim`, claim) the document and count this
    delivery. Returns (job, None, wait) to go on, or (None, outcome, wait) when there is nothing to do
    (the document does not exist or is finished; no delivery was counted then)."""
    lim = limits(settings)
    # Short in-task retries (the time limit is running); a longer outage is raised for the task to
    # be retried later with backoff, off the clock.
    wait = min(30.0, max(2.0, lim.soft / 3))
    read = claim_job if claim else load_job
    job = retry_transient(lambda: read(engine, document_id), what=f"document {document_id}", deadline=wait)
    if job is None:
        log.warning("document %s does not exist (batch deleted?): message dropped", document_id)
        return None, PageOutcome("missing"), wait
    if job.status in FINISHED:
        doc_log(job.batch_id, document_id).info("already %s: nothing to do (duplicate delivery)", job.status)
        return None, PageOutcome("skipped", job), wait
    n = deliveries.start(stage, document_id, deadline=wait)
    if n > settings.max_redeliveries:
        msg = (f"{job.path}: the worker processing this document died {n - 1} times (crashed, killed, "
               f"or past the hard time limit of {lim.hard:.0f} s); given up after "
               f"{settings.max_redeliveries} deliveries")  # fmt: skip
        doc_log(job.batch_id, document_id).error("%s", msg)
        try:
            retry_transient(lambda: store_failure(engine, document_id, "worker_lost", msg), what="storing",
                            deadline=wait)  # fmt: skip
            retry_transient(lambda: finish_if_complete(engine, job.batch_id), what="closing the batch", deadline=wait)
        finally:
            deliveries.done(stage, document_id)
        return None, PageOutcome("failed", job), wait
    return job, None, wait


def _segment(job: DocumentJob, settings: Settings, pages: tuple[int, int] | None = None) -> DocumentCut:
    """`segment_document` for a page task: the batch's template, the splitter the settings name, and
    an overrun of the soft time limit reported as `timeout`."""
    lim = limits(settings)
    t0 = time.monotonic()
    template = None
    if job.template:
        from digitreader.pipeline.templates import load_template

        template = load_template(job.resolve(job.template))
    # The splitter follows the active reader only when told to (DIGITREADER_SPLITTER=reader).
    reader = registry.active_model_file(settings) if settings.splitter.strip() == "reader" else None
    cut = segment_document(job.file, settings, template, model_path=reader, pages=pages)
    if cut.failed and cut.error_code == "internal" and time.monotonic() - t0 >= lim.soft * 0.99:
        part = f" (pages {pages[0]}-{pages[1]})" if pages else ""
        msg = f"{job.path}: took longer than the time limit of {lim.soft:.0f} s{part} (DIGITREADER_DOCUMENT_TIME_LIMIT)"
        cut = DocumentCut(job.path, (), "timeout", msg, None, cut.seconds)
    return cut


def _hand_on(
    engine: Engine, job: DocumentJob, cut: DocumentCut, *, publish: Publish, encode: Callable[[DocumentCut], bytes],
    wait: float,
) -> tuple[int, float, float] | None:  # fmt: skip
    """A document's whole cut, out of the page pool: a failed one is stored as failed (and the batch
    closed if it was the last), a good one encoded and published to the inference pool. Returns the
    encoded size and the seconds spent encoding and publishing, or None when it failed."""
    dlog = doc_log(job.batch_id, job.document_id)
    if cut.failed:
        message = (cut.error_message or "").replace(job.file, job.path)
        dlog.info("failed: %s: %s", cut.error_code, message)
        if cut.traceback:
            dlog.warning("unexpected error:\n%s", cut.traceback)
        retry_transient(
            lambda: store_failure(
                engine, job.document_id, cut.error_code or "internal", message, page_count=cut.page_count,
                seconds=cut.seconds,
            ),
            what="storing a failure",
            deadline=wait,
        )  # fmt: skip
        retry_transient(lambda: finish_if_complete(engine, job.batch_id), what="closing the batch", deadline=wait)
        return None
    if cut.warnings:
        dlog.warning("damaged image data, read as far as it decodes: %s", "; ".join(cut.warnings))
    t = time.perf_counter()
    blob = encode(cut)
    t_encode = time.perf_counter() - t
    publish(job, blob, cut.crops)
    return len(blob), t_encode, time.perf_counter() - t - t_encode


def _with_setup(cut: DocumentCut, setup: float) -> DocumentCut:
    """`cut` with the task's `setup` seconds among its timings (stored with the document's others)."""
    if cut.failed:
        return cut
    return dataclasses.replace(cut, timings={**cut.timings, "setup": cut.timings.get("setup", 0.0) + setup})


def run_page_job(
    document_id: int,
    settings: Settings,
    *,
    publish: Publish,
    deliveries: Deliveries,
    encode: Callable[[DocumentCut], bytes],
    publish_part: PublishPart | None = None,
    crash: Callable[[], None] = lambda: os._exit(70),
) -> PageOutcome:
    """The page pool's work for one document: load, prepare, segment, normalize (via
    `segment_document`), then hand the crops to the inference pool through `publish`.

    A PDF or TIFF longer than `settings.part_pages` is not segmented here when `publish_part` is
    given: its parts are queued for the page pool (`run_part_job`), so several page workers cut it
    at once, as the embedded pool does (status "split").

    Transient database errors are retried here (`retry_transient`); what is still failing is
    raised for the task to retry later. A bad document is stored as failed (the batch goes on).
    """
    start, t_start = time.time(), time.perf_counter()
    engine = get_engine(settings)
    job, outcome, wait = _start_delivery(engine, document_id, settings, deliveries, "page", claim=True)
    if job is None:
        return outcome or PageOutcome("missing")
    dlog = doc_log(job.batch_id, document_id)
    try:
        if settings.test_crash_on and fnmatch.fnmatch(os.path.basename(job.path), settings.test_crash_on):
            dlog.error("DIGITREADER_TEST_CRASH_ON matches: exiting hard (tests only)")
            crash()
        spans = [p for p in page_parts(job.file, settings) if p is not None] if publish_part else []
        if publish_part and len(spans) > 1:  # page_parts gives [None] for a document read whole
            for index, pages in enumerate(spans):
                publish_part(job, index, len(spans), pages)
            dlog.info("%d pages: queued in %d parts for the page workers", spans[-1][1], len(spans))
            return PageOutcome("split", job)
        setup = time.perf_counter() - t_start
        cut = _with_setup(_segment(job, settings), setup)
        sent = _hand_on(engine, job, cut, publish=publish, encode=encode, wait=wait)
        if sent is None:
            return PageOutcome("failed", job)
        size, t_encode, t_publish = sent
    finally:
        t = time.perf_counter()
        deliveries.done("page", document_id)
        t_done = time.perf_counter() - t
    trace = page_trace(start, time.time(), setup, cut, t_encode, t_publish, t_done, size)
    dlog.info("segmented: %d page(s), %d crops, %.2f s, %d bytes to infer; page task %s", len(cut.pages), cut.crops,
              cut.seconds, size, json.dumps(trace, separators=(",", ":")))  # fmt: skip
    return PageOutcome("segmented", job, cut.crops, trace)


def run_part_job(
    document_id: int,
    index: int,
    count: int,
    pages: tuple[int, int],
    settings: Settings,
    *,
    publish: Publish,
    deliveries: Deliveries,
    parts: PartCuts,
    encode: Callable[[DocumentCut], bytes],
    decode: Callable[[bytes], DocumentCut],
) -> PageOutcome:
    """Part `index` of the `count` parts of a long document (`pages`: first, last, from 1), queued by
    `run_page_job`: segment those pages and keep their cut in `parts`. The task that brings the last
    part in joins them (`join_parts`: the first failed part fails the document, with its own error)
    and hands the document on as `run_page_job` would have: to the inference pool, or stored as
    failed. Status "part" when other parts are still out, else as `run_page_job`'s."""
    t_start = time.perf_counter()
    engine = get_engine(settings)
    stage = f"part{index}"
    job, outcome, wait = _start_delivery(engine, document_id, settings, deliveries, stage, claim=False)
    if job is None:
        return outcome or PageOutcome("missing")
    dlog = doc_log(job.batch_id, document_id)
    try:
        cut = _with_setup(_segment(job, settings, pages), time.perf_counter() - t_start)
        blobs = parts.put(document_id, index, count, encode(cut), deadline=wait)
        if blobs is None:
            dlog.info("part %d/%d (pages %d-%d) segmented: %d crops, %.2f s", index + 1, count, *pages, cut.crops,
                      cut.seconds)  # fmt: skip
            return PageOutcome("part", job, cut.crops)
        whole = join_parts([decode(b) for b in blobs])
        sent = _hand_on(engine, job, whole, publish=publish, encode=encode, wait=wait)
        parts.clear(document_id, count)
    finally:
        deliveries.done(stage, document_id)
    if sent is None:
        return PageOutcome("failed", job)
    dlog.info("segmented in %d parts: %d page(s), %d crops, %.2f s, %d bytes to infer", count, len(whole.pages),
              whole.crops, whole.seconds, sent[0])  # fmt: skip
    return PageOutcome("segmented", job, whole.crops)


# ------------------------------------------------------------------------- the inference stage


@dataclass(frozen=True)
class InferItem:
    document_id: int
    batch_id: int
    cut: DocumentCut


@dataclass
class InferOutcome:
    stored: dict[int, str] = field(default_factory=dict)  # document id -> status
    skipped: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    retry: list[InferItem] = field(default_factory=list)  # could not be stored (database down)
    groups: int = 0
    crops: int = 0
    seconds: float = 0.0


_model_registered: set[tuple[str, str]] = set()


def register_model(engine: Engine, predictor: Any) -> None:
    """Record the inference worker's model in the registry (once per process and database)."""
    info = predictor.info
    key = (str(engine.url), str(info.version))
    if key in _model_registered:
        return

    def do() -> None:
        with session_scope(engine=engine) as s:
            store.ensure_model_version(s, str(info.version), str(info.sha256), path=getattr(info, "path", None),
                                       threshold=float(info.threshold))  # fmt: skip

    retry_transient(do, what="registering the model")
    _model_registered.add(key)


def _batch_thresholds(engine: Engine, batch_ids: Iterable[int], version: str) -> dict[int, float | None]:
    ids = sorted(set(batch_ids))
    with session_scope(engine=engine) as s:
        rows = s.execute(select(Batch.id, Batch.threshold).where(Batch.id.in_(ids))).all()
        # The batch's model is the inference pool's: recorded the first time it reads one.
        s.execute(update(Batch).where(Batch.id.in_(ids), Batch.model_version.is_(None)).values(model_version=version))
    return {int(r.id): r.threshold for r in rows}


def one_per_document(items: Sequence[InferItem]) -> list[InferItem]:
    """The first item of each document. Two copies of one document's message can meet in a batch
    (one restored by the broker's visibility timeout while the other was still buffered): they
    are one delivery for the redelivery count, and storing the document once is enough."""
    seen: set[int] = set()
    out = []
    for it in items:
        if it.document_id in seen:
            doc_log(it.batch_id, it.document_id).info("a second copy in the same batch: dropped")
            continue
        seen.add(it.document_id)
        out.append(it)
    return out


def run_infer_batch(
    items: Sequence[InferItem],
    settings: Settings,
    *,
    predictor: Any,
    deliveries: Deliveries,
    store_deadline: float = 120.0,
) -> InferOutcome:
    """The inference pool's work: recognize the crops of many documents in batches spanning them
    (`recognize_pages` with settings.batch_size), then assemble and store each document.

    Items delivered before without coming back (the worker died with them) are run one document
    at a time, so an innocent document is not failed for sharing a batch with a poison one; past
    the redelivery cap a document is failed with code `worker_lost`. Items whose results cannot be
    stored (database down past `store_deadline`) are returned in `.retry`.
    """
    t_start = time.perf_counter()
    out = InferOutcome()
    engine = get_engine(settings)
    refresh = getattr(predictor, "refresh", None)  # registry.LivePredictor: follow the active model
    if refresh is not None:
        retry_transient(refresh, what="checking the active model", deadline=store_deadline)
    register_model(engine, predictor)
    version = str(predictor.info.version)
    items = one_per_document(items)
    counts = {it.document_id: deliveries.start("infer", it.document_id) for it in items}
    try:
        normal: list[InferItem] = []
        suspects: list[InferItem] = []
        for it in items:
            n = counts[it.document_id]
            if n > settings.max_redeliveries:
                msg = (f"{it.cut.path}: the inference worker died {n - 1} times while reading this document; "
                       f"given up after {settings.max_redeliveries} deliveries")  # fmt: skip
                doc_log(it.batch_id, it.document_id).error("%s", msg)
                if retry_transient(partial(store_failure, engine, it.document_id, "worker_lost", msg),
                                   what="storing", deadline=store_deadline):  # fmt: skip
                    out.failed.append(it.document_id)
                retry_transient(partial(finish_if_complete, engine, it.batch_id), what="closing the batch")
            elif n > 1:
                suspects.append(it)
            else:
                normal.append(it)
        groups = ([normal] if normal else []) + [[s] for s in suspects]
        for group in groups:
            _infer_group(group, settings, engine, predictor, version, out, store_deadline)
        out.groups = len(groups)
    finally:
        for doc_id in counts:
            deliveries.done("infer", doc_id)
    out.seconds = time.perf_counter() - t_start
    return out


def _infer_group(
    group: Sequence[InferItem],
    settings: Settings,
    engine: Engine,
    predictor: Any,
    version: str,
    out: InferOutcome,
    deadline: float,
) -> None:
    thresholds = retry_transient(
        lambda: _batch_thresholds(engine, (it.batch_id for it in group), version), what="reading batches",
        deadline=deadline,
    )  # fmt: skip
    pages = [p for it in group for p in it.cut.pages]
    t = time.perf_counter()
    probs = recognize_pages(predictor, pages, settings.batch_size)
    rec_seconds = time.perf_counter() - t
    total = max(1, sum(it.cut.crops for it in group))
    out.crops += sum(it.cut.crops for it in group)
    row = 0
    finished_batches: set[int] = set()
    for it in group:
        n = len(it.cut.pages)
        doc_probs: list[np.ndarray] = probs[row : row + n]
        row += n
        dlog = doc_log(it.batch_id, it.document_id)
        thr = thresholds.get(it.batch_id)
        if thr is None:
            thr = settings.threshold if settings.threshold is not None else float(predictor.info.threshold)
        try:
            results = assemble_document(it.cut, doc_probs, float(thr))
        except Exception as exc:  # a segmentation/recognition mismatch is a bug: this document only
            dlog.exception("cannot assemble")
            msg = f"{it.cut.path}: {exc!r}"
            if retry_transient(partial(store_failure, engine, it.document_id, "internal", msg),
                               what="storing", deadline=deadline):  # fmt: skip
                out.failed.append(it.document_id)
            finished_batches.add(it.batch_id)
            continue
        timings = dict(it.cut.timings)
        timings["recognize"] = rec_seconds * it.cut.crops / total
        try:
            status = retry_transient(
                partial(
                    store_results,
                    engine,
                    it.document_id,
                    results,
                    model_version=version,
                    seconds=it.cut.seconds + timings["recognize"],
                    timings=timings,
                    warnings=it.cut.warnings,
                ),
                what=f"storing document {it.document_id}",
                deadline=deadline,
                logger=dlog,
            )
        except Exception as exc:
            if not is_transient(exc):
                raise
            dlog.error("could not store the results (%s): handing the document back", _short(exc))
            out.retry.append(it)
            continue
        if status is None:
            dlog.info("already finished: results of this duplicate delivery dropped")
            out.skipped.append(it.document_id)
        else:
            dlog.info("stored: %s", status)
            out.stored[it.document_id] = status
        finished_batches.add(it.batch_id)
    for batch_id in sorted(finished_batches):
        retry_transient(partial(finish_if_complete, engine, batch_id), what="closing the batch", deadline=deadline)


# ----------------------------------------------------------------------------------- submitting


@dataclass
class Submission:
    """What `submit_batch` did: the batch, how many documents were queued, what was skipped."""

    batch_id: int
    resumed: bool
    total: int
    queued: int
    skipped: list[store.SkippedFile] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    unsettled: list[str] = field(default_factory=list)  # modified too recently (settle_seconds): left for later
    status: str = "running"
    in_queue: int = 0  # a resumed batch's documents queued by an earlier run, not queued again


def submit_batch(
    paths: Sequence[str | Path],
    settings: Settings,
    *,
    template: str | Path | None = None,
    threshold: float | None = None,
    force: bool = False,
    publish: Callable[[Sequence[int]], None] | None = None,
    on_hashed: Callable[[int, int], None] | None = None,
) -> Submission:
    """Register a batch in the database, commit, then queue one page task per document.
    `on_hashed(done, total)`: as each file new to the hash cache is read to be hashed (`hash_inputs`).

    Same inputs, dedup and resume rules as the embedded `process_batch` (`store.register_batch`).
    Raises `UsageError` (bad paths), `DatabaseError`, `BrokerError` (the broker is unreachable:
    the batch is registered, and running the same command again queues what is missing).
    """
    files = collect_inputs(paths)
    if template is not None and not Path(template).is_file():
        raise UsageError(f"no such template file: {template}")
    files, too_new = leave_unsettled(files, settings.settle_seconds)
    engine = get_engine(settings)
    cache = HashCache.load(engine, files, trust=not force)
    inputs, unreadable = hash_inputs(files, cache=cache, progress=on_hashed)
    cache.save(engine)
    with session_scope(engine=engine) as s:
        plan = store.register_batch(
            s,
            inputs,
            force=force,
            template=str(template) if template is not None else None,
            threshold=threshold if threshold is not None else settings.threshold,
            model_version=None,  # set by the inference pool (its model)
            mode="distributed",
            options={"inputs": [str(p) for p in paths], "cwd": os.getcwd()},
            held_elsewhere=lambda batch_id: _held_elsewhere(s, engine, batch_id),
        )
        for path, reason in unreadable:  # failed documents of the batch
            store.record_unreadable(s, plan.batch_id, path, reason)
            plan.total += 1
        # The page workers open each file by the name stored in the database, and a name that is not
        # valid UTF-8 is stored escaped (`store.db_text`): they could not find it. Failed here, clearly.
        unnamed = {doc_id: path for doc_id, path in plan.todo if store.db_text(path) != path}
        for doc_id, path in unnamed.items():
            why = "the file name is not valid UTF-8, and the workers find files by name"
            store.store_document_failure(s, doc_id, "unreadable", f"{path}: {why}: rename it, or use the embedded mode")
        plan.todo = [(doc_id, path) for doc_id, path in plan.todo if doc_id not in unnamed]
    # Committed: from here on every id we publish exists for the workers.
    sub = Submission(plan.batch_id, plan.resumed, plan.total, 0, plan.skipped, unreadable,
                     sorted(str(p) for p in too_new))  # fmt: skip
    ids = [doc_id for doc_id, _ in plan.todo]
    if plan.resumed and ids:
        # Those queued by an earlier run are on the broker, or being read: queued again, the copies
        # would run at once, each counted as a delivery (a false `worker_lost`). A message lost from
        # the broker is queued again by the orphan sweep.
        waiting = _queued_already(engine, ids)
        sub.in_queue = len(waiting)
        ids = [i for i in ids if i not in waiting]
    if ids:
        try:
            (publish or publish_documents(settings))(ids)
        except BrokerError as exc:
            exc.batch_id = plan.batch_id  # registered: the CLI prints its id, as on success
            raise
        _mark_queued(engine, ids)
        sub.queued = len(ids)
        log.info("batch %s: queued %d document(s) on %r", plan.batch_id, len(ids), PAGES_QUEUE)
    sub.status = finish_if_complete(engine, plan.batch_id) or "running"
    return sub


def _queued_already(engine: Engine, ids: Sequence[int]) -> set[int]:
    """Of `ids`, the documents an earlier run put on the broker (`Document.queued_at`)."""
    out: set[int] = set()
    with session_scope(engine=engine) as s:
        for i in range(0, len(ids), 10_000):
            chunk = list(ids[i : i + 10_000])
            out.update(s.scalars(select(Document.id).where(Document.id.in_(chunk), Document.queued_at.is_not(None))))
    return out


def _mark_queued(engine: Engine, ids: Sequence[int]) -> None:
    """Note that `ids` were put on the broker now."""
    when = store.now()
    with session_scope(engine=engine) as s:
        for i in range(0, len(ids), 10_000):
            s.execute(update(Document).where(Document.id.in_(list(ids[i : i + 10_000]))).values(queued_at=when))


def _held_elsewhere(session: Session, engine: Engine, batch_id: int) -> bool:
    """Whether an unfinished batch's pending documents are someone's already: a running distributed
    batch's are queued for the page pool (a hot folder queued again gets only its new files), an
    embedded batch's belong to the run that holds its lock (`locks.batch_in_progress`)."""
    batch = session.get(Batch, batch_id)
    if batch is not None and batch.mode == "distributed":
        return batch.status == "running"
    return batch_in_progress(engine, batch_id) is True


def publish_documents(settings: Settings) -> Callable[[Sequence[int]], None]:
    """A publisher of page tasks on the settings' broker (one connection for all of them)."""

    def publish(ids: Sequence[int]) -> None:
        from workers.app import get_app

        app = get_app(settings)
        try:
            with app.producer_or_acquire() as producer:
                for doc_id in ids:
                    app.send_task(SEGMENT_TASK, args=[doc_id], queue=PAGES_QUEUE, producer=producer)
        except Exception as exc:
            if is_transient(exc):
                raise BrokerError(f"cannot queue documents on the broker {_redact(settings.broker_url)}: {_short(exc)}",
                                  hint="check DIGITREADER_BROKER_URL and that Redis runs; the batch is saved: "
                                       "run the same command again to queue what is missing") from exc  # fmt: skip
            raise

    return publish


# ------------------------------------------------------------------------------------ orphans


def requeue_orphans(settings: Settings, *, min_age: float | None = None) -> list[int]:
    """Publish again the documents of running distributed batches that are still pending although
    no message for them exists any more (none waiting, none delivered and unacknowledged), for
    longer than `min_age` seconds (default: the visibility timeout).

    The safety net for the one window the broker cannot cover: Redis dying between handing a
    message to a worker and recording it as unacknowledged (kombu's Redis transport does the two
    in separate commands), which leaves the message only in that worker's memory. A republished
    document that was not lost after all is harmless: tasks are idempotent."""
    import datetime as dt

    import redis

    age = float(min_age if min_age is not None else limits(settings).visibility)
    client = redis.Redis.from_url(settings.broker_url or "", socket_timeout=5, socket_connect_timeout=3)
    if any(int(client.llen(q)) for q in QUEUES) or int(client.hlen("unacked")):
        return []  # work in flight: nothing can be called an orphan now
    engine = get_engine(settings)
    cutoff = store.now() - dt.timedelta(seconds=age)
    with session_scope(engine=engine) as s:
        ids = list(
            s.scalars(
                select(Document.id)
                .join(Batch, Batch.id == Document.batch_id)
                .where(
                    Batch.status.in_(store.UNFINISHED_BATCH),
                    Batch.mode == "distributed",
                    Document.status.in_(PENDING),
                    func.coalesce(Document.started_at, Batch.created_at) < cutoff,
                )
                .order_by(Document.id)
            ).all()
        )
    if ids:
        log.warning("re-queueing %d document(s) with no message left for them: %s", len(ids), ids[:20])
        publish_documents(settings)(ids)
        _mark_queued(engine, ids)  # on the broker now: a later submission leaves them to it
    return ids


def sweep_orphans_forever(settings: Settings, interval: float | None = None) -> None:
    """`requeue_orphans` every `interval` seconds (default: half the visibility timeout); the
    inference worker runs this in a daemon thread. Errors are logged, never raised."""
    pause = float(interval if interval is not None else max(5, limits(settings).visibility // 2))
    while True:
        time.sleep(pause)
        try:
            requeue_orphans(settings)
        except Exception as exc:
            log.warning("orphan sweep skipped: %s", _short(exc))


# ------------------------------------------------------------------------------------- watching


@dataclass(frozen=True)
class Progress:
    batch_id: int
    status: str
    total: int
    finished: int
    counts: dict[str, int]
    pages: int = 0  # pages of the documents stored so far


def batch_progress(engine: Engine, batch_id: int) -> Progress:
    with session_scope(engine=engine) as s:
        batch = store.get_batch(s, batch_id)
        counts = store.document_counts(s, batch_id)
        pages = store.pages_read(s, batch_id)
        status = batch.status
    total = sum(counts.values())
    finished = sum(n for st, n in counts.items() if st in FINISHED)
    return Progress(batch_id, status, total, finished, counts, pages)


def wait_for_batch(
    batch_id: int,
    settings: Settings,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    poll: float = 0.5,
    timeout: float | None = None,
) -> Progress:
    """Poll the database until the batch is finished (not running); returns its last progress.

    Raises `TimeoutError` after `timeout` seconds (None: wait for ever; Ctrl-C stops waiting,
    the workers go on)."""
    engine = get_engine(settings)
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        prog = retry_transient(lambda: batch_progress(engine, batch_id), what="reading progress")
        if on_progress:
            on_progress(prog)
        if prog.status not in store.UNFINISHED_BATCH:
            return prog
        if end is not None and time.monotonic() > end:
            raise TimeoutError(f"batch {batch_id} still {prog.status} after {timeout:.0f} s")
        time.sleep(poll)


# ----------------------------------------------------------------------------------- operations


def _redact(url: str | None) -> str:
    if not url:
        return ""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def broker_status(settings: Settings, *, timeout: float = 1.0) -> dict[str, Any]:
    """Queue depths (messages waiting, and delivered but not acknowledged) and the live workers
    with their queues and running tasks. Raises `BrokerError` when the broker is unreachable."""
    import redis

    url = settings.broker_url
    if not url:
        raise UsageError("no broker configured", hint="set DIGITREADER_BROKER_URL=redis://host:6379/0")
    try:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
        queues = {q: int(client.llen(q)) for q in QUEUES}
        unacked = int(client.hlen("unacked"))
    except redis.exceptions.RedisError as exc:
        raise BrokerError(f"the broker {_redact(url)} is unreachable: {_short(exc)}",
                          hint="check DIGITREADER_BROKER_URL and that Redis runs") from exc  # fmt: skip
    from workers.app import get_app

    insp = get_app(settings).control.inspect(timeout=timeout)
    active_queues = insp.active_queues() or {}
    active = insp.active() or {}
    workers = [
        {"name": name, "queues": sorted(q["name"] for q in qs), "active": len(active.get(name, []) or [])}
        for name, qs in sorted(active_queues.items())
    ]
    return {"broker": _redact(url), "queues": queues, "unacked": unacked, "workers": workers}
