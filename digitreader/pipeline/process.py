"""The embedded pipeline: documents -> database. The distributed workers reuse the same steps.

Steps (each usable on its own):

- `collect_inputs(paths)` -> files (folders recursive, globs) and `hash_inputs` -> `InputFile`s (a file
  unchanged since it was last hashed is not read again: `hashcache.py`)
- `segment_document(path, settings, template)` -> `DocumentCut` (`document.py`, here too): load ->
  segment every page, and cut each field's strip of the page (`field_strips`: small JPEGs the
  review page shows). Never raises for a bad document: the `InputError` (or an unexpected error)
  is in `.error`. Picklable in and out, so it runs in a process pool (or a Celery worker).
- `recognize_pages(predictor, cuts, batch_size)` -> one (N_page, 11) probability array per page,
  inferred in batches that span pages and documents with one reused `Predictor`.
- `assemble_document(cut, probs, threshold)` -> `PageResult`s (values, confidences, flags)
- `store.store_document_results` / `store.store_document_failure`: one transaction per document.

`process_batch` joins them: segmentation runs in a process pool (both cores), inference is batched
in the parent, each document is stored in its own transaction as soon as it is recognized. A bad
document is recorded as failed and the batch goes on; Ctrl-C or a crash leaves every stored
document intact, and re-running the same command resumes the batch without duplicates.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import glob
import logging
import os
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool  # by name: `cf.process` exists once imported
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from digitreader.db import session_scope, store
from digitreader.db.locks import BatchLock, batch_in_progress, holder
from digitreader.db.session import get_engine
from digitreader.errors import BusyError, DigitreaderError, UsageError
from digitreader.hashing import sha256_file_and_size
from digitreader.pipeline import native
from digitreader.pipeline.assemble import PageResult, Probs, assemble_page, count_crops
from digitreader.pipeline.document import (
    DocumentCut,
    FieldStrip,
    field_strips,
    join_parts,
    page_parts,
    segment_document,
)
from digitreader.pipeline.hashcache import HashCache
from digitreader.pipeline.pool import (
    STUCK_AFTER,
    ReaderWatch,
    end_broken_pool,
    make_executor,
    pool_submit,
    process_pool,
    start_pool_server,
    stop_pool,
)
from digitreader.pipeline.report import BatchReport, DocumentReport, ProgressHook
from digitreader.pipeline.split import check_splitter
from digitreader.settings import Settings
from digitreader.types import PageCut

log = logging.getLogger(__name__)

#: File types picked up when a folder is submitted (explicit files are always tried).
SCAN_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".jif", ".tif", ".tiff", ".bmp", ".pdf", ".webp", ".pbm", ".pgm", ".ppm"}
)  # .jfif: the name Windows gives a saved JPEG
#: Images and documents of kinds not read: a folder's files with these names are counted in a warning
#: (a sidecar .json or .txt, a Thumbs.db, are left out without a word).
UNREAD_IMAGE_SUFFIXES = frozenset(
    {".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".jpx", ".svg", ".xps", ".oxps", ".djvu", ".djv",
     ".psd", ".dng", ".cr2", ".nef", ".emf", ".wmf", ".tga", ".pcx", ".ico", ".eps", ".ps", ".docx", ".odt"}
)  # fmt: skip


# ----------------------------------------------------------------------------------------- inputs


def unsettled(files: Sequence[Path], seconds: float, now: float | None = None) -> set[Path]:
    """Of `files`, those modified less than `seconds` ago: a scanner may still be writing them (a hot
    folder), and read now they would fail as truncated. None of them when `seconds` is 0. A time as far in
    the future (a share whose clock is ahead) counts as just now; one further ahead is a wrong clock
    (a file copied from a device set to another year), not a write in progress, and is read."""
    if seconds <= 0:
        return set()
    now = time.time() if now is None else now
    out = set()
    for p in files:
        try:
            if abs(now - p.stat().st_mtime) < seconds:
                out.add(p)
        except OSError:
            continue  # gone or unreadable: hashing says why
    return out


def leave_unsettled(files: Sequence[Path], seconds: float) -> tuple[list[Path], set[Path]]:
    """`files` without those modified in the last `seconds` (`unsettled`), and those, left for the next run."""
    too_new = unsettled(files, seconds)
    if too_new:
        log.info("%d file(s) modified in the last %g s left for the next run", len(too_new), seconds)
    return [p for p in files if p not in too_new], too_new


def _scans_in(folder: Path, others: Counter[str] | None = None) -> list[Path]:
    """The scan files below `folder`, sorted: searched recursively through symlinked folders too, each
    real folder once (a link back to a folder above ends), leaving out hidden files and folders
    (names starting with "."). Only names below `folder` count: the parts of `folder` itself
    (`..`, `~/.scans`) are the user's to choose. `others` counts the images of kinds not read
    (`UNREAD_IMAGE_SUFFIXES`; not hidden) left out, by suffix."""
    found: list[Path] = []
    visited: set[tuple[int, int]] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        try:
            st = os.stat(top)
        except OSError:  # gone since it was listed
            dirs.clear()
            continue
        if (st.st_dev, st.st_ino) in visited:  # reached again through a link: read once
            dirs.clear()
            continue
        visited.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # sorted: which link reads a folder is stable
        for name in files:
            q = Path(top, name)
            if name.startswith("."):
                continue
            if q.suffix.lower() in SCAN_SUFFIXES:
                if q.is_file():
                    found.append(q)
            elif others is not None and q.suffix.lower() in UNREAD_IMAGE_SUFFIXES:
                others[q.suffix.lower()] += 1
    return sorted(found)


def collect_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Files named by `paths`: files as given, folders searched recursively for scans (`_scans_in`),
    globs expanded (a folder a glob matches is searched as a folder named).

    Order: as given, folders and globs sorted; each file once. Raises `UsageError` for a path that
    does not exist or a glob/folder that matches nothing.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    others: Counter[str] = Counter()  # images of kinds not read, in the folders

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)

    types = f"file types: {', '.join(sorted(SCAN_SUFFIXES))}"
    for raw in paths:
        p = Path(raw).expanduser()
        name = store.db_text(str(raw))  # in an error as everywhere: a byte that is not UTF-8 as \xNN
        if p.is_file():
            add(p)
        elif p.is_dir():
            found = _scans_in(p, others)
            if not found:
                raise UsageError(f"no scans found in folder {store.db_text(str(p))}", hint=types)
            for q in found:
                add(q)
        elif glob.has_magic(str(raw)):
            matched = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            if not matched:
                raise UsageError(f"no files match {name}")
            matches = [f for m in matched for f in ([m] if m.is_file() else _scans_in(m, others) if m.is_dir() else [])]
            if not matches:
                raise UsageError(f"no scans match {name}", hint=types)
            for q in matches:
                add(q)
        elif p.exists():  # a FIFO, a socket, a device: reading it could block or never end
            raise UsageError(f"not a regular file or folder: {name}", hint="name the scan files, or their folder")
        else:
            raise UsageError(f"no such file or folder: {name}")
    if others:
        kinds = ", ".join(f"{suffix} {n}" for suffix, n in sorted(others.items()))
        log.warning(
            "left out %d image(s) of kinds not read (%s); convert them to PNG, JPEG, TIFF or PDF",
            sum(others.values()),
            kinds,
        )
    return out


file_sha256 = sha256_file_and_size


def hash_inputs(
    paths: Sequence[Path],
    threads: int | None = None,
    cache: HashCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[store.InputFile], list[tuple[str, str]]]:
    """Hash every file. Returns (files, unreadable) where unreadable is [(path, reason)], in input order.

    On `threads` threads (default: one per core): hashlib and file reads release the GIL, so a batch
    of large scans is hashed several times faster than one file after the other. With a `cache`
    (`hashcache.HashCache`), a file unchanged since it was hashed before is not read again.
    `progress(done, total)` is called (from the hashing threads) as each file that is read is done.
    """
    sha256 = cache.sha256 if cache is not None else file_sha256
    hits = cache.hits if cache is not None else {}
    to_read = sum(1 for p in paths if p not in hits)
    done = 0
    count = threading.Lock()

    def one(p: Path) -> tuple[str, int] | OSError:
        nonlocal done
        try:
            return sha256(p)
        except OSError as exc:
            return exc
        finally:
            if progress is not None and p not in hits:
                with count:
                    done += 1
                    progress(done, to_read)

    n = max(1, min(threads or os.cpu_count() or 1, len(paths)))
    if n == 1:
        results = [one(p) for p in paths]
    else:
        with cf.ThreadPoolExecutor(max_workers=n, thread_name_prefix="hash") as pool:
            results = list(pool.map(one, paths))
    files: list[store.InputFile] = []
    bad: list[tuple[str, str]] = []
    for p, r in zip(paths, results, strict=True):
        if isinstance(r, OSError):
            bad.append((str(p), r.strerror or str(r)))
        else:
            files.append(store.InputFile(str(p), r[0], r[1]))
    return files, bad


# ------------------------------------------------------------------------------------ recognition


def recognize_pages(predictor: Any, cuts: Sequence[PageCut], batch_size: int = 1024) -> list[np.ndarray]:
    """Calibrated probabilities for every non-blank crop of `cuts`, one (N_i, 11) array per page.

    The crops of all pages are concatenated and inferred in batches of `batch_size`, so one batch
    spans pages and documents.
    """
    counts = [count_crops(c) for c in cuts]
    total = sum(counts)
    if total == 0:
        return [np.zeros((0, 11), np.float32) for _ in cuts]
    crops = np.concatenate([c.crops() for c in cuts if count_crops(c)], axis=0)
    parts = [np.asarray(predictor.predict(crops[i : i + batch_size]).probs) for i in range(0, total, batch_size)]
    probs = np.concatenate(parts, axis=0)
    out: list[np.ndarray] = []
    row = 0
    for n in counts:
        out.append(probs[row : row + n])
        row += n
    return out


def assemble_document(cut: DocumentCut, probs: Sequence[np.ndarray], threshold: float) -> list[PageResult]:
    """Each page's fields and digits with values, confidences and review flags (and each field's
    strip of the page, when the cut has them). Fields of a page read from damaged image data are
    flagged for review (`assemble.FLAG_DAMAGED`)."""
    damaged = cut.damaged_pages
    results = [
        assemble_page(page, Probs(p), threshold, damaged=page.number in damaged)
        for page, p in zip(cut.pages, probs, strict=True)
    ]
    if len(cut.strips) != len(results):
        return results
    out: list[PageResult] = []
    for r, strips in zip(results, cut.strips, strict=True):
        if len(strips) != len(r.fields):
            out.append(r)
            continue
        fields = tuple(
            f if st is None else replace(f, strip=st.jpeg, strip_box=st.box)
            for f, st in zip(r.fields, strips, strict=True)
        )
        out.append(replace(r, fields=fields))
    return out


# ---------------------------------------------------------------------------------------- batches


def cores(settings: Settings) -> int:
    """Segmentation processes at most: DIGITREADER_WORKERS, else one per core."""
    return settings.workers or os.cpu_count() or 1


def worker_count(settings: Settings, jobs: int) -> int:
    """Segmentation processes for `jobs` documents (or parts of documents): no more than there are."""
    return max(1, min(cores(settings), jobs))


def _internal_failure(path: str, exc: BaseException) -> DocumentCut:
    """A document whose cut did not come back from the pool (pickling errors and the like)."""
    return DocumentCut(path, (), "internal", f"{path}: {exc!r}", traceback=traceback.format_exc())


def load_predictor(settings: Settings) -> Any:
    """The recognizer for the settings: DIGITREADER_MODEL_PATH if set, else the registry's active model
    (a `registry.LivePredictor`: a newly promoted model is picked up between documents, no restart)."""
    from digitreader.pipeline.recognize import Predictor

    if settings.model_path is not None:
        return Predictor.load(settings.model_path, settings=settings)
    from digitreader.registry import LivePredictor

    return LivePredictor(settings)


def resolve_threshold(predictor: Any, settings: Settings, threshold: float | None) -> float:
    if threshold is not None:
        return float(threshold)
    if settings.threshold is not None:
        return float(settings.threshold)
    return float(predictor.info.threshold)


def process_batch(
    paths: Sequence[str | Path],
    settings: Settings,
    *,
    template: str | Path | None = None,
    threshold: float | None = None,
    force: bool = False,
    predictor: Any = None,
    hook: ProgressHook | None = None,
    wait_if_busy: bool = True,
) -> BatchReport:
    """Process documents into the database (the embedded pipeline). Returns the batch report.

    Another run reading the batch of these files (`db.locks`) is waited for; with `wait_if_busy`
    False, `BusyError` is raised instead and nothing is done.

    Raises `UsageError` (bad paths, no files), `ModelError` (no model), `DatabaseError`; a bad
    document never raises: it is recorded as failed. KeyboardInterrupt leaves the batch
    'interrupted' with every finished document stored; the same call again completes it.
    """
    t0 = time.perf_counter()
    hook = hook or ProgressHook()
    files, too_new = leave_unsettled(collect_inputs(paths), settings.settle_seconds)
    engine = get_engine(settings)
    cache = HashCache.load(engine, files, trust=not force)
    if worker_count(settings, len(files) - len(cache.hits)) > 1:  # new files: most of them will be read
        start_pool_server()  # its imports overlap loading the model and hashing the files
    tmpl = None
    if template is not None:
        from digitreader.pipeline.templates import load_template

        tmpl = load_template(template)
    if predictor is None:
        predictor = load_predictor(settings)
    check_splitter(settings)
    thr = resolve_threshold(predictor, settings, threshold)
    info = predictor.info
    version = str(info.version)
    precision = str(getattr(info, "precision", "fp32"))
    native.warn_missing()
    inputs, unreadable = hash_inputs(files, cache=cache, progress=hook.hashing)
    cache.save(engine)
    # This run's lock on its batch (`db.locks`): another run of the same submission waits for it.
    with BatchLock(engine) as lock:
        with session_scope(engine=engine) as s:
            store.ensure_model_version(
                s, version, str(info.sha256), path=getattr(info, "path", None), threshold=float(info.threshold)
            )
            plan = store.register_batch(
                s,
                inputs,
                force=force,
                template=str(template) if template is not None else None,
                threshold=threshold if threshold is not None else settings.threshold,
                model_version=version,
                options={"inputs": [str(p) for p in paths], "precision": precision},
                claim=lock.try_acquire,
                held_elsewhere=lambda batch_id: batch_in_progress(engine, batch_id) is True,
            )
            # Files that cannot even be read (permissions): failed documents of the batch. (A batch
            # another run is reading had none: a batch with such a document is never resumed.)
            for path, reason in unreadable if not plan.busy else ():
                store.record_unreadable(s, plan.batch_id, path, reason)
                plan.total += 1
        report = BatchReport(
            plan.batch_id,
            resumed=plan.resumed,
            total=plan.total,
            skipped=plan.skipped,
            unreadable=unreadable,
            unsettled=sorted(str(p) for p in too_new),
            model_version=version,
            threshold=thr,
            precision=precision,
        )
        if plan.busy:
            if not wait_if_busy:
                raise BusyError(plan.batch_id, holder(engine, plan.batch_id))
            report.waited = True
            finished = _wait_for_other_run(plan, engine, lock, hook)
            if finished is not None:  # the other run finished the batch: nothing left to read
                report.status, report.seconds = finished, time.perf_counter() - t0
                hook.started(plan.batch_id, 0, plan.total)
                return report
        for path, reason in unreadable:
            report.processed.append(DocumentReport(0, path, "failed", error_code="unreadable", error_message=reason))
        interrupted = False
        try:
            # Inside: a Ctrl-C as the batch id is shown (the moment a user or a script sees the batch
            # start) left the batch "running" instead of "interrupted".
            hook.started(plan.batch_id, len(plan.todo), plan.total)
            _run(plan.todo, settings, tmpl, predictor, thr, version, engine, report, hook)
        except BaseException:
            interrupted = True
            raise
        finally:
            report.seconds = time.perf_counter() - t0
            try:
                with _signals_held(), session_scope(engine=engine) as s:
                    report.status = store.finish_batch(
                        s, plan.batch_id, seconds=report.seconds, interrupted=interrupted, add_seconds=True
                    )
            except Exception:
                if not interrupted:
                    raise
                log.exception("could not mark batch %s interrupted", plan.batch_id)
    return report


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back while the block runs (one of the run's write transactions, or a
    submission to its pool), then delivered to the handlers they would have reached: a Ctrl-C stops
    a batch between transactions, never inside one. Inside one, it left the batch "running" where it
    should be "interrupted":
    - raised just after a statement had written, it left the statement's cursor referenced by the
      KeyboardInterrupt's traceback, and SQLite's connection, closed by SQLAlchemy, alive holding its
      write lock until that was dropped: the batch could not be marked interrupted ("database is
      locked" after the 30 s busy timeout);
    - raised as a finished batch was being closed, it rolled the closing update back.
    (The next run of the same files resumed such a batch all the same.) A Ctrl-C while SQLite waits
    for another process's lock waits with it, up to that timeout. Only the main thread receives
    signals; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = (signal.SIGINT, signal.SIGTERM)
    came: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: came.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: not set from Python
        for signum in dict.fromkeys(came):  # each once, in the order they came
            signal.raise_signal(signum)


def _wait_for_other_run(plan: store.BatchPlan, engine: Any, lock: BatchLock, hook: ProgressHook) -> str | None:
    """Another run is reading the batch of this submission: wait for its lock (Ctrl-C stops waiting and
    leaves the batch to it), then take over what it left. Returns the batch's status when the other
    run finished it, None when there is something left for this run (`plan.todo`, narrowed)."""
    who = holder(engine, plan.batch_id)

    def tick() -> None:
        with session_scope(engine=engine) as s:
            counts = store.document_counts(s, plan.batch_id)
        total = sum(counts.values())
        hook.waiting(plan.batch_id, total - sum(counts.get(k, 0) for k in store.PENDING_DOCUMENT), total, who)

    tick()
    lock.acquire(plan.batch_id, tick=tick)
    with _signals_held(), session_scope(engine=engine) as s:
        pending, status = store.take_over_batch(s, plan.batch_id)
    plan.todo = [(doc_id, path) for doc_id, path in plan.todo if doc_id in pending]
    log.info("batch %s: the other run is over; %d documents left", plan.batch_id, len(plan.todo))
    return status if not pending and status not in store.UNFINISHED_BATCH else None


@dataclass(frozen=True)
class _Job:
    """One task of the segmentation pool: a document, or part `index` of the `parts` it is cut in."""

    doc_id: int
    path: str
    pages: tuple[int, int] | None = None  # (first, last), from 1; None: the whole document
    index: int = 0
    parts: int = 1


def _jobs(
    todo: list[tuple[int, str]], settings: Settings, pooled: bool, spans: dict[int, list[tuple[int, int] | None]]
) -> Iterator[_Job]:
    """The pool's tasks, document after document: a long PDF or TIFF in parts of a few pages
    (`page_parts`; `spans` where already counted), so that one long document uses every core too."""
    for doc_id, path in todo:
        parts = (spans[doc_id] if doc_id in spans else page_parts(path, settings)) if pooled else [None]
        for index, pages in enumerate(parts):
            yield _Job(doc_id, path, pages, index, len(parts))


class _Parts:
    """The cuts of documents cut in parts, held until a document's last part arrives."""

    def __init__(self, hook: ProgressHook) -> None:
        self.hook = hook
        self.arrived: dict[int, dict[int, DocumentCut]] = {}  # document id -> part index -> cut

    def add(self, job: _Job, cut: DocumentCut) -> DocumentCut | None:
        """The document's cut once all its parts are in (joined in page order), else None."""
        if job.parts == 1:
            return cut
        got = self.arrived.setdefault(job.doc_id, {})
        got[job.index] = cut
        if len(got) < job.parts:
            self.hook.part_done(job.doc_id, len(got), job.parts)
            return None
        del self.arrived[job.doc_id]
        return join_parts([got[i] for i in range(job.parts)])


def _run(
    todo: list[tuple[int, str]],
    settings: Settings,
    template: Any,
    predictor: Any,
    threshold: float,
    model_version: str,
    engine: Any,
    report: BatchReport,
    hook: ProgressHook,
) -> None:
    if not todo:
        return
    workers = worker_count(settings, len(todo))
    spans: dict[int, list[tuple[int, int] | None]] = {}
    if len(todo) < cores(settings):
        # Fewer documents than cores: a long one is cut in parts, and the parts share the cores.
        spans = {doc_id: page_parts(path, settings) for doc_id, path in todo}
        workers = worker_count(settings, sum(len(s) for s in spans.values()))
    # A pool gets enough documents queued to stay busy while this process reads and stores a batch;
    # inline (one worker), each document is stored before the next one is cut.
    pooled = workers > 1
    max_in_flight = workers * 8 if pooled else 1
    limit = settings.document_time_limit
    queue = _jobs(todo, settings, pooled, spans)
    parts = _Parts(hook)
    buffer: list[tuple[int, DocumentCut]] = []
    buffered = 0

    def flush() -> None:
        nonlocal buffer, buffered, threshold, model_version
        if not buffer:
            return
        refresh = getattr(predictor, "refresh", None)  # registry.LivePredictor: follow the active model
        if refresh is not None:
            old_threshold = float(predictor.info.threshold)
            if refresh():
                model_version = str(predictor.info.version)
                if threshold == old_threshold and settings.threshold is None:  # the model's own threshold
                    threshold = float(predictor.info.threshold)
        _recognize_and_store(buffer, predictor, settings.batch_size, threshold, model_version, engine, report, hook)
        buffer, buffered = [], 0

    def model_file() -> str | None:
        """The model reading the digits now (the registry's active one), for a splitter that follows it."""
        path = getattr(predictor.info, "path", None)
        return str(path) if path else None

    executor = make_executor(workers)
    watch = ReaderWatch(executor)

    def submit(job: _Job, to: cf.Executor | None = None) -> cf.Future[DocumentCut]:
        pool = executor if to is None else to
        # Held for a pool: submitting may start a pool process, and a Ctrl-C between its start and
        # the pool's note of it left a process the pool did not know of; it took one of the pool's
        # stop messages, and the pool's shutdown then waited forever for the process it was meant
        # for. (Not inline, where submitting reads the whole document: a Ctrl-C stops that at once.)
        held = _signals_held() if isinstance(pool, cf.ProcessPoolExecutor) else contextlib.nullcontext()
        with held:
            return pool_submit(pool, segment_document, job.path, settings, template, limit, model_file(), job.pages)

    def alone(job: _Job) -> DocumentCut:
        """A document that was in flight when a pool process died, read again in a process of its own:
        the one that kills it too is the culprit and fails (`worker_lost`); the others are read."""
        solo = process_pool(1)
        try:
            return ReaderWatch(solo).result(submit(job, solo))
        except BrokenProcessPool:
            msg = (f"{job.path}: the segmentation process died reading this document, alone as when with others "
                   f"(a crash, or the out-of-memory killer)")  # fmt: skip
            return DocumentCut(job.path, (), "worker_lost", msg)
        except Exception as exc:  # pickling errors and the like: this document only
            return _internal_failure(job.path, exc)
        finally:
            stop_pool(solo)

    def take(job: _Job, part: DocumentCut) -> None:
        """A document's (or part's) cut: stored as failed, or buffered for recognition."""
        nonlocal buffered
        cut = parts.add(job, part)
        if cut is None:
            return  # the document's other parts are still being cut
        if cut.failed:
            _store_failure(job.doc_id, cut, engine, report, hook)
        else:
            buffer.append((job.doc_id, cut))
            buffered += cut.crops

    try:
        in_flight: dict[cf.Future[DocumentCut], _Job] = {}
        # Jobs to submit before the next from the queue: refused by a pool that had just broken.
        again: list[_Job] = []
        exhausted = False  # every document submitted: from then on, read each one as soon as it is cut

        def fill() -> None:
            nonlocal exhausted
            while len(in_flight) < max_in_flight:
                nxt = again.pop(0) if again else next(queue, None)
                if nxt is None:
                    exhausted = True
                    return
                try:
                    in_flight[submit(nxt)] = nxt
                except BrokenProcessPool:  # a pool process died: submitted after the recovery
                    again.insert(0, nxt)
                    return

        fill()
        while in_flight or again:
            done = set()
            if in_flight:
                done = cf.wait(list(in_flight), timeout=STUCK_AFTER / 4, return_when=cf.FIRST_COMPLETED)[0]
                if not done:
                    watch.check()
            suspects: list[_Job] = []
            for fut in done:
                job = in_flight.pop(fut)
                try:
                    part = fut.result()
                except BrokenProcessPool:
                    suspects.append(job)  # this one, or another in flight, killed a pool process
                    continue
                except Exception as exc:  # pickling errors and the like: this document only
                    part = _internal_failure(job.path, exc)
                take(job, part)
            if isinstance(executor, cf.ProcessPoolExecutor) and getattr(executor, "_broken", False):
                # A pool process died (a crash, the out-of-memory killer): the whole pool is lost, and
                # every document in it reports so. Each is read again alone, to find the one that
                # kills it; then a new pool takes the rest.
                end_broken_pool(executor)
                suspects += in_flight.values()
                in_flight.clear()
                for job in suspects:
                    take(job, alone(job))
                executor = make_executor(workers)
                watch = ReaderWatch(executor)
            if pooled:
                fill()  # before the flush: the workers keep segmenting while this process reads and stores
            if buffered >= settings.batch_size or (exhausted and buffer):
                flush()
            fill()
        flush()
    finally:
        # Also after a Ctrl-C: the pool's processes finish the document in hand (what they send back is
        # not stored) and stop when told. Ending them at once instead (SIGTERM) could cut one off in
        # the middle of sending its result, and the pool's reader then waited forever for the rest.
        stop_pool(executor)


def _store_failure(doc_id: int, cut: DocumentCut, engine: Any, report: BatchReport, hook: ProgressHook) -> None:
    if cut.traceback:
        log.warning("document %s failed unexpectedly:\n%s", cut.path, cut.traceback)
    else:
        log.info("document %s failed: %s", cut.path, cut.error_message)
    with _signals_held(), session_scope(engine=engine) as s:
        store.store_document_failure(
            s,
            doc_id,
            cut.error_code or "internal",
            cut.error_message or "",
            page_count=cut.page_count,
            seconds=cut.seconds,
        )
    rep = DocumentReport(
        doc_id, cut.path, "failed", error_code=cut.error_code, error_message=cut.error_message, seconds=cut.seconds
    )
    report.processed.append(rep)
    hook.document_done(rep)


def _recognize_and_store(
    buffer: list[tuple[int, DocumentCut]],
    predictor: Any,
    batch_size: int,
    threshold: float,
    model_version: str,
    engine: Any,
    report: BatchReport,
    hook: ProgressHook,
) -> None:
    pages = [p for _, cut in buffer for p in cut.pages]
    t = time.perf_counter()
    probs = recognize_pages(predictor, pages, batch_size)
    rec_seconds = time.perf_counter() - t
    total_crops = max(1, sum(cut.crops for _, cut in buffer))
    row = 0
    for doc_id, cut in buffer:
        n = len(cut.pages)
        doc_probs, row = probs[row : row + n], row + n
        t = time.perf_counter()
        try:
            results = assemble_document(cut, doc_probs, threshold)
        except Exception as exc:  # a segmentation/recognition mismatch is a bug: fail this document only
            failed = DocumentCut(cut.path, (), "internal", f"{cut.path}: {exc!r}", traceback=traceback.format_exc())
            _store_failure(doc_id, failed, engine, report, hook)
            continue
        timings = dict(cut.timings)
        timings["recognize"] = rec_seconds * cut.crops / total_crops
        with _signals_held(), session_scope(engine=engine) as s:
            status = store.store_document_results(
                s,
                doc_id,
                results,
                model_version=model_version,
                seconds=cut.seconds + timings["recognize"],
                timings=timings,
                warnings=cut.warnings,
            )
        timings["store"] = time.perf_counter() - t
        digits = [d for r in results for d in r.digits() if not d.blank]
        rep = DocumentReport(
            doc_id,
            cut.path,
            status,
            pages=len(results),
            digits=len(digits),
            flagged=sum(1 for d in digits if d.needs_review),
            seconds=cut.seconds + timings["recognize"] + timings["store"],
            warnings=cut.warnings,
            turned=sum(1 for p in results if p.rotation),
            fields=sum(len(p.fields) for p in results),
        )
        report.processed.append(rep)
        hook.document_done(rep)


def process_document(
    path: str | Path,
    settings: Settings,
    *,
    template: str | Path | None = None,
    threshold: float | None = None,
    force: bool = False,
    predictor: Any = None,
) -> BatchReport:
    """One document as its own batch (convenience over `process_batch`)."""
    return process_batch([path], settings, template=template, threshold=threshold, force=force, predictor=predictor)


__all__ = [
    "BatchReport",
    "DigitreaderError",
    "DocumentCut",
    "DocumentReport",
    "FieldStrip",
    "ProgressHook",
    "assemble_document",
    "collect_inputs",
    "field_strips",
    "hash_inputs",
    "process_batch",
    "process_document",
    "recognize_pages",
    "segment_document",
    "leave_unsettled",
    "unsettled",
]
