"""Distributed mode for real: Celery workers as subprocesses (`digitreader worker`), real Redis,
real PostgreSQL (a fresh database per test session), generated pages.

- the export of a distributed batch equals the embedded export of the same files;
- a page worker and the inference worker SIGKILLed mid-batch (120 documents), then restarted:
  every document ends done exactly once (stored once, no duplicate digit rows);
- Redis killed and restarted mid-batch (our own redis-server, AOF on), then the database made
  unreachable for a few seconds: the batch completes, nothing lost or duplicated;
- a poison document that kills its worker on every delivery ends failed (worker_lost) after the
  redelivery cap while the rest of the batch completes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sqlalchemy import create_engine, func, select, text, update

from digitreader import distributed as dist
from digitreader.db import Digit, Document, Field, Page, session_scope
from digitreader.db.migrate import upgrade
from digitreader.db.session import dispose_engines, get_engine, make_engine
from digitreader.errors import ExitCode
from digitreader.export import export_json
from digitreader.pipeline.document import DocumentCut
from digitreader.pipeline.process import process_batch, segment_document
from digitreader.settings import Settings
from tests.test_decoder_messages import LIBJPEG, damaged_jpeg
from tests.test_workers_support import (
    ROOT,
    compare_exports,
    free_port,
    model_for_tests,
    pg_admin_url,
    pick_redis_db,
)

pytestmark = [pytest.mark.integration]


# ------------------------------------------------------------------------------------ fixtures


def _require(what: str, ok: bool) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is not reachable (CI must have it)")
        pytest.skip(f"{what} is not running")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A Redis database number of the shared server that is empty now (flushed at the end)."""
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
        ok = True
    except redis.exceptions.RedisError:
        ok = False
    _require("Redis on 127.0.0.1:6379", ok)
    db = pick_redis_db()
    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    try:
        yield f"redis://127.0.0.1:6379/{db}"
    finally:
        client.flushdb()


@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    """Admin URL of PostgreSQL on 127.0.0.1:5432; per-test databases are created from it."""
    eng = create_engine(pg_admin_url(), isolation_level="AUTOCOMMIT")
    try:
        with eng.connect():
            ok = True
    except Exception:
        ok = False
    _require("PostgreSQL on 127.0.0.1:5432", ok)
    yield pg_admin_url()
    eng.dispose()


@pytest.fixture()
def pg_db(pg_server: str) -> Iterator[str]:
    """A fresh database digitreader_w_<random> at the latest schema, dropped afterwards."""
    import secrets

    name = f"digitreader_w_{secrets.token_hex(4)}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    eng = make_engine(url)
    upgrade(eng)
    eng.dispose()
    try:
        yield url
    finally:
        dispose_engines()
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str | None:
    return model_for_tests(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def small_pages(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> list[Path]:
    """Four small (100 dpi) generated form pages."""
    from digitreader.synth import generate

    out = tmp_path_factory.mktemp("small")
    generate(out, pages=4, seed=5, fmt="png", kind="form", dpi=100, data_dir=data_dir)
    return sorted(out.glob("*.png"))


def variants(sources: list[Path], n: int, out: Path, poison: int = 0) -> list[Path]:
    """`n` distinct files (one pixel of a margin changed, so their SHA-256 differ) cycling over
    `sources`; the first `poison` are named *poison*."""
    out.mkdir(parents=True, exist_ok=True)
    imgs = []
    for s in sources:
        src = cv2.imread(str(s), cv2.IMREAD_GRAYSCALE)
        assert src is not None, s
        imgs.append(src)
    files = []
    for i in range(n):
        img = imgs[i % len(imgs)].copy()
        img[1, 1 + i // 250] = i % 250
        name = f"{'poison-' if i < poison else ''}doc-{i:04d}-src{i % len(imgs)}.png"
        cv2.imwrite(str(out / name), img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        files.append(out / name)
    return files


def start_redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    """Our own redis-server on `port` (append-only file in `folder`, fsync on every write, so a
    SIGKILLed server comes back with its queues and unacknowledged messages)."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        _require("redis-server (binary)", False)
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [str(redis_server), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
           "--appendfsync", "always", "--dir", str(folder)]  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


class Pool:
    """`digitreader worker` subprocesses, each in its own process group (so SIGKILL takes the
    main process and its pool children, like a machine going away)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, pool: str, concurrency: int = 1) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        log = open(self.logs / f"{pool}-{n}.log", "wb")  # noqa: SIM115 (closed with the process)
        p = subprocess.Popen(
            [sys.executable, "-m", "digitreader", "worker", "--pool", pool, "-c", str(concurrency),
             "--name", f"{pool}-{n}-{os.getpid()}@test"],  # fmt: skip
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.procs.append(p)
        return p

    @staticmethod
    def kill(p: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill(p)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)  # pool children left behind, if any

    def tail(self) -> str:
        out = []
        for f in sorted(self.logs.glob("*.log")):
            out.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-25:]))
        return "\n".join(out)


def worker_env(settings_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITREADER_")}
    env.update(settings_env)
    env["PYTHONPATH"] = str(ROOT)
    return env


def make_settings(env: dict[str, str]) -> Settings:
    kw: dict[str, Any] = {k[len("DIGITREADER_") :].lower(): v for k, v in env.items() if k.startswith("DIGITREADER_")}
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def base_env(tmp: Path, db_url: str, broker: str, model: str | None, **extra: Any) -> dict[str, str]:
    env = {
        "DIGITREADER_HOME": str(tmp / "home"),
        "DIGITREADER_DATABASE_URL": db_url,
        "DIGITREADER_BROKER_URL": broker,
        "DIGITREADER_DATA_DIR": os.environ.get("DIGITREADER_DATA_DIR", str(ROOT.parent / "shared" / "datasets")),
    }
    if model:
        env["DIGITREADER_MODEL_PATH"] = model
    env.update({f"DIGITREADER_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def wait(settings: Settings, batch_id: int, pool: Pool, timeout: float, failed: int = 0) -> dist.Progress:
    """Wait for the batch to finish; fail with the workers' logs and the failures if it does not,
    or if more than `failed` documents failed."""
    try:
        prog = dist.wait_for_batch(batch_id, settings, poll=0.3, timeout=timeout)
    except TimeoutError:
        pytest.fail(f"batch {batch_id} did not finish in {timeout} s\n{pool.tail()}")
    if prog.counts.get("failed", 0) > failed:
        with session_scope(settings) as s:
            rows = s.execute(select(Document.path, Document.error_code, Document.error_message)
                             .where(Document.batch_id == batch_id, Document.status == "failed")).all()  # fmt: skip
        pytest.fail(f"{len(rows)} document(s) failed: {[tuple(r) for r in rows[:3]]}\n{pool.tail()}")
    return prog


def wait_finished(settings: Settings, batch_id: int, at_least: int, timeout: float, pool: Pool) -> int:
    engine = get_engine(settings)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        p = dist.batch_progress(engine, batch_id)
        if p.finished >= at_least:
            return p.finished
        time.sleep(0.1)
    pytest.fail(f"fewer than {at_least} documents finished in {timeout} s\n{pool.tail()}")


def expected_digits(sources: list[Path], settings: Settings) -> list[int]:
    """Digit rows (slots, blank or not) each source page yields (pass the first variant of each
    source: a re-encoded PNG lacks the original's dpi, which segmentation uses)."""
    out = []
    for s in sources:
        cut = segment_document(s, settings)
        assert not cut.failed, cut.error_message
        out.append(sum(len(f.slots) for p in cut.pages for f in p.fields))
    return out


def check_exactly_once(settings: Settings, batch_id: int, per_source: list[int] | None = None) -> dict[str, int]:
    """Every document finished, stored exactly once (attempts == 1), with the digit rows its
    source page yields (so nothing lost, nothing duplicated)."""
    with session_scope(settings) as s:
        docs = s.execute(select(Document.id, Document.path, Document.status, Document.attempts)
                         .where(Document.batch_id == batch_id)).all()  # fmt: skip
        digits = dict(
            s.execute(
                select(Page.document_id, func.count(Digit.id))
                .join(Field, Field.page_id == Page.id)
                .join(Digit, Digit.field_id == Field.id)
                .group_by(Page.document_id)
            ).all()
        )
        pages = dict(s.execute(select(Page.document_id, func.count(Page.id)).group_by(Page.document_id)).all())
    statuses: dict[str, int] = {}
    for d in docs:
        statuses[d.status] = statuses.get(d.status, 0) + 1
        if d.status == "failed":
            continue
        assert d.status in ("done", "needs_review"), d
        assert d.attempts == 1, f"{d.path} stored {d.attempts} times"
        assert pages.get(d.id) == 1
        if per_source is not None:
            src = int(d.path.rsplit("src", 1)[1].split(".")[0])
            assert digits.get(d.id) == per_source[src], d.path
    return statuses


# --------------------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_workers_export_equals_embedded(
    tmp_path: Path, pg_db: str, redis_url: str, model_path: str | None, data_dir: Path
) -> None:
    from tests.test_pipeline_e2e import make_scans

    scans = make_scans(tmp_path.parent.parent, data_dir)
    files = sorted(str(p) for p in scans.rglob("*") if p.suffix in {".png", ".jpg", ".tif", ".tiff", ".pdf", ".bmp"})
    # And a JPEG that lost the end of its data: read as far as it decodes, with libjpeg's warning, in both modes.
    files.append(str(damaged_jpeg(tmp_path / "damaged.jpg")))
    # And the sample order form scanned upside down: read turned in both modes (the turn travels in the codec).
    upside_down = Path(__file__).resolve().parents[1] / "examples" / "scans" / "scan-0006-00001.jpg"
    files.append(str(upside_down))
    # Parts of 2 pages: the 3-page TIFF is cut in two parts by the page pool (the embedded run below
    # cuts it whole), so the comparison also checks that the parts are joined into the same document.
    env = base_env(tmp_path, pg_db, redis_url, model_path, document_time_limit=60, part_pages=2)
    settings = make_settings(env)
    pool = Pool(worker_env(env), tmp_path / "logs")
    try:
        pool.start("page", 2)
        pool.start("infer")
        # The real CLI: the id alone on stdout, --wait follows it to the end (exit 0).
        res = subprocess.run([sys.executable, "-m", "digitreader", "submit", "--wait", *files],
                             cwd=tmp_path, env=worker_env(env), capture_output=True, timeout=240)  # fmt: skip
        assert res.returncode == 0, res.stderr.decode()[-3000:] + pool.tail()
        batch_id = int(res.stdout.decode().strip())
        # Its summary names what the embedded one names (before: only the counts by status).
        said = res.stderr.decode()
        assert "  pages: 10" in said and "flagged digits:" in said, said
        assert f"read from damaged image data (1; each message in the export):\n    {files[-2]}" in said, said
        st = subprocess.run([sys.executable, "-m", "digitreader", "status", str(batch_id), "--json"],
                            cwd=tmp_path, env=worker_env(env), capture_output=True, timeout=60)  # fmt: skip
        assert st.returncode == 0, st.stderr.decode()
        status = json.loads(st.stdout)
        assert status["status"] == "done"
        assert {q for w in status["broker"]["workers"] for q in w["queues"]} == {"pages", "infer"}
        assert status["broker"]["queues"] == {"pages": 0, "infer": 0}
    finally:
        pool.stop()
    logs = "".join(f.read_text(errors="replace") for f in (tmp_path / "logs").glob("page-*.log"))
    assert "3 pages: queued in 2 parts" in logs and "segmented in 2 parts: 3 page(s)" in logs, pool.tail()
    with session_scope(settings) as s:
        distributed = export_json(s, batch_id)
    # What `submit --wait` shows as it goes: the pages of the documents stored so far (here: all).
    pages = sum(len(d["pages"]) for d in distributed["documents"])
    assert pages == 10 and dist.batch_progress(get_engine(settings), batch_id).pages == pages
    assert [d["warnings"] for d in distributed["documents"] if d["warnings"]] == [[f"page 1: {LIBJPEG}"]]
    damaged = [f for d in distributed["documents"] if d["warnings"] for p in d["pages"] for f in p["fields"]]
    assert damaged and all("damaged_image" in f["flags"] for f in damaged if f["value"])  # as embedded flags them
    turned = {d["path"]: [p["rotation"] for p in d["pages"]] for d in distributed["documents"] if d["pages"]}
    assert turned.pop(str(upside_down)) == [180] and all(r == [0] * len(r) for r in turned.values())
    # The embedded mode on the same files, in its own SQLite database.
    emb_model = Path(model_path) if model_path is not None else None  # what Settings makes of the str
    emb_settings = Settings(_env_file=None, home=tmp_path / "embedded", model_path=emb_model)  # type: ignore[call-arg]
    rep = process_batch(files, emb_settings)
    with session_scope(emb_settings) as s:
        embedded = export_json(s, rep.batch_id)
    assert len(distributed["documents"]) == len(files)
    assert sum(len(p["fields"]) for d in distributed["documents"] for p in d["pages"]) > 10
    compare_exports(distributed, embedded)
    # Which file of the model read the batch: recorded by the embedded run only (compare_exports).
    assert distributed["model_precision"] is None and embedded["model_precision"] == rep.precision


@pytest.mark.slow
def test_sigkill_mid_batch_every_document_done_once(
    tmp_path: Path, pg_db: str, redis_url: str, model_path: str | None, small_pages: list[Path]
) -> None:
    files = variants(small_pages, 120, tmp_path / "scans")
    env = base_env(tmp_path, pg_db, redis_url, model_path, document_time_limit=3)
    settings = make_settings(env)
    per_source = expected_digits(files[: len(small_pages)], settings)
    pool = Pool(worker_env(env), tmp_path / "logs")
    try:
        page = pool.start("page", 2)
        infer = pool.start("infer")
        sub = dist.submit_batch([str(f) for f in files], settings)
        assert sub.queued == 120
        wait_finished(settings, sub.batch_id, 15, 120, pool)
        pool.kill(page)  # mid-batch: documents in flight in the page pool
        done_before = dist.batch_progress(get_engine(settings), sub.batch_id).finished
        pool.kill(infer)  # and the inference worker with its buffered batch
        assert done_before < 120
        pool.start("page", 2)
        pool.start("infer")
        prog = wait(settings, sub.batch_id, pool, 240)
    finally:
        pool.stop()
    assert prog.status == "done", prog
    statuses = check_exactly_once(settings, sub.batch_id, per_source)
    assert sum(statuses.values()) == 120 and "failed" not in statuses, statuses


@pytest.mark.slow
def test_redis_restart_and_database_outage(
    tmp_path: Path, pg_db: str, pg_server: str, model_path: str | None, small_pages: list[Path]
) -> None:
    port = free_port()
    files = variants(small_pages, 40, tmp_path / "scans")
    env = base_env(tmp_path, pg_db, f"redis://127.0.0.1:{port}/0", model_path, document_time_limit=3)
    settings = make_settings(env)
    per_source = expected_digits(files[: len(small_pages)], settings)
    name = pg_db.rsplit("/", 1)[1]
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    redis_proc = start_redis(port, tmp_path / "redis")
    pool = Pool(worker_env(env), tmp_path / "logs")
    try:
        pool.start("page", 2)
        pool.start("infer")
        sub = dist.submit_batch([str(f) for f in files], settings)
        wait_finished(settings, sub.batch_id, 5, 120, pool)
        redis_proc.kill()  # Redis dies (SIGKILL) with messages queued and unacknowledged
        redis_proc.wait()
        time.sleep(2)
        redis_proc = start_redis(port, tmp_path / "redis")  # ... and comes back from its append-only file
        n = dist.batch_progress(get_engine(settings), sub.batch_id).finished
        wait_finished(settings, sub.batch_id, min(40, n + 5), 120, pool)
        # The database goes away for 4 s: no new connections, every open one cut.
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
            c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})  # fmt: skip
        time.sleep(4)
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
        dispose_engines()  # this test process's own pool was cut too
        prog = wait(settings, sub.batch_id, pool, 240)
    finally:
        pool.stop()
        redis_proc.kill()
        redis_proc.wait()
        admin.dispose()
    assert prog.status == "done", prog
    statuses = check_exactly_once(settings, sub.batch_id, per_source)
    assert sum(statuses.values()) == 40 and "failed" not in statuses, statuses


@pytest.mark.slow
def test_poison_document_fails_after_redelivery_cap(
    tmp_path: Path, pg_db: str, redis_url: str, model_path: str | None, small_pages: list[Path]
) -> None:
    files = variants(small_pages, 12, tmp_path / "scans", poison=1)
    env = base_env(tmp_path, pg_db, redis_url, model_path, document_time_limit=5, max_redeliveries=2,
                   test_crash_on="*poison*")  # fmt: skip
    settings = make_settings(env)
    pool = Pool(worker_env(env), tmp_path / "logs")
    try:
        pool.start("page", 2)
        pool.start("infer")
        sub = dist.submit_batch([str(f) for f in files], settings)
        prog = wait(settings, sub.batch_id, pool, 180, failed=1)
    finally:
        pool.stop()
    assert prog.status == "partial", prog
    with session_scope(settings) as s:
        failed = s.execute(select(Document.path, Document.error_code, Document.error_message)
                           .where(Document.batch_id == sub.batch_id, Document.status == "failed")).all()  # fmt: skip
    assert len(failed) == 1
    path, code, message = failed[0]
    assert message is not None
    assert "poison" in path and code == "worker_lost"
    assert "died 2 times" in message and "given up after 2 deliveries" in message
    statuses = check_exactly_once(settings, sub.batch_id)
    assert statuses.get("failed") == 1 and sum(statuses.values()) == 12


def test_codec_round_trip_is_exact(small_pages: list[Path]) -> None:
    from workers.codec import CodecError, decode_cut, encode_cut

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    cut = segment_document(small_pages[0], settings)
    assert cut.crops > 10
    back = decode_cut(encode_cut(cut))
    assert back.path == cut.path and back.page_count == cut.page_count
    for a, b in zip(cut.pages, back.pages, strict=True):
        assert (a.number, a.width, a.height, a.skew_degrees) == (b.number, b.width, b.height, b.skew_degrees)
        assert np.array_equal(a.crops(), b.crops())
        for fa, fb in zip(a.fields, b.fields, strict=True):
            assert (fa.name, fa.kind, tuple(fa.bbox), fa.length, fa.pattern) == (fb.name, fb.kind, fb.bbox,
                                                                                fb.length, fb.pattern)  # fmt: skip
            assert [(s.position, tuple(s.bbox), s.blank) for s in fa.slots] == [
                (s.position, s.bbox, s.blank) for s in fb.slots
            ]
    assert back.error_code is None and back.error_message is None and not back.failed
    # A failed cut (a part of a long document travels between page workers as one) keeps its error.
    failed = DocumentCut("a.tif", (), "unreadable", "a.tif: page 3: damaged", 2, 0.5, {"decode": 0.1}, "Trace")
    back = decode_cut(encode_cut(failed))
    assert (back.error_code, back.error_message, back.traceback) == ("unreadable", "a.tif: page 3: damaged", "Trace")
    assert (back.page_count, back.pages) == (2, ())
    with pytest.raises(CodecError):
        decode_cut(b"DRC1garbage")
    with pytest.raises(CodecError):
        decode_cut(b"not a cut")


def test_lost_messages_are_requeued(tmp_path: Path, pg_db: str, redis_url: str, small_pages: list[Path]) -> None:
    """Documents pending with no message anywhere (the broker lost it) are published again by the
    orphan sweep; documents whose messages are in flight are left alone."""
    import redis

    files = variants(small_pages, 3, tmp_path / "scans")
    settings = make_settings(base_env(tmp_path, pg_db, redis_url, None))
    sub = dist.submit_batch([str(f) for f in files], settings, publish=lambda ids: None)  # "lost" on the way
    assert sub.queued == 3
    client = redis.Redis.from_url(redis_url)
    client.delete("pages", "infer", "unacked")
    client.rpush("infer", "in flight")  # a message anywhere: nothing is an orphan yet
    assert dist.requeue_orphans(settings, min_age=0) == []
    client.delete("infer")
    assert dist.requeue_orphans(settings, min_age=3600) == []  # too recent
    with session_scope(engine=get_engine(settings)) as s:  # as if the broker had never taken them
        s.execute(update(Document).where(Document.batch_id == sub.batch_id).values(queued_at=None))
    ids = dist.requeue_orphans(settings, min_age=0)
    assert len(ids) == 3 and client.llen("pages") == 3
    with session_scope(engine=get_engine(settings)) as s:  # on the broker now: not stranded
        assert (
            s.scalar(select(func.count()).where(Document.batch_id == sub.batch_id, Document.queued_at.is_(None))) == 0
        )
    client.delete("pages")


def test_a_file_name_that_is_not_utf8_fails_its_document_at_submit(
    tmp_path: Path, redis_url: str, small_pages: list[Path]
) -> None:
    """The page workers open files by the name stored in the database, and a name that is not valid
    UTF-8 is stored escaped: such a document fails at submit with a message saying why (and what to do);
    the others are queued as usual."""
    ok, other = variants(small_pages, 2, tmp_path / "scans")
    bad = os.fsencode(tmp_path / "scans") + b"/scan-\xff.png"
    try:
        os.rename(other, bad)
    except OSError:
        pytest.skip("this file system refuses file names that are not UTF-8")
    settings = make_settings(base_env(tmp_path, f"sqlite:///{tmp_path / 'names.db'}", redis_url, None))
    queued: list[int] = []
    sub = dist.submit_batch([str(tmp_path / "scans")], settings, publish=queued.extend)
    with session_scope(engine=get_engine(settings)) as s:
        docs = {d.path: d for d in s.scalars(select(Document).where(Document.batch_id == sub.batch_id))}
        shown = f"{tmp_path / 'scans'}/scan-\\xff.png"
        assert sorted(docs) == sorted([str(ok), shown])
        assert docs[shown].status == "failed" and docs[shown].error_code == "unreadable"
        assert "not valid UTF-8" in (docs[shown].error_message or "") and "rename" in (docs[shown].error_message or "")
        assert queued == [docs[str(ok)].id] and sub.queued == 1


def test_submit_leaves_out_files_still_being_written(tmp_path: Path, redis_url: str, small_pages: list[Path]) -> None:
    """DIGITREADER_SETTLE_SECONDS: a file modified a moment ago (a scanner still writing it into a hot
    folder) is left for the next submission, in the distributed mode as in the embedded one."""
    old, new = variants(small_pages, 2, tmp_path / "scans")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    env = base_env(tmp_path, f"sqlite:///{tmp_path / 'settle.db'}", redis_url, None)
    settings = make_settings({**env, "DIGITREADER_SETTLE_SECONDS": "60"})
    queued: list[int] = []
    sub = dist.submit_batch([str(tmp_path / "scans")], settings, publish=queued.extend)
    assert sub.unsettled == [str(new)] and sub.total == 1 and len(queued) == 1
    with session_scope(engine=get_engine(settings)) as s:
        assert [d.path for d in s.scalars(select(Document).where(Document.batch_id == sub.batch_id))] == [str(old)]


def test_a_folder_queued_again_is_not_read_again(
    tmp_path: Path, redis_url: str, small_pages: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`submit --queue` uses the hash cache as the embedded submit does: the files new to it are read
    (`on_hashed` hears of each: the CLI's bar), and queued again unchanged, none is read."""
    from digitreader.pipeline import hashcache

    monkeypatch.setattr(hashcache, "RACY_SECONDS", 0.0)  # the files were written just now
    variants(small_pages, 2, tmp_path / "scans")
    settings = make_settings(base_env(tmp_path, f"sqlite:///{tmp_path / 'cache.db'}", redis_url, None))
    heard: list[tuple[int, int]] = []
    first = dist.submit_batch([str(tmp_path / "scans")], settings, publish=lambda ids: None,
                              on_hashed=lambda done, total: heard.append((done, total)))  # fmt: skip
    assert heard == [(1, 2), (2, 2)] and first.queued == 2
    read: list[str | Path] = []
    real = hashcache.sha256_file_and_size

    def counted(path: str | Path) -> tuple[str, int]:
        read.append(path)
        return real(path)

    monkeypatch.setattr(hashcache, "sha256_file_and_size", counted)
    heard.clear()
    again = dist.submit_batch([str(tmp_path / "scans")], settings, publish=lambda ids: None,
                              on_hashed=lambda done, total: heard.append((done, total)))  # fmt: skip
    assert again.batch_id == first.batch_id and again.resumed
    assert read == [] and heard == []


def test_a_hot_folder_queued_again_gets_only_its_new_files(
    tmp_path: Path, redis_url: str, small_pages: list[Path]
) -> None:
    """`submit --queue` of a folder again, with a new scan in it, while the page pool still has the
    last batch's documents: the new batch holds the new scan only (before, the pending ones were
    queued a second time, as documents of the new batch). The same folder queued again, nothing new
    in it, resumes the running batch as before."""
    first_files = variants(small_pages, 2, tmp_path / "scans")
    settings = make_settings(base_env(tmp_path, f"sqlite:///{tmp_path / 'hot.db'}", redis_url, None))
    first = dist.submit_batch([str(tmp_path / "scans")], settings, publish=lambda ids: None)  # not read yet
    assert first.queued == 2
    again = dist.submit_batch([str(tmp_path / "scans")], settings, publish=lambda ids: None)
    assert again.batch_id == first.batch_id and again.resumed
    new = tmp_path / "scans" / "later.png"
    shutil.move(variants(small_pages, 3, tmp_path / "more")[2], new)  # a third content
    queued: list[int] = []
    sub = dist.submit_batch([str(tmp_path / "scans")], settings, publish=queued.extend)
    assert sub.batch_id != first.batch_id and sub.total == 1 and len(queued) == 1
    assert sorted((f.path, f.reason, f.batch_id) for f in sub.skipped) == sorted(
        (str(p), "in_progress", first.batch_id) for p in first_files
    )
    with session_scope(engine=get_engine(settings)) as s:
        assert [d.path for d in s.scalars(select(Document).where(Document.batch_id == sub.batch_id))] == [str(new)]


def test_a_batch_queued_again_queues_only_what_no_run_queued(
    tmp_path: Path, redis_url: str, small_pages: list[Path]
) -> None:
    """The same submission run again while its batch still runs (a cron line every 15 minutes): its
    documents queued by the first run are not queued again (before, every pending document was: the
    copies ran at once and each counted as a delivery, so a healthy document could fail `worker_lost`).
    One the broker never took (it was down) is queued by the next run. `--if-busy exit` then exits 11
    with the batch id, as the embedded submit does (before, it was ignored: exit 0, all queued again)."""
    import redis

    from digitreader.errors import BrokerError

    variants(small_pages, 3, tmp_path / "scans")
    env = base_env(tmp_path, f"sqlite:///{tmp_path / 'again.db'}", redis_url, None)
    settings = make_settings(env)
    queued: list[int] = []
    first = dist.submit_batch([str(tmp_path / "scans")], settings, publish=queued.extend)
    assert first.queued == 3 and len(queued) == 3
    again = dist.submit_batch([str(tmp_path / "scans")], settings, publish=queued.extend)
    assert again.batch_id == first.batch_id and again.resumed
    assert (again.queued, again.in_queue, len(queued)) == (0, 3, 3)

    def down(ids: object) -> None:
        raise BrokerError("the broker is down")

    outage = make_settings({**env, "DIGITREADER_DATABASE_URL": f"sqlite:///{tmp_path / 'outage.db'}"})
    with pytest.raises(BrokerError):
        dist.submit_batch([str(tmp_path / "scans")], outage, publish=down)  # registered, not queued
    later: list[int] = []
    back = dist.submit_batch([str(tmp_path / "scans")], outage, publish=later.extend)
    assert back.resumed and (back.queued, back.in_queue, len(later)) == (3, 0, 3)

    # The command line, with the real broker (no page worker runs: the messages wait in the queue).
    client = redis.Redis.from_url(redis_url)
    client.delete("pages")
    cli_env = {**{k: v for k, v in os.environ.items() if not k.startswith("DIGITREADER_")}, **env}
    cli_env["DIGITREADER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    variants(small_pages, 2, tmp_path / "cron")
    run = [sys.executable, "-m", "digitreader", "submit", "-q", str(tmp_path / "cron")]
    one = subprocess.run(run, env=cli_env, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    assert client.llen("pages") == 2
    two = subprocess.run([*run, "--if-busy", "exit"], env=cli_env, capture_output=True, text=True, timeout=120)
    assert two.returncode == ExitCode.BUSY and two.stdout.strip() == one.stdout.strip()
    assert "2 document(s) queued for the worker pools" in two.stderr
    three = subprocess.run(
        run[:-2] + [str(tmp_path / "cron")], env=cli_env, capture_output=True, text=True, timeout=120
    )
    assert (
        three.returncode == 0 and "queued 0 of 2 document(s), 2 queued by an earlier run and not again" in three.stderr
    )
    assert client.llen("pages") == 2  # nothing queued twice
    client.delete("pages")


def test_documents_stranded_by_a_broker_outage_go_to_the_next_changed_submission(
    tmp_path: Path, redis_url: str, small_pages: list[Path]
) -> None:
    """The broker was down at submit (exit 7: the batch registered, nothing queued), and a scan
    arrived before the next run. Before, the next run made a batch of the new scan alone and skipped
    the others as "being read by another batch" (nothing was reading them), reporting success; they
    waited until the same file set was submitted again or the orphan sweep queued them. Now a document
    no run put on the broker a minute after its batch was registered is taken over by the new batch,
    and the stranded batch, with nothing left, is closed. Within that minute (its own run may still be
    queueing it) it is left alone, as before."""
    import redis

    variants(small_pages, 3, tmp_path / "scans")
    env = base_env(tmp_path, f"sqlite:///{tmp_path / 'stranded.db'}", redis_url, None)
    client = redis.Redis.from_url(redis_url)
    client.delete("pages")
    cli_env = {**{k: v for k, v in os.environ.items() if not k.startswith("DIGITREADER_")}, **env}
    run = [sys.executable, "-m", "digitreader", "submit", str(tmp_path / "scans")]
    down = subprocess.run(run, env={**cli_env, "DIGITREADER_BROKER_URL": "redis://127.0.0.1:1/0"},
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert down.returncode == ExitCode.BROKER, down.stderr
    stranded = int(down.stdout)
    shutil.move(variants(small_pages, 4, tmp_path / "more")[3], tmp_path / "scans" / "later.png")
    settings = make_settings(env)
    soon = dist.submit_batch([str(tmp_path / "scans")], settings, publish=lambda ids: None)
    assert soon.total == 1 and {(f.reason, f.batch_id) for f in soon.skipped} == {("in_progress", stranded)}

    engine = get_engine(settings)
    with engine.begin() as conn:  # a minute later
        conn.execute(text("UPDATE batches SET created_at = '2020-01-01 00:00:00' WHERE id = :b"), {"b": stranded})
    shutil.move(variants(small_pages, 5, tmp_path / "more2")[4], tmp_path / "scans" / "latest.png")
    res = subprocess.run(run, env=cli_env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    batch = int(res.stdout)
    assert batch not in (stranded, soon.batch_id)
    assert client.llen("pages") == 4  # the three stranded documents and the newest scan, each once
    with session_scope(engine=engine) as s:
        names = sorted(Path(d.path).name for d in s.scalars(select(Document).where(Document.batch_id == batch)))
        left = s.scalar(select(func.count()).select_from(Document).where(Document.batch_id == stranded))
        status = s.scalar(text("SELECT status FROM batches WHERE id = :b"), {"b": stranded})
    assert len(names) == 4 and "latest.png" in names and "later.png" not in names  # later.png: `soon`'s
    assert left == 0 and status == "done"
    client.delete("pages")


def test_a_long_document_is_cut_in_parts_by_the_page_pool(tmp_path: Path, redis_url: str, data_dir: Path) -> None:
    """A 5-page TIFF with parts of 2 pages: its page task queues three part tasks instead of
    segmenting it; the parts, run in any order (one of them twice, as a redelivery), are kept in
    Redis, and the one that brings the last in hands on ONE cut, equal to the document cut whole.
    A damaged page in a part fails the document with that page's own error and the pages before it;
    a part delivered after its document finished does nothing."""
    import redis

    from digitreader.synth import generate
    from tests.test_pipeline_e2e import _damage_page
    from workers.codec import decode_cut, encode_cut

    generate(tmp_path / "long", pages=5, seed=44, fmt="tiff", kind="form", per_file=5, dpi=100, data_dir=data_dir)
    (tif,) = sorted((tmp_path / "long").glob("*.tif"))
    bad = tmp_path / "bad.tif"
    shutil.copy(tif, bad)
    _damage_page(bad, 4)  # in the last part
    settings = make_settings(base_env(tmp_path, f"sqlite:///{tmp_path / 'parts.db'}", redis_url, None, part_pages=2))
    sub = dist.submit_batch([str(tif), str(bad)], settings, publish=lambda ids: None)
    engine = get_engine(settings)
    with session_scope(engine=engine) as s:
        ids = {Path(d.path).name: d.id for d in s.scalars(select(Document).where(Document.batch_id == sub.batch_id))}
    deliveries = dist.Deliveries.from_settings(settings)
    parts = dist.PartCuts.beside(deliveries)
    client = redis.Redis.from_url(redis_url)

    def run(name: str, order: list[int]) -> tuple[list[str], list[bytes]]:
        queued: list[tuple[int, int, tuple[int, int]]] = []
        sent: list[bytes] = []

        def keep(job: dist.DocumentJob, blob: bytes, crops: int) -> None:
            sent.append(blob)

        out = dist.run_page_job(ids[name], settings, publish=keep,
                                deliveries=deliveries, encode=encode_cut,
                                publish_part=lambda job, i, count, pages: queued.append((i, count, pages)))  # fmt: skip
        assert out.status == "split" and not sent
        assert queued == [(0, 3, (1, 2)), (1, 3, (3, 3)), (2, 3, (4, 5))]
        statuses = []
        for i in order:
            _, count, pages = queued[i]
            res = dist.run_part_job(ids[name], i, count, pages, settings, publish=keep, deliveries=deliveries,
                                    parts=parts, encode=encode_cut, decode=decode_cut)  # fmt: skip
            statuses.append(res.status)
        for stage in ("page", "part0", "part1", "part2"):
            assert deliveries.count(stage, ids[name]) == 0, stage
        assert not client.keys(f"digitreader:{deliveries.namespace}:parts:*")  # cleared once handed on
        return statuses, sent

    statuses, sent = run(tif.name, [2, 0, 2, 1])
    assert statuses == ["part", "part", "part", "segmented"]
    (joined,) = (decode_cut(b) for b in sent)
    whole = segment_document(tif, settings)
    assert not whole.failed and not joined.failed and joined.page_count == 5
    assert [p.number for p in joined.pages] == [1, 2, 3, 4, 5]
    for a, b in zip(whole.pages, joined.pages, strict=True):
        assert [(f.name, f.bbox) for f in a.fields] == [(f.name, tuple(f.bbox)) for f in b.fields]
        assert np.array_equal(a.crops(), b.crops())
    assert [[st and st.jpeg for st in row] for row in whole.strips] == [[st and st.jpeg for st in row]
                                                                         for row in joined.strips]  # fmt: skip

    statuses, sent = run(bad.name, [0, 2, 1])
    assert statuses == ["part", "part", "failed"] and not sent
    with session_scope(engine=engine) as s:
        doc = s.get(Document, ids[bad.name])
        assert doc is not None and doc.status == "failed" and doc.error_code in ("unreadable", "truncated")
        assert "(page 4)" in (doc.error_message or "") and str(tmp_path) in (doc.error_message or "")
        assert doc.page_count == 3
    late = dist.run_part_job(ids[bad.name], 0, 3, (1, 2), settings, publish=lambda job, blob, n: sent.append(blob),
                             deliveries=deliveries, parts=parts, encode=encode_cut, decode=decode_cut)  # fmt: skip
    assert late.status == "skipped" and not sent and not client.keys(f"digitreader:{deliveries.namespace}:parts:*")

    # A part whose worker died on every delivery (counted in Redis; the good document is still being
    # read: its infer message above was never run) fails the document past the redelivery cap.
    for _ in range(settings.max_redeliveries):
        deliveries.start("part1", ids[tif.name])
    lost = dist.run_part_job(ids[tif.name], 1, 3, (3, 3), settings, publish=lambda job, blob, n: sent.append(blob),
                             deliveries=deliveries, parts=parts, encode=encode_cut, decode=decode_cut)  # fmt: skip
    assert lost.status == "failed" and not sent
    with session_scope(engine=engine) as s:
        doc = s.get(Document, ids[tif.name])
        assert doc is not None and doc.status == "failed" and doc.error_code == "worker_lost"
    assert deliveries.count("part1", ids[tif.name]) == settings.max_redeliveries  # this delivery came back


@pytest.mark.slow
def test_long_pdf_benchmark_runs_whole_and_in_parts(tmp_path: Path, pg_server: str, redis_url: str,
                                                    data_dir: Path) -> None:  # fmt: skip
    """`bench_workers.py --long-pdf`: one PDF through real pools, cut whole and then in parts; both
    runs store every page (no timings are checked)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_workers
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = tmp_path / "long.json"
    argv = ["--long-pdf", "--pages", "3", "--procs", "1", "--part-pages", "2", "--rounds", "1", "--broker",
            redis_url, "--data-dir", str(data_dir), "--json", str(out)]  # fmt: skip
    assert bench_workers.main(argv) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [(r["part_pages"], r["split"], r["pages"], r["status"]) for r in runs] == [(0, False, 3, "done"),
                                                                                      (2, True, 3, "done")]  # fmt: skip


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_claim_job_marks_a_pending_document_once(tmp_path: Path, request: pytest.FixtureRequest, backend: str,
                                                 small_pages: list[Path]) -> None:  # fmt: skip
    """The page task's only database work before segmenting (one statement on PostgreSQL, two
    elsewhere): a pending document becomes processing (start time set); a redelivery keeps the
    first start time; a finished document is untouched."""
    db_url = request.getfixturevalue("pg_db") if backend == "postgresql" else f"sqlite:///{tmp_path / 'claim.db'}"
    settings = make_settings(base_env(tmp_path, db_url, "redis://127.0.0.1:6379/0", None))
    sub = dist.submit_batch([str(small_pages[0])], settings, publish=lambda ids: None)
    engine = get_engine(settings)
    assert engine.dialect.name == backend
    with session_scope(engine=engine) as s:
        doc_id = s.scalar(select(Document.id).where(Document.batch_id == sub.batch_id))
    assert doc_id is not None
    assert dist.claim_job(engine, 10**9) is None

    def row() -> tuple[str, Any]:
        with session_scope(engine=engine) as s:
            d = s.get(Document, doc_id)
            assert d is not None
            return d.status, d.started_at

    assert row() == ("pending", None)
    job = dist.claim_job(engine, doc_id)
    assert job is not None and job.status == "pending" and job.batch_id == sub.batch_id
    assert job.path == str(small_pages[0]) and job.cwd == os.getcwd()
    status, started = row()
    assert status == "processing" and started is not None
    again = dist.claim_job(engine, doc_id)
    assert again is not None and again.status == "processing"
    assert row() == ("processing", started)
    assert dist.store_failure(engine, doc_id, "internal", "test")
    finished = dist.claim_job(engine, doc_id)
    assert finished is not None and finished.status == "failed"
    assert row() == ("failed", started)
    if backend == "postgresql":  # the claim's commit alone skips the flush; the session's default is untouched
        with engine.connect() as c:
            assert c.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"


@pytest.mark.slow
def test_inference_flushes_by_time_after_redis_restart(tmp_path: Path, pg_db: str, model_path: str | None,
                                                       small_pages: list[Path]) -> None:  # fmt: skip
    """Redis dies while the inference worker holds a buffered request (its flush timer running)
    and comes back: the worker still flushes by time, so a document of far fewer crops than a
    batch is stored in seconds, not after copies restored by the visibility timeout fill a batch."""
    import redis

    port = free_port()
    files = variants(small_pages, 2, tmp_path / "scans")
    env = base_env(tmp_path, pg_db, f"redis://127.0.0.1:{port}/0", model_path, document_time_limit=3)
    settings = make_settings(env)
    redis_proc = start_redis(port, tmp_path / "redis")
    pool = Pool(worker_env(env), tmp_path / "logs")
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        pool.start("page", 1)
        pool.start("infer")
        first = dist.submit_batch([str(files[0])], settings)
        end = time.monotonic() + 120
        while not any(b"digitreader.infer" in v for v in client.hvals("unacked")):  # buffered by the infer worker
            if time.monotonic() > end:
                pytest.fail(f"no infer message was delivered\n{pool.tail()}")
            time.sleep(0.005)
        redis_proc.kill()
        redis_proc.wait()
        time.sleep(1)
        redis_proc = start_redis(port, tmp_path / "redis")
        second = dist.submit_batch([str(files[1])], settings)
        for batch in (second, first):
            prog = wait(settings, batch.batch_id, pool, 60)
            assert prog.status == "done", prog
    finally:
        pool.stop()
        redis_proc.kill()
        redis_proc.wait()


def test_one_per_document_keeps_the_first_copy() -> None:
    """Two copies of a document's infer message in one batch count as one delivery."""
    from digitreader.pipeline.process import DocumentCut

    items = [dist.InferItem(d, 1, DocumentCut(f"copy-{i}")) for i, d in enumerate([7, 8, 7, 9, 8])]
    kept = dist.one_per_document(items)
    assert [(it.document_id, it.cut.path) for it in kept] == [(7, "copy-0"), (8, "copy-1"), (9, "copy-3")]
