"""The embedded pipeline end to end on generated pages: database and export against ground truth,
re-runs without duplicates, bad documents isolated, PostgreSQL for real."""

from __future__ import annotations

import json
import shutil
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sqlalchemy import func, select

from digitreader.db import Digit, Document, Field, Page, session_scope
from digitreader.db.migrate import upgrade
from digitreader.db.session import get_engine, make_engine
from digitreader.db.store import store_document_results
from digitreader.export import export_json
from digitreader.pipeline.process import (
    assemble_document,
    collect_inputs,
    load_predictor,
    process_batch,
    recognize_pages,
    segment_document,
)
from digitreader.settings import Settings
from digitreader.types import PageCut
from tests.test_db import pg_url  # noqa: F401  (fixture)

TEST_DATA = Path(__file__).resolve().parent / "data"


# ------------------------------------------------------------------------------------- fixtures


def make_scans(base: Path, data_dir: Path) -> Path:
    """8 generated pages in 6 files (multi-page TIFF and PDF among them), with ground truth.

    Generated once per test session (shared by the test modules that import this)."""
    from digitreader.synth import generate

    out = base / "scans"
    if not (out / ".complete").exists():
        generate(out, pages=5, seed=41, fmt="mixed", kind="mixed", data_dir=data_dir)
        generate(out / "multi", pages=3, seed=42, fmt="tiff", kind="form", per_file=3, data_dir=data_dir)
        (out / ".complete").write_text("ok")
    return out


@pytest.fixture(scope="session")
def scans(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    return make_scans(tmp_path_factory.getbasetemp(), data_dir)


@pytest.fixture(scope="session")
def predictor() -> Any:
    return load_predictor(Settings(_env_file=None))  # type: ignore[call-arg]


def truth_of(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    return json.loads(p.with_name(p.name.rsplit(".", 1)[0] + ".truth.json").read_text())


def iou(a: list[int], b: list[int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    union = aw * ah + bw * bh - ix * iy
    return ix * iy / union if union else 0.0


def score(export: dict[str, Any]) -> dict[str, float]:
    """Match every truth field and digit to the export by box overlap; count what agrees."""
    n = dict.fromkeys(("fields", "found", "exact", "digits", "right", "boxes_ok"), 0)
    for doc in export["documents"]:
        truth = truth_of(doc["path"])
        pages = {p["number"]: p for p in doc["pages"]}
        for tp in truth["pages"]:
            page = pages[tp["number"]]
            # (PDF pages are rasterized from their size in points: +-1 px of rounding.)
            assert abs(page["width"] - tp["width"]) <= 1 and abs(page["height"] - tp["height"]) <= 1
            for tf in tp["fields"]:
                n["fields"] += 1
                n["digits"] += sum(1 for d in tf["digits"] if d["label"] is not None)
                best = max(page["fields"], key=lambda f: iou(f["bbox"], tf["bbox"]), default=None)
                if best is None or iou(best["bbox"], tf["bbox"]) < 0.5:
                    continue
                n["found"] += 1
                n["exact"] += best["value"] == tf["value"]
                for td in tf["digits"]:
                    if td["label"] is None:
                        continue
                    d = max(best["digits"], key=lambda d: iou(d["bbox"], td["bbox"]), default=None)
                    if d is not None and iou(d["bbox"], td["bbox"]) > 0.2:
                        n["boxes_ok"] += 1
                        n["right"] += d["label"] == td["label"]
    return {
        "field_found": n["found"] / n["fields"],
        "field_exact": n["exact"] / n["fields"],
        "digit_boxes": n["boxes_ok"] / n["digits"],
        "digit_accuracy": n["right"] / n["digits"],
    }


def row_counts(settings: Settings) -> dict[str, int]:
    with session_scope(settings) as s:
        return {m.__tablename__: int(s.scalar(select(func.count()).select_from(m)) or 0)
                for m in (Document, Page, Field, Digit)}  # fmt: skip


# ---------------------------------------------------------------------------------- bad files


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def make_bad_files(folder: Path, good_png: Path) -> dict[str, str]:
    """Real bad files next to good ones; returns {file name: the error code it must get}."""
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    (folder / "zero.png").write_bytes(b"")
    expected["zero.png"] = "empty_file"
    data = good_png.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 3])
    expected["truncated.png"] = "truncated"
    (folder / "notes.jpg").write_text("this is a text file, not a scan\n" * 20)
    expected["notes.jpg"] = "unsupported"
    # A PNG whose header claims 100000 x 100000 pixels (a decompression bomb): refused unread.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    (folder / "huge.png").write_bytes(bomb + _png_chunk(b"IEND", b""))
    expected["huge.png"] = "too_large"
    cv2.imwrite(str(folder / "blank.png"), np.full((1754, 1240), 250, np.uint8))
    expected["blank.png"] = "blank_page"
    cv2.imwrite(str(folder / "black.png"), np.full((1754, 1240), 8, np.uint8))
    expected["black.png"] = "all_black"
    # The fault files of tests/data/ (see its README): PDFs need a tool to write them.
    pdfs = (("encrypted.pdf", "encrypted"), ("truncated.pdf", "truncated"), ("empty_page.pdf", "empty_page"))
    for name, code in pdfs:
        shutil.copy(TEST_DATA / name, folder / name)
        expected[name] = code
    return expected


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.slow
def test_batch_matches_ground_truth(settings: Settings, scans: Path, predictor: Any) -> None:
    report = process_batch([scans], settings, predictor=predictor)
    files = collect_inputs([scans])
    assert report.status == "done" and not report.failed
    assert report.total == len(files) == 6 and report.pages == 8
    with session_scope(settings) as s:
        export = export_json(s, report.batch_id)
        crops = s.scalars(select(Digit.crop).where(Digit.blank.is_(False))).all()
        assert crops and all(c is not None and len(c) == 784 for c in crops)
        n_blank = s.scalar(select(func.count()).select_from(Digit).where(Digit.blank.is_(True)))
        assert n_blank is not None and n_blank > 0
    assert export["schema"] == "digitreader.results/v1" and export["batch"] == report.batch_id
    for doc in export["documents"]:
        assert doc["status"] in ("done", "needs_review") and doc["error"] is None
        assert len(doc["pages"]) == len(truth_of(doc["path"])["pages"])
        for page in doc["pages"]:
            for f in page["fields"]:
                assert f["value"] == "".join(str(d["label"]) for d in f["digits"] if d["label"] is not None)
                assert f["needs_review"] == (bool(f["flags"]))
                if any(d["needs_review"] for d in f["digits"]):
                    assert f["needs_review"]
    q = score(export)
    # Loose floors (the benchmark measures the real numbers): a broken stage falls far below them.
    assert q["field_found"] >= 0.9, q
    assert q["digit_boxes"] >= 0.9, q
    assert q["digit_accuracy"] >= 0.85, q
    counts = row_counts(settings)
    assert counts["digits"] == sum(len(f["digits"]) for d in export["documents"] for p in d["pages"]
                                   for f in p["fields"])  # fmt: skip


@pytest.mark.slow
def test_rerun_skips_force_reprocesses(settings: Settings, scans: Path, predictor: Any) -> None:
    first = process_batch([scans], settings, predictor=predictor)
    before = row_counts(settings)
    again = process_batch([scans], settings, predictor=predictor)
    assert again.batch_id != first.batch_id and again.total == 0 and not again.processed
    assert {s.reason for s in again.skipped} == {"processed"} and len(again.skipped) == first.total
    assert row_counts(settings) == before  # nothing duplicated
    forced = process_batch([scans], settings, predictor=predictor, force=True)
    assert forced.total == first.total and forced.status == "done"
    with session_scope(settings) as s:
        a, b = export_json(s, first.batch_id), export_json(s, forced.batch_id)
    values = lambda e: [f["value"] for d in e["documents"] for p in d["pages"] for f in p["fields"]]  # noqa: E731
    assert values(a) == values(b)  # deterministic
    assert row_counts(settings)["digits"] == 2 * before["digits"]


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "batch_size"), [(1, 100_000), (2, 100_000), (2, 8)])
def test_pool_and_batch_size_change_nothing_stored(
    tmp_path: Path, scans: Path, predictor: Any, workers: int, batch_size: int
) -> None:
    """However the documents are scheduled (inline or in a pool; crops read in one batch at the end
    or in small ones as documents come in), every document is read and stored, with the same values."""
    st = Settings(home=tmp_path / "home", workers=workers, batch_size=batch_size, _env_file=None)  # type: ignore[call-arg]
    report = process_batch([scans], st, predictor=predictor)
    assert report.status == "done" and len(report.processed) == 6 and report.pages == 8
    with session_scope(st) as s:
        export = export_json(s, report.batch_id)
        stored = {d.path: d.status for d in s.scalars(select(Document))}
    assert len(stored) == 6 and set(stored.values()) <= {"done", "needs_review"}
    values = {d["path"]: [f["value"] for p in d["pages"] for f in p["fields"]] for d in export["documents"]}
    ref = Settings(home=tmp_path / "ref", workers=1, batch_size=1024, _env_file=None)  # type: ignore[call-arg]
    ref_report = process_batch([scans], ref, predictor=predictor)
    with session_scope(ref) as s:
        ref_export = export_json(s, ref_report.batch_id)
    assert values == {d["path"]: [f["value"] for p in d["pages"] for f in p["fields"]] for d in ref_export["documents"]}
    assert all(v for v in values.values())


def test_page_parts_and_join_parts(tmp_path: Path) -> None:
    """Only a PDF or TIFF longer than the part size is cut in parts, of nearly equal size; a file that
    cannot be counted stays whole. Joined parts keep page order; the first failed part fails the
    document, counting the pages before it."""
    from PIL import Image

    from digitreader.pipeline.document import DocumentCut, join_parts, page_parts

    st = Settings(_env_file=None)  # type: ignore[call-arg]
    page = Image.fromarray(np.full((60, 40), 230, np.uint8))
    nine, four = tmp_path / "nine.tif", tmp_path / "four.tif"
    page.save(nine, save_all=True, append_images=[page] * 8)
    page.save(four, save_all=True, append_images=[page] * 3)
    page.save(tmp_path / "one.png")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    assert page_parts(nine, st, size=4) == [(1, 3), (4, 6), (7, 9)]
    assert page_parts(four, st, size=4) == [None]
    assert page_parts(tmp_path / "one.png", st, size=1) == [None]
    assert page_parts(tmp_path / "broken.pdf", st, size=1) == [None]

    def part(first: int, last: int) -> DocumentCut:
        pages = tuple(PageCut(number=n, width=40, height=60, fields=()) for n in range(first, last + 1))
        return DocumentCut("d.tif", pages, page_count=len(pages), seconds=1.0, timings={"segment": 0.5})

    joined = join_parts([part(1, 3), part(4, 6), part(7, 9)])
    assert not joined.failed and [p.number for p in joined.pages] == list(range(1, 10))
    assert joined.page_count == 9 and joined.seconds == 3.0 and joined.timings == {"segment": 1.5}
    bad = DocumentCut("d.tif", (), "truncated", "d.tif (page 5): cut short", page_count=1, seconds=1.0)
    failed = join_parts([part(1, 3), bad, DocumentCut("d.tif", (), "unreadable", "later", seconds=1.0)])
    assert failed.failed and failed.error_code == "truncated" and failed.pages == ()
    assert failed.page_count == 4 and failed.error_message == "d.tif (page 5): cut short"


def _damage_page(tif: Path, number: int) -> None:
    """Overwrite the zlib header of page `number`'s first strip: that page no longer decodes (Pillow:
    "incorrect header check"), while the file's structure and its page count stay intact."""
    from PIL import Image

    with Image.open(tif) as im:
        im.seek(number - 1)
        tags = im.tag_v2  # type: ignore[attr-defined]
        offset = tags[273][0]
    with open(tif, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff\xff\xff\xff")


@pytest.mark.slow
def test_a_long_document_is_cut_in_parts_and_joined(
    tmp_path: Path, data_dir: Path, scans: Path, predictor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One 6-page TIFF alone in a batch, with parts of 2 pages: the pool cuts the three parts at once
    and joins them, and the document stored is the one cut whole, inline. A damaged page in a later
    part fails the document with that page's own error; a good document beside it is stored."""
    from digitreader.pipeline import document
    from digitreader.synth import generate

    generate(tmp_path / "long", pages=6, seed=43, fmt="tiff", kind="form", per_file=6, data_dir=data_dir)
    (tif,) = sorted((tmp_path / "long").glob("*.tif"))
    monkeypatch.setenv("DIGITREADER_PART_PAGES", "2")
    assert document.page_parts(tif, Settings(_env_file=None)) == [(1, 2), (3, 4), (5, 6)]  # type: ignore[call-arg]
    assert document.page_parts(tif, Settings(_env_file=None, part_pages=0)) == [None]  # type: ignore[call-arg]
    assert document.page_parts(tif, Settings(_env_file=None, part_pages=6)) == [None]  # type: ignore[call-arg]

    def pages(e: dict[str, Any]) -> list[Any]:
        (doc,) = e["documents"]
        return [(p["number"], [(f["value"], f["bbox"]) for f in p["fields"]]) for p in doc["pages"]]

    from digitreader.pipeline.report import DocumentReport, ProgressHook

    class Calls(ProgressHook):
        def __init__(self) -> None:
            self.calls: list[tuple[str, int, int]] = []

        def part_done(self, document_id: int, done: int, parts: int) -> None:
            self.calls.append(("part", done, parts))

        def document_done(self, report: DocumentReport) -> None:
            self.calls.append(("document", report.pages, 0))

    exports, hooks = [], []
    for workers in (2, 1):
        st = Settings(home=tmp_path / f"w{workers}", workers=workers, _env_file=None)  # type: ignore[call-arg]
        hooks.append(Calls())
        report = process_batch([tif], st, predictor=predictor, hook=hooks[-1])
        assert report.status == "done" and report.pages == 6
        with session_scope(st) as s:
            exports.append(export_json(s, report.batch_id))
    assert [n for n, _ in pages(exports[0])] == [1, 2, 3, 4, 5, 6]
    assert pages(exports[0]) == pages(exports[1])
    assert all(fields for _, fields in pages(exports[0]))
    # The progress hook hears of each part but the last, then of the stored document.
    assert hooks[0].calls == [("part", 1, 3), ("part", 2, 3), ("document", 6, 0)]
    assert hooks[1].calls == [("document", 6, 0)]

    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(tif, bad / "long.tif")
    _damage_page(bad / "long.tif", 5)
    shutil.copy(tif, bad / "first.tif")
    _damage_page(bad / "first.tif", 1)  # page 1, in the first part
    one = (sorted(scans.glob("*.png")) or sorted(scans.glob("*.jp*g")))[0]
    shutil.copy(one, bad / f"page{one.suffix}")
    st = Settings(home=tmp_path / "bad-home", workers=2, _env_file=None)  # type: ignore[call-arg]
    report = process_batch([bad], st, predictor=predictor)
    assert report.status == "partial"
    with session_scope(st) as s:
        docs = {Path(d.path).name: d for d in s.scalars(select(Document))}
        assert docs[f"page{one.suffix}"].status in ("done", "needs_review")
        for name, page in (("long.tif", 5), ("first.tif", 1)):
            d = docs[name]
            assert d.status == "failed" and d.error_code in ("unreadable", "truncated"), (d.error_code, d.error_message)
            assert f"(page {page})" in (d.error_message or "")
        stored = s.scalar(select(func.count()).select_from(Page).join(Document).where(Document.status == "failed"))
        assert stored == 0


def test_a_run_waiting_for_another_shows_its_progress_then_takes_over(
    settings: Settings, scans: Path, predictor: Any
) -> None:
    """A run of a submission whose batch another run holds waits, telling its hook how far the other
    run is (documents finished of the batch's), then reads only what that run left."""
    from digitreader.db import store
    from digitreader.db.locks import BatchLock
    from digitreader.pipeline.process import hash_inputs
    from digitreader.pipeline.report import ProgressHook

    engine = get_engine(settings)
    inputs, _ = hash_inputs(collect_inputs([scans]))
    other = BatchLock(engine)  # the other run: it registered the batch and holds it
    with session_scope(engine=engine) as s:
        plan = store.register_batch(s, inputs, claim=other.try_acquire)

    class Hook(ProgressHook):
        def __init__(self) -> None:
            self.seen: list[tuple[int, int]] = []

        def waiting(self, batch_id: int, finished: int, total: int, holder: str | None = None) -> None:
            assert batch_id == plan.batch_id
            self.seen.append((finished, total))

    hook = Hook()
    result: list[Any] = []
    runner = threading.Thread(target=lambda: result.append(process_batch([scans], settings, predictor=predictor,
                                                                         hook=hook)))  # fmt: skip
    try:
        runner.start()
        deadline = time.monotonic() + 60
        while not hook.seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hook.seen[0] == (0, 6)
        with session_scope(engine=engine) as s:  # the other run reads two documents meanwhile
            for doc_id, path in plan.todo[:2]:
                store.store_document_failure(s, doc_id, "not_an_image", f"{path}: (the other run)")
        while (2, 6) not in hook.seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (2, 6) in hook.seen and runner.is_alive()
    finally:
        other.release()  # the other run is over
        runner.join(120)
    [report] = result
    assert report.batch_id == plan.batch_id and report.waited and len(report.processed) == 4
    assert report.status == "partial"  # the other run's two failures are the batch's
    with session_scope(engine=engine) as s:
        docs = s.scalars(select(Document).where(Document.batch_id == plan.batch_id)).all()
        assert sorted(d.attempts for d in docs) == [1] * 6


def test_storing_a_document_twice_replaces_it(settings: Settings, scans: Path, predictor: Any) -> None:
    path = sorted(scans.glob("*.png")) or sorted(scans.glob("*.jp*g"))
    cut = segment_document(path[0], settings)
    assert not cut.failed, cut.error_message
    results = assemble_document(cut, recognize_pages(predictor, cut.pages), 0.9)
    from digitreader.db.store import InputFile, register_batch

    with session_scope(settings) as s:
        plan = register_batch(s, [InputFile(str(path[0]), "f" * 64, 1)])
    doc_id = plan.todo[0][0]
    for _ in range(2):  # e.g. a redelivered task
        with session_scope(settings) as s:
            store_document_results(s, doc_id, results, model_version="t")
    counts = row_counts(settings)
    assert counts["pages"] == len(results)
    assert counts["digits"] == sum(len(f.digits) for r in results for f in r.fields)


@pytest.mark.slow
def test_bad_documents_fail_alone(settings: Settings, scans: Path, predictor: Any, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    good = sorted(scans.glob("*.png"))[:1] + sorted(scans.glob("*.jp*g"))[:1]
    folder.mkdir()
    for g in good:
        shutil.copy(g, folder / g.name)
    expected = make_bad_files(folder, good[0])
    report = process_batch([folder], settings, predictor=predictor)
    assert report.status == "partial"
    with session_scope(settings) as s:
        docs = {Path(d.path).name: d for d in s.scalars(select(Document)).all()}
        got = {name: d.error_code for name, d in docs.items() if d.status == "failed"}
        assert got == expected
        for name in expected:
            message = docs[name].error_message
            assert message is not None
            assert name in message and message.strip()
        for g in good:
            assert docs[g.name].status in ("done", "needs_review")
            assert s.scalar(select(func.count()).select_from(Page).where(Page.document_id == docs[g.name].id)) == 1


@pytest.mark.integration
@pytest.mark.slow
def test_postgres_end_to_end(pg_url: str, scans: Path, predictor: Any, tmp_path: Path) -> None:  # noqa: F811
    engine = make_engine(pg_url)
    upgrade(engine)
    engine.dispose()
    settings = Settings(home=tmp_path, database_url=pg_url, _env_file=None)  # type: ignore[call-arg]
    report = process_batch([scans], settings, predictor=predictor)
    assert report.status == "done" and report.pages == 8
    with session_scope(settings) as s:
        export = export_json(s, report.batch_id)
    assert score(export)["digit_accuracy"] >= 0.85
    before = row_counts(settings)
    again = process_batch([scans], settings, predictor=predictor)
    assert again.total == 0 and row_counts(settings) == before
    get_engine(settings).dispose()


@pytest.mark.integration
def test_postgres_one_document_stored_by_two_processes_at_once(
    pg_url: str,  # noqa: F811
    scans: Path,
    predictor: Any,
    tmp_path: Path,
) -> None:
    """Two re-runs of one interrupted batch store the same document at once: the second waits for
    the first's transaction (the document's row lock) and replaces its rows. Without the lock the
    second failed on the pages' unique (document, number) and the whole run stopped."""
    from digitreader.db.store import InputFile, register_batch

    engine = make_engine(pg_url)
    upgrade(engine)
    path = (sorted(scans.glob("*.png")) or sorted(scans.glob("*.jp*g")))[0]
    cut = segment_document(path, Settings(home=tmp_path, _env_file=None))  # type: ignore[call-arg]
    results = assemble_document(cut, recognize_pages(predictor, cut.pages), 0.9)
    with session_scope(engine=engine) as s:
        doc_id = register_batch(s, [InputFile(str(path), "c" * 64, 1)], force=True).todo[0][0]
    second = make_engine(pg_url)
    first_stored, failures = threading.Event(), []

    def store_second() -> None:
        first_stored.wait(timeout=60)
        try:
            with session_scope(engine=second) as s:
                store_document_results(s, doc_id, results, model_version="second")
        except Exception as exc:  # reported by the assertion below
            failures.append(exc)

    other = threading.Thread(target=store_second)
    other.start()
    with session_scope(engine=engine) as s:
        store_document_results(s, doc_id, results, model_version="first")
        first_stored.set()
        time.sleep(0.5)  # the other transaction runs into this one's rows before this one commits
    other.join(timeout=120)
    assert failures == []
    with session_scope(engine=engine) as s:
        pages = s.scalars(select(Page).where(Page.document_id == doc_id)).all()
        assert len(pages) == len(results)
        read = select(Digit.model_version).join(Field).where(Field.page_id.in_([p.id for p in pages]), ~Digit.blank)
        models = set(s.scalars(read))
        assert models == {"second"}  # the second replaced the first's rows
    engine.dispose()
    second.dispose()


def test_a_pool_process_tells_its_parent_gone_zombie_or_reaped(monkeypatch: pytest.MonkeyPatch) -> None:
    """`document._alive`, which a pool process asks every second about the batch's process: a killed
    process not yet reaped (a zombie) is gone; without /proc (macOS) the kernel is asked instead, and
    a running process is never taken for gone."""
    import os
    import signal
    import subprocess
    import sys

    from digitreader.pipeline.document import _alive

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _alive(os.getpid()) and _alive(child.pid)
        child.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(child.pid) and time.monotonic() < deadline:  # dead, not yet reaped: a zombie
            time.sleep(0.01)
        assert not _alive(child.pid) and child.poll() is not None
        assert not _alive(child.pid)  # reaped
        # As on a system without /proc: no folder, and no file in it.
        real_open = open

        def no_proc(path: Any, *args: Any, **kwargs: Any) -> Any:
            if str(path).startswith("/proc/"):
                raise FileNotFoundError(path)
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os.path, "isdir", lambda p: False if str(p).startswith("/proc") else os.path.exists(p))
        monkeypatch.setattr("builtins.open", no_proc)
        assert _alive(os.getpid()) and not _alive(child.pid)
    finally:
        child.kill()
        child.wait()


def test_pool_processes_start_with_what_segmenting_needs_loaded() -> None:
    """The pool's fork server imports the segmentation modules (and the digitreader modules of this
    process) once, so that a pool process starts with them loaded instead of importing them all itself
    before its first document. Asked of a pool process with a builtin, so that nothing of this test's
    own module is imported there."""
    from digitreader.pipeline.document import WORKER_MODULES
    from digitreader.pipeline.pool import make_executor, pool_preload

    preload = pool_preload()
    assert set(WORKER_MODULES) <= set(preload) and "digitreader.pipeline.process" in preload
    assert not any(m.endswith("__main__") for m in preload[1:])  # never a `python -m` entry point
    executor = make_executor(2)
    try:
        loaded = set(executor.submit(eval, "list(__import__('sys').modules)").result(timeout=120))
    finally:
        executor.shutdown()
    assert set(WORKER_MODULES) <= loaded
    assert "digitreader.pipeline.cut" in loaded and "digitreader.pipeline.process" in loaded


def test_a_document_that_kills_its_pool_process_fails_alone(tmp_path: Path, scans: Path, predictor: Any) -> None:
    """A pool process that dies (a crash in a C half, the OOM killer) breaks the whole pool, and every
    document in flight then reports it. Only the document that kills it must fail (worker_lost): the
    others in flight are read again, one at a time in a process of their own, and stored."""
    folder = tmp_path / "in"
    folder.mkdir()
    for f in sorted(scans.iterdir()):
        if f.suffix in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".pdf"):
            shutil.copy(f, folder / f.name)
    good = sorted(p.name for p in folder.iterdir())
    poison = folder / "poison.jpg"  # a copy of a good page, with other content: not a duplicate
    poison.write_bytes((folder / good[0]).read_bytes() + b"\\0")
    settings = Settings(home=tmp_path / "home", workers=2, test_crash_on="poison*", _env_file=None)  # type: ignore[call-arg]
    report = process_batch([folder], settings, predictor=predictor)
    assert report.status == "partial"
    with session_scope(settings) as s:
        docs = {Path(d.path).name: d for d in s.scalars(select(Document)).all()}
    assert docs["poison.jpg"].status == "failed" and docs["poison.jpg"].error_code == "worker_lost"
    assert "poison.jpg" in (docs["poison.jpg"].error_message or "")
    assert len(good) >= 4
    assert all(docs[n].status in ("done", "needs_review") for n in good)  # read, not blamed
    assert [Path(d.path).name for d in report.failed] == ["poison.jpg"]


def test_a_pool_that_breaks_while_it_starts_a_process_ends_whole(tmp_path: Path, scans: Path, predictor: Any) -> None:
    """A document that kills its pool process at once, submitted first: the pool breaks while this
    process is still starting the pool's other process for the next document. That one joined the
    broken pool unknown to Python's clean-up and was never stopped, and the pool's thread waited for
    it forever (a test run hung at exit, after every test had passed); or the start failed on the
    queue the broken pool had closed, and the whole batch stopped with an internal error. A race:
    several rounds, each must end with the batch read, the pool's thread and every pool process gone."""
    import concurrent.futures.process as cfp
    import multiprocessing

    good = sorted(f for f in scans.iterdir() if f.suffix in (".png", ".jpg", ".tif", ".pdf"))
    for round_ in range(5):
        folder = tmp_path / f"in{round_}"
        folder.mkdir()
        for f in good:
            shutil.copy(f, folder / f.name)
        (folder / "poison.jpg").write_bytes(good[0].read_bytes() + b"%d" % round_)
        settings = Settings(home=tmp_path / f"home{round_}", workers=2, test_crash_on="poison*", _env_file=None)  # type: ignore[call-arg]
        report = process_batch([folder], settings, predictor=predictor)
        assert report.status == "partial"
        assert [(Path(d.path).name, d.error_code) for d in report.failed] == [("poison.jpg", "worker_lost")]
        assert len([d for d in report.processed if d.status != "failed"]) == len(good)
        assert not [t for t in list(cfp._threads_wakeups) if t.is_alive()], "a pool's thread is still running"
        assert not multiprocessing.active_children(), "a pool process is still running"


def test_pool_processes_outlive_a_sigterm_to_their_group() -> None:
    """SIGTERM to the whole process group (`kill -TERM -PGID`, systemd's default stop) reaches the pool's
    processes too. They leave stopping to the batch's process, as they do with a terminal's Ctrl-C:
    one killed while it sent its result back left the pool's reader waiting forever for the rest, and
    the stopped batch hung in its clean-up. A pool process SIGTERMed goes on and answers; SIGKILL, as
    the broken-pool clean-up sends, still ends it."""
    import os
    import signal

    from digitreader.pipeline.pool import process_pool

    pool = process_pool(1)
    try:
        pid = pool.submit(os.getpid).result(timeout=120)
        os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
        assert pool.submit(os.getpid).result(timeout=60) == pid  # the same process, alive
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(Exception, match="terminated abruptly"):
            pool.submit(time.sleep, 5).result(timeout=60)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


STUCK_POOL_SCRIPT = """
import sys, time
from pathlib import Path
from digitreader.settings import Settings
from digitreader.pipeline.document import segment_document
from digitreader.pipeline.pool import process_pool, stop_pool
settings = Settings(_env_file=None, home=Path(sys.argv[2]), test_crash_on="sending:*")
pool = process_pool(1)
fut = pool.submit(segment_document, sys.argv[1], settings)
time.sleep(1.0)  # the process is dead; the pool's reader waits for the rest of its message
stop_pool(pool)
print(type(fut.exception(timeout=0)).__name__)
"""


def test_stopping_a_pool_whose_reader_is_stuck_ends(tmp_path: Path, scans: Path) -> None:
    """The clean-up after a Ctrl-C or at the end of a batch (`pool.stop_pool`) with a pool process killed
    halfway through sending its result: the shutdown waited forever for the pool's thread, stuck
    reading the rest of the message. Now the pool is unstuck and ended. (In a process of its own,
    with a time limit: the code before hung, and hung its interpreter at exit.)"""
    import subprocess
    import sys

    doc = sorted(f for f in scans.iterdir() if f.suffix in (".png", ".jpg", ".tif"))[0]
    args = [sys.executable, "-c", STUCK_POOL_SCRIPT, str(doc), str(tmp_path / "home")]
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["BrokenProcessPool"]
