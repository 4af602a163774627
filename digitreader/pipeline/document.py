"""Segment one document: load -> segment every page -> cut each field's strip of the page.

`segment_document(path, settings, template)` returns a `DocumentCut`: the document's pages (digit
crops and boxes, `types.PageCut`) and, per field, a small JPEG strip of the page for the review page;
or the error that stopped it. It never raises for a bad document: the `InputError` (or an unexpected
error) is in `.error_code` / `.error_message`. Picklable in and out, so it runs in the embedded
pipeline's process pool (`pool.make_executor`) or a Celery worker (`distributed`).

This module imports only what segmenting needs (no database), so a pool process starts quickly.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from digitreader.errors import InputError, raised_by_a_stop
from digitreader.pipeline import decoder_messages
from digitreader.pipeline.assemble import count_crops
from digitreader.settings import Settings
from digitreader.types import BBox, PageCut

#: Files that can hold several pages, and so be segmented in parts (`page_parts`, `join_parts`; the
#: part size is `settings.part_pages`, DIGITREADER_PART_PAGES).
MULTI_PAGE_SUFFIXES = (".pdf", ".tif", ".tiff")

#: The modules segmenting a document needs beyond this one's (imported on first use, so that this
#: module alone stays light): a pool's fork server imports them ahead (`pool.pool_preload`).
WORKER_MODULES = (
    "cv2",
    "onnxruntime",
    "digitreader.pipeline.load",
    "digitreader.pipeline.png",
    "digitreader.pipeline.segment",
    "digitreader.pipeline.recognize",
)

#: Field strips: the field's box grown by this share of its height on every side (clamped to the page),
#: scaled down to at most STRIP_HEIGHT pixels high and STRIP_MAX_WIDTH wide, JPEG at STRIP_QUALITY.
STRIP_MARGIN = 0.25
STRIP_HEIGHT = 72
STRIP_MAX_WIDTH = 1200
STRIP_QUALITY = 80


@dataclass(frozen=True)
class FieldStrip:
    """A field's strip of the page as submitted: `jpeg` (greyscale) shows the page region `box`
    (x, y, w, h in page pixels); a page box maps into the image by (image size / box size)."""

    jpeg: bytes
    box: BBox


def field_strips(gray: np.ndarray, page: PageCut, y_scale: float = 1.0) -> tuple[FieldStrip | None, ...]:
    """One strip per field of `page`, cut from the page as submitted (`gray`, uint8; its rows
    resampled to square pixels where `y_scale`, the submitted rows per row of `gray`, is not 1: a
    fax), turned the way the page was read (`page.rotation`: a reviewer sees the digits upright). A
    field whose box is empty or off the page gets None; so does one whose JPEG cannot be encoded."""
    import cv2

    from digitreader.pipeline.prepare import turn

    rows, width = gray.shape[:2]
    height = int(round(rows * y_scale))  # of the page as submitted
    sideways = page.rotation in (90, 270)  # the strip's width and height swap once it is turned
    out: list[FieldStrip | None] = []
    for f in page.fields:
        x, y, w, h = (int(v) for v in f.bbox)
        m = int(round(STRIP_MARGIN * (w if sideways else h)))  # of the field's height upright
        x0, y0 = max(0, x - m), max(0, y - m)
        x1, y1 = min(width, x + w + m), min(height, y + h + m)
        g0, g1 = (y0, y1) if y_scale == 1.0 else (int(y0 / y_scale), min(rows, math.ceil(y1 / y_scale)))
        if x1 <= x0 or y1 <= y0 or g1 <= g0:
            out.append(None)
            continue
        region = turn(gray[g0:g1, x0:x1], page.rotation) if page.rotation else gray[g0:g1, x0:x1]
        bw, bh = x1 - x0, y1 - y0
        rw, rh = (g1 - g0, bw) if sideways else (bw, g1 - g0)  # the strip as it is shown
        scale = min(1.0, STRIP_HEIGHT / rh, STRIP_MAX_WIDTH / rw)
        if scale < 1.0:
            size = (max(1, round(rw * scale)), max(1, round(rh * scale)))
            region = cv2.resize(region, size, interpolation=cv2.INTER_LINEAR)  # INTER_AREA: 5x the time
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(region), [cv2.IMWRITE_JPEG_QUALITY, STRIP_QUALITY])
        out.append(FieldStrip(bytes(buf), (x0, y0, bw, bh)) if ok else None)
    return tuple(out)


@dataclass(frozen=True)
class DocumentCut:
    """Segmentation of one document: its pages, or the error that stopped it. Picklable."""

    path: str
    pages: tuple[PageCut, ...] = ()
    error_code: str | None = None
    error_message: str | None = None
    page_count: int | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    traceback: str | None = None
    #: Per page, per field: the field's strip of the page (None where none could be cut). Empty when
    #: the cut carries no strips (an older message); then nothing is stored and the review page
    #: rebuilds the strip from the crops.
    strips: tuple[tuple[FieldStrip | None, ...], ...] = ()
    #: What the image decoders said of damaged data while the pages were read ("page 2: Corrupt JPEG
    #: data: premature end of data segment"; `decoder_messages`): the document was read, but a part of
    #: a page may be missing.
    warnings: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return self.error_code is not None

    @property
    def damaged_pages(self) -> frozenset[int]:
        """Numbers of the pages read from damaged image data: each "page N: ..." warning names its page;
        one said after the last page or of the file as a whole ("after its pages", "its file") may
        concern any of them, so then every page."""
        numbers: set[int] = set()
        for w in self.warnings:
            head, _, _ = w.partition(": ")
            kind, _, number = head.partition(" ")
            if kind != "page" or not number.isdigit():
                return frozenset(p.number for p in self.pages)
            numbers.add(int(number))
        return frozenset(numbers)

    @property
    def crops(self) -> int:
        return sum(count_crops(p) for p in self.pages)


class _DocumentTimeout(Exception):
    """Raised by the SIGALRM handler of `_deadline` inside `segment_document`."""


@contextlib.contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
    """Interrupt the block after `seconds` (SIGALRM; main thread of a Unix process only, else no-op).

    The embedded pipeline segments in its own pool processes (or inline in the CLI's main thread),
    so a page that takes pathologically long fails its document instead of stalling the batch.
    Celery workers enforce their own soft/hard time limits and do not pass one here.
    """
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise _DocumentTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _in_pool() -> bool:
    """Whether this is a pool process (not the batch's own process, which inline mode runs in)."""
    return multiprocessing.parent_process() is not None


def _die_while_sending() -> None:
    """Tests only (DIGITREADER_TEST_CRASH_ON=sending:GLOB): die as a pool process killed halfway
    through sending its result back: the head of a message of 1000 bytes, 10 of them, and the end.
    (`concurrent.futures` gives its pool process the result queue as its second argument.)"""
    import struct

    queue = multiprocessing.current_process()._args[1]  # type: ignore[attr-defined]
    os.write(queue._writer.fileno(), struct.pack("!i", 1000) + bytes(10))
    os._exit(70)


def segment_document(
    path: str | Path,
    settings: Settings,
    template: Any = None,
    time_limit: float | None = None,
    model_path: str | Path | None = None,
    pages: tuple[int, int] | None = None,
) -> DocumentCut:
    """Load and segment every page of one document. Errors are returned, never raised.

    `time_limit` (seconds): the document fails with code "timeout" when segmenting it takes longer.
    `model_path`: the model that will read the digits (None: DIGITREADER_MODEL_PATH, else the shipped
    model); the string splitter uses it with DIGITREADER_SPLITTER=reader (`split.splitter_model`).
    `pages` (first, last), from 1, both included: only that part of the document (`join_parts` joins
    the parts' cuts back into the document's).
    """
    from digitreader.pipeline.load import load_pages
    from digitreader.pipeline.segment import segment_page

    crash = settings.test_crash_on or ""
    if crash and _in_pool() and fnmatch.fnmatch(Path(path).name, crash.removeprefix("sending:")):
        if crash.startswith("sending:"):
            _die_while_sending()
        os._exit(70)  # DIGITREADER_TEST_CRASH_ON, tests only: the pool process dies, as a crash would kill it
    t0 = time.perf_counter()
    timings: dict[str, float] = {"decode": 0.0, "segment": 0.0}
    cuts: list[PageCut] = []
    said: list[str] = []  # the decoders' messages (`decoder_messages`)
    blank: InputError | None = None  # the first blank page's
    strips: list[tuple[FieldStrip | None, ...]] = []
    timings["strips"] = 0.0
    try:
        with _deadline(time_limit):
            it = iter(load_pages(path, settings, pages=pages))
            while True:
                t = time.perf_counter()
                with decoder_messages.caught() as heard:
                    page = next(it, None)
                timings["decode"] += time.perf_counter() - t
                if heard:  # a page read with damaged data (or, after the last page, the file's end)
                    where = f"page {page.number}" if page is not None else "after its pages" if cuts else "its file"
                    said += [f"{where}: {m}" for m in heard]
                if page is None:
                    break
                t = time.perf_counter()
                try:
                    cuts.append(segment_page(page, settings, template=template, model_path=model_path))
                except InputError as exc:
                    if exc.code != "blank_page":
                        raise
                    blank = blank or exc  # judged once every page is read: a document of blank pages fails
                    cuts.append(PageCut(page.number, page.width, page.height, (), blank=True))
                t1 = time.perf_counter()
                timings["segment"] += t1 - t
                strips.append(field_strips(page.gray, cuts[-1], page.y_scale))
                timings["strips"] += time.perf_counter() - t1
        if not cuts:
            raise InputError("the document has no pages", path=path, code="empty_file")
        if blank is not None and pages is None and all(c.blank for c in cuts):
            raise blank  # one blank sheet, or only blank ones: as before, the document fails
    except _DocumentTimeout:
        part = f" of pages {pages[0]}-{pages[1]}" if pages else ""
        msg = (
            f"{path}: took longer than {time_limit:g} s (DIGITREADER_DOCUMENT_TIME_LIMIT); "
            f"stopped after {len(cuts)} page(s){part}"
        )
        return DocumentCut(str(path), (), "timeout", msg, None, time.perf_counter() - t0, timings)
    except InputError as exc:
        return DocumentCut(str(path), (), exc.code, exc.message, len(cuts) or None, time.perf_counter() - t0, timings)
    except MemoryError:
        return DocumentCut(
            str(path), (), "too_large", f"{path}: out of memory", None, time.perf_counter() - t0, timings
        )
    except Exception as exc:  # a bug or an unforeseen file: fail this document, not the batch
        if raised_by_a_stop(exc):  # a Ctrl-C or SIGTERM that a library turned into an error: stop the run
            raise KeyboardInterrupt from exc
        return DocumentCut(
            str(path),
            (),
            "internal",
            f"{path}: unexpected error while reading: {exc!r}",
            None,
            time.perf_counter() - t0,
            timings,
            traceback.format_exc(),
        )
    cut = DocumentCut(
        str(path),
        tuple(cuts),
        None,
        None,
        len(cuts),
        time.perf_counter() - t0,
        timings,
        strips=tuple(strips),
        warnings=tuple(said),
    )
    return cut if pages is not None else nothing_read_from_damage(cut)  # a part: judged once joined


def nothing_read_from_damage(cut: DocumentCut) -> DocumentCut:
    """A document read from damaged image data in which not one digit was found fails, with code
    `damaged`: what decodes of it holds nothing to read (the fields may be on the lost part), and
    "done" with no field would tell a clerk there was nothing to rescan. Any other cut as it is."""
    if cut.failed or not cut.warnings or cut.crops:
        return cut
    more = f" (and {len(cut.warnings) - 1} more)" if len(cut.warnings) > 1 else ""
    msg = f"{cut.path}: no digit found in what decodes of the damaged image data: {cut.warnings[0]}{more}"
    return DocumentCut(cut.path, (), "damaged", msg, cut.page_count, cut.seconds, cut.timings)


def page_parts(path: str | Path, settings: Settings, size: int | None = None) -> list[tuple[int, int] | None]:
    """The parts to segment a document in: (first, last) page ranges of about `size` (default
    `settings.part_pages`; 0: never in parts) pages for a PDF or TIFF longer than that, else [None]
    (the whole document at once). Counting the pages opens the file without decoding any; a file
    that cannot be counted is left whole, and segmenting it reports what is wrong with it."""
    from digitreader.pipeline.load import count_pages

    size = settings.part_pages if size is None else size
    if size <= 0 or Path(path).suffix.lower() not in MULTI_PAGE_SUFFIXES:
        return [None]
    try:
        n = count_pages(path, settings)
    except Exception as exc:  # only an optimization: segment_document gives the specific error
        if raised_by_a_stop(exc):  # counting a PDF's pages is a pypdfium2 call (`raised_by_a_stop`)
            raise KeyboardInterrupt from exc
        return [None]
    if n <= size:
        return [None]
    k = -(-n // size)
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [(bounds[i] + 1, bounds[i + 1]) for i in range(k)]


def join_parts(parts: Sequence[DocumentCut]) -> DocumentCut:
    """One document's cut from the cuts of its parts, given in page order (`segment_document` with
    `pages`): the first part that failed fails the document, its page count including the pages
    before that part; else the parts' pages and strips in order, their seconds and timings added
    (and, read from damaged data with no digit found, failed: `nothing_read_from_damage`)."""
    seconds = sum(p.seconds for p in parts)
    timings: dict[str, float] = {}
    for p in parts:
        for k, v in p.timings.items():
            timings[k] = timings.get(k, 0.0) + v
    before = 0
    for p in parts:
        if p.failed:
            count = before + (p.page_count or 0) or None
            return DocumentCut(p.path, (), p.error_code, p.error_message, count, seconds, timings, p.traceback)
        before += len(p.pages)
    pages = tuple(page for p in parts for page in p.pages)
    if pages and all(p.blank for p in pages):
        msg = f"{parts[0].path}: every page is blank (no ink found)"
        return DocumentCut(parts[0].path, (), "blank_page", msg, len(pages), seconds, timings)
    strips = tuple(s for p in parts for s in p.strips) if all(len(p.strips) == len(p.pages) for p in parts) else ()
    said = tuple(w for p in parts for w in p.warnings)
    joined = DocumentCut(parts[0].path, pages, None, None, len(pages), seconds, timings, strips=strips, warnings=said)
    return nothing_read_from_damage(joined)


#: How often a pool process checks that the process that started the pool is still there (seconds).
PARENT_CHECK_SECONDS = 1.0


def init_worker(parent_pid: int | None = None) -> None:
    """Set up a segmentation pool process: one OpenCV thread (the pool already uses every core), Ctrl-C
    and SIGTERM ignored (the batch's process stops the pool), and, with `parent_pid` (the process whose pool this
    is), a watch that ends this process when that one is gone. A pool process whose parent was killed
    (SIGKILL, the OOM killer) otherwise waited forever to hand in its result, holding its memory: the
    fork server is its parent, not the batch's process."""
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # pragma: no cover - cv2 always present in the runtime
        pass
    # A terminal's Ctrl-C reaches every process of its foreground group: the batch's process stops the
    # pool itself, and tells this one when. Before, a pool process stopped wherever the Ctrl-C found it
    # (reading a document, waiting for the next, sending a result back), and the pool had to make
    # sense of what it left.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM likewise: sent to the whole process group (`kill -TERM -PGID`; systemd's default stop,
    # which signals every process of the service) it killed a pool process wherever it was, and one
    # cut off while sending its result back left the pool's reader waiting forever for the rest (the
    # batch's process hung in its clean-up: 1 round in about 200 of `stress_stops.py --group
    # --signal TERM`). The batch's process, signalled too, stops the pool; SIGKILL still ends this one.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if parent_pid is not None:
        threading.Thread(target=_exit_without, args=(parent_pid,), name="parent-watch", daemon=True).start()


def _exit_without(parent_pid: int) -> None:
    while _alive(parent_pid):
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


def _alive(pid: int) -> bool:
    """Whether process `pid` runs. A killed process stays a zombie until its own parent reaps it, and
    a zombie still answers kill(pid, 0): on Linux its state in /proc says it is gone."""
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
            return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] not in (b"Z", b"X")
        except FileNotFoundError:
            return False
        except (OSError, ValueError):  # unreadable: ask the kernel below
            pass
    try:  # no /proc (macOS): ask the kernel, zombies included
        os.kill(pid, 0)  # no signal is sent
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's (the pid was reused)
        return True
    return True
