"""Schema and migrations on real SQLite and real PostgreSQL (127.0.0.1:5432, a throwaway database)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, Table, create_engine, func, inspect, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from digitreader.db import Batch, Digit, Document, Field, ModelVersion, Page, store
from digitreader.db.locks import BatchLock, batch_in_progress, holder
from digitreader.db.migrate import (
    alembic_config,
    current_revision,
    ensure_schema,
    head_revision,
    sqlite_lock_path,
    upgrade,
)
from digitreader.db.models import Base
from digitreader.db.session import get_engine, make_engine, session_scope
from digitreader.errors import DatabaseError
from digitreader.settings import Settings

PG_ADMIN_URL = os.environ.get("DIGITREADER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TABLES = {
    "batches",
    "documents",
    "pages",
    "fields",
    "digits",
    "model_versions",
    "corrections",
    "file_hashes",
    "alembic_version",
}


def _pg_available() -> bool:
    try:
        eng = create_engine(PG_ADMIN_URL)
        with eng.connect():
            pass
        eng.dispose()
        return True
    except OperationalError:
        return False


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (CREATE DATABASE ... then DROP)."""
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (CI must have it)")
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    name = f"digitreader_test_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        from digitreader.db.session import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def fresh_pg_database() -> Iterator[str]:
    """An empty PostgreSQL database of its own (for a test that must start from nothing while the
    session's `pg_url` database is shared); dropped afterwards."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"digitreader_test_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def fresh_pg_engine() -> Iterator[Engine]:
    """An engine on an empty PostgreSQL database of its own (`fresh_pg_database`), upgraded to head."""
    with fresh_pg_database() as url:
        engine = make_engine(url)
        try:
            upgrade(engine)
            yield engine
        finally:
            engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def either_engine(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Engine]:
    """The test once on a SQLite file, once on an empty PostgreSQL database at head."""
    if request.param == "sqlite":
        yield get_engine(settings)
        return
    request.getfixturevalue("pg_url")  # PostgreSQL there, or skipped (failed on CI)
    with fresh_pg_engine() as engine:
        yield engine


def _sample_document(session: Session) -> Document:
    batch = Batch()
    doc = Document(batch=batch, path="a.png", sha256="0" * 64, status="done", page_count=1)
    page = Page(document=doc, number=1, width=100, height=200)
    field = Field(page=page, ordinal=0, name="account", kind="boxes", x=1, y=2, w=3, h=4, value="7", flags=[])
    Digit(field=field, position=0, x=1, y=2, w=3, h=4, label=7, confidence=0.99, crop=bytes(784), top3=[[7, 0.99]])
    session.add(batch)
    session.flush()
    return doc


def _check_schema(engine: Engine) -> None:
    assert set(inspect(engine).get_table_names()) >= TABLES
    assert current_revision(engine) == head_revision()
    # The migrations and the models describe the same schema (types compared too).
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_sqlite_upgrade_from_empty_and_idempotent(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'x.sqlite'}")  # the folder is created
    assert current_revision(engine) is None
    before, after = upgrade(engine)
    assert (before, after) == (None, head_revision())
    _check_schema(engine)
    assert upgrade(engine) == (after, after)  # second run: nothing to do
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    # Down to nothing and back up again.
    command.downgrade(alembic_config(engine), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    _check_schema(engine)


def test_migrations_down_and_up_keep_every_row_of_a_sqlite_database(tmp_path: Path) -> None:
    """Alembic's batch mode changes a SQLite table by copying it and dropping the old one; with
    foreign keys on, dropping `documents` deleted every page, field and digit of the database through
    their ON DELETE CASCADE (a downgrade of 0005 did). The migrations run with them off: a database
    holding a real batch goes down to the first revision and back up to the head with every row and
    the same export."""
    from digitreader.export import export_json
    from digitreader.pipeline.process import process_batch

    settings = Settings(home=tmp_path / "home", workers=1, _env_file=None)  # type: ignore[call-arg]
    rep = process_batch([Path(__file__).resolve().parents[1] / "examples" / "scans" / "scan-0003-00001.png"], settings)
    engine = get_engine(settings)

    def rows() -> dict[str, int]:
        with engine.connect() as conn:
            return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() or 0)
                    for t in ("batches", "documents", "pages", "fields", "digits")}  # fmt: skip

    def export() -> dict[str, Any]:
        with session_scope(settings) as s:
            return export_json(s, rep.batch_id)

    before, exported = rows(), export()
    assert before["digits"] > 0
    command.downgrade(alembic_config(engine), "0001")
    assert rows() == before
    upgrade(engine)
    assert rows() == before and export() == exported
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA foreign_key_check")).fetchall() == []


def test_sqlite_created_on_first_use(settings: Settings) -> None:
    engine = get_engine(settings)
    assert (settings.home / "digitreader.sqlite").exists()
    _check_schema(engine)


_OPENS = """
import sys
from pathlib import Path
from digitreader.db.session import get_engine
from digitreader.settings import Settings
get_engine(Settings(home=Path(sys.argv[1]), _env_file=None))
print("alembic" in sys.modules)
"""


def test_a_database_at_head_is_opened_without_alembic(tmp_path: Path) -> None:
    """`SCHEMA_HEAD` is the migrations' head. A command that finds its database there does not import
    Alembic (about 0.13 s of each command's start); a new SQLite file, or one at an older revision,
    is upgraded as before."""
    from digitreader.db.migrate import SCHEMA_HEAD

    assert head_revision() == SCHEMA_HEAD
    home = tmp_path / "home"

    def opens() -> str:
        return subprocess.run([sys.executable, "-c", _OPENS, str(home)], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip

    assert opens() == "True"  # a new file: the schema is made
    assert opens() == "False"  # at head: Alembic is not even imported
    engine = make_engine(f"sqlite:///{home / 'digitreader.sqlite'}")
    command.downgrade(alembic_config(engine), "-1")
    assert current_revision(engine) != head_revision()
    assert opens() == "True"  # an older revision: upgraded
    assert current_revision(engine) == head_revision()
    engine.dispose()


# Each process imports what it needs (and, for "model", gets the engine: the schema), says it is
# ready, waits for the file GO, then at once: "schema" gets the engine on the new database (first
# use: the schema is created); "model" registers model 9.9.9.
_AT_ONCE = """
import os, sys, time
from pathlib import Path
from digitreader.db import store
from digitreader.db.session import get_engine, session_scope
from digitreader.settings import Settings
home, go, what = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
settings = Settings(home=home, _env_file=None)
engine = get_engine(settings) if what == "model" else None
(go.parent / f"{go.name}.ready.{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.002)
if what == "schema":
    get_engine(settings)
else:
    with session_scope(engine=engine) as s:
        store.ensure_model_version(s, "9.9.9", "ab" * 32)
"""


def _at_once(home: Path, go: Path, what: str, processes: int = 4) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", _AT_ONCE, str(home), str(go), what], stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    while len(list(go.parent.glob(f"{go.name}.ready.*"))) < processes:  # all of them at the starting line
        assert all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs if p.poll() is not None]
        time.sleep(0.01)
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * processes, errors


def test_a_new_sqlite_file_used_by_several_processes_at_once(tmp_path: Path) -> None:
    """Several commands started together on a new SQLite file (two clerks' `submit`s, `submit` beside
    the review page) all get the schema: one creates it while the others wait (`migration_lock`),
    then find it at head. Without the lock the others failed ("table batches already exists",
    "database is locked": exit 6)."""
    for attempt in range(3):
        home = tmp_path / f"home{attempt}"
        _at_once(home, tmp_path / f"go{attempt}", "schema")
        engine = make_engine(f"sqlite:///{home / 'digitreader.sqlite'}")
        _check_schema(engine)
        engine.dispose()


def test_a_model_registered_by_several_processes_at_once(tmp_path: Path) -> None:
    """`ensure_model_version` from processes that start together on one database (two `submit`s,
    inference workers): one row, the others keep it. Without ON CONFLICT DO NOTHING all but one
    failed on the unique version."""
    for attempt in range(3):
        home = tmp_path / f"home{attempt}"
        _at_once(home, tmp_path / f"go{attempt}", "model")
        engine = make_engine(f"sqlite:///{home / 'digitreader.sqlite'}")
        with session_scope(engine=engine) as s:
            rows = s.scalars(select(ModelVersion)).all()
            assert [(m.version, m.status) for m in rows] == [("9.9.9", "active")]
        engine.dispose()


def test_a_lock_file_that_cannot_be_opened_is_a_database_error(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    lock = sqlite_lock_path(engine)
    assert lock == tmp_path / "x.sqlite.migrate-lock"
    lock.mkdir()  # not a file: open() fails, as it does in a folder the user cannot write to
    with pytest.raises(DatabaseError, match="migration lock file") as info:
        upgrade(engine)
    assert info.value.exit_code == 6 and "writable" in (info.value.hint or "")
    assert current_revision(engine) is None  # nothing was migrated without the lock
    with pytest.raises(DatabaseError, match="migration lock file"):
        ensure_schema(engine)  # a new file's first use needs the lock too
    assert sqlite_lock_path(make_engine("sqlite://")) is None  # in memory: no file, no lock
    # A database already at head is still read where no lock file can be made (a read-only folder).
    lock.rmdir()
    upgrade(engine)
    lock.unlink()
    lock.mkdir()
    ensure_schema(engine)
    engine.dispose()


def test_duplicates_are_refused(settings: Settings) -> None:
    engine = get_engine(settings)
    with session_scope(engine=engine) as s:
        doc = _sample_document(s)
        doc_id, batch_id = doc.id, doc.batch_id
    for dup in (
        lambda s: Page(document_id=doc_id, number=1, width=1, height=1),
        lambda s: Document(batch_id=batch_id, path="b.png", sha256="0" * 64),
        lambda s: Field(
            page_id=s.scalar(select(Page.id)), ordinal=0, name="x", kind="boxes", x=0, y=0, w=1, h=1, flags=[]
        ),
        lambda s: Digit(field_id=s.scalar(select(Field.id)), position=0, x=0, y=0, w=1, h=1),
    ):
        with pytest.raises(IntegrityError), session_scope(engine=engine) as s:
            s.add(dup(s))
    with session_scope(engine=engine) as s:
        assert s.scalar(select(Digit.label)) == 7
        assert len(s.scalars(select(Page)).all()) == 1


def test_an_interrupted_batch_resumes_when_its_folder_also_holds_files_read_before(settings: Settings) -> None:
    """A folder holding yesterday's scans (read by batch 1) beside today's: today's batch holds only
    the new files; interrupted and submitted again, the same batch resumes (it used to start a new
    batch with the files left, and leave today's interrupted for good)."""
    engine = get_engine(settings)
    a, b, c, d = (store.InputFile(f"/scans/{n}.png", n * 64, 1) for n in "abcd")

    def finish(batch_id: int, done: set[str], interrupted: bool) -> None:
        with session_scope(engine=engine) as s:
            for doc in s.scalars(select(Document).where(Document.batch_id == batch_id)):
                if doc.sha256 in done:
                    doc.status = "done"
            s.flush()
            store.finish_batch(s, batch_id, interrupted=interrupted)

    with session_scope(engine=engine) as s:
        yesterday = store.register_batch(s, [a])
    finish(yesterday.batch_id, {a.sha256}, interrupted=False)
    with session_scope(engine=engine) as s:
        today = store.register_batch(s, [a, b, c])
    assert [p for _, p in today.todo] == [b.path, c.path] and [f.path for f in today.skipped] == [a.path]
    finish(today.batch_id, {b.sha256}, interrupted=True)  # Ctrl-C after b

    moved = store.InputFile("/scans/today/c.png", c.sha256, 1)  # the folder was tidied up meanwhile
    with session_scope(engine=engine) as s:
        again = store.register_batch(s, [moved, b, a])
    assert again.resumed and again.batch_id == today.batch_id
    assert [p for _, p in again.todo] == [moved.path] and again.total == 2  # opened where it is now
    assert [(f.path, f.reason, f.batch_id) for f in again.skipped] == [(a.path, "processed", yesterday.batch_id)]
    finish(again.batch_id, {c.sha256}, interrupted=False)

    # A new file in the folder is a new submission: a new batch for it alone.
    with session_scope(engine=engine) as s:
        plan = store.register_batch(s, [a, b, c, d])
    assert not plan.resumed and plan.batch_id not in (yesterday.batch_id, today.batch_id)
    assert [p for _, p in plan.todo] == [d.path]
    with session_scope(engine=engine) as s:
        assert s.scalar(select(func.count()).select_from(Document)) == 4  # each file once


def _per_content(engine: Engine) -> dict[str, list[tuple[int, str]]]:
    with session_scope(engine=engine) as s:
        out: dict[str, list[tuple[int, str]]] = {}
        for doc in s.scalars(select(Document).order_by(Document.id)):
            out.setdefault(doc.sha256[:1], []).append((doc.batch_id, doc.status))
        return out


def _finish(engine: Engine, batch_id: int, done: set[str], interrupted: bool) -> str:
    with session_scope(engine=engine) as s:
        for doc in s.scalars(select(Document).where(Document.batch_id == batch_id)):
            if doc.sha256 in done:
                doc.status = "done"
        s.flush()
        return store.finish_batch(s, batch_id, interrupted=interrupted)


def test_a_file_arriving_after_a_stop_leaves_each_scan_in_one_batch(settings: Settings) -> None:
    """Stopped after a; a new scan d arrives, so the next run is a new submission (a new batch). The
    stopped batch's pending b and c go to the new batch with d, and the stopped batch, nothing left in
    it to read, is closed. Before: the new batch read b and c, the stopped one stayed "interrupted", and
    the run after that resumed it and read b and c a second time (each in two batches' exports)."""
    engine = get_engine(settings)
    a, b, c, d = (store.InputFile(f"/scans/{n}.png", n * 64, 1) for n in "abcd")
    nobody = lambda batch_id: False  # noqa: E731  (no other run holds a batch)
    with session_scope(engine=engine) as s:
        first = store.register_batch(s, [a, b, c], held_elsewhere=nobody)
    _finish(engine, first.batch_id, {a.sha256}, interrupted=True)  # stopped after a
    with session_scope(engine=engine) as s:
        second = store.register_batch(s, [a, b, c, d], held_elsewhere=nobody)
        assert s.get(Batch, first.batch_id).status == "done"  # type: ignore[union-attr]
    assert not second.resumed and sorted(p for _, p in second.todo) == [b.path, c.path, d.path]
    _finish(engine, second.batch_id, {b.sha256, c.sha256, d.sha256}, interrupted=False)
    with session_scope(engine=engine) as s:
        third = store.register_batch(s, [a, b, c, d], held_elsewhere=nobody)
    assert third.todo == [] and sorted(f.reason for f in third.skipped) == ["processed"] * 4
    one = [(first.batch_id, "done")]
    assert _per_content(engine) == {"a": one, **{k: [(second.batch_id, "done")] for k in "bcd"}}


def test_a_batch_stopped_after_its_last_document_is_closed_by_the_next_submission(settings: Settings) -> None:
    """Stopped after it stored its last document but before it was closed: nothing pending, yet
    "interrupted". The next run of a changed submission (a scan arrived) closes it; before, it stayed
    "interrupted" for good (found by `stress_stops.py --arrive` on PostgreSQL)."""
    engine = get_engine(settings)
    a, b, c = (store.InputFile(f"/scans/{n}.png", n * 64, 1) for n in "abc")
    nobody = lambda batch_id: False  # noqa: E731
    with session_scope(engine=engine) as s:
        first = store.register_batch(s, [a, b], held_elsewhere=nobody)
    assert _finish(engine, first.batch_id, {a.sha256, b.sha256}, interrupted=True) == "interrupted"
    with session_scope(engine=engine) as s:
        held = store.register_batch(s, [a, b, c], held_elsewhere=lambda batch_id: True)
        assert s.get(Batch, first.batch_id).status == "interrupted"  # type: ignore[union-attr]  # its run may close it yet
        s.rollback()
    with session_scope(engine=engine) as s:
        second = store.register_batch(s, [a, b, c], held_elsewhere=nobody)
        assert s.get(Batch, first.batch_id).status == "done"  # type: ignore[union-attr]
    assert held.todo and [p for _, p in second.todo] == [c.path]


def test_a_resumed_batch_does_not_read_again_what_another_batch_read_meanwhile(settings: Settings) -> None:
    """A database as the code before left it: batch 1 stopped with b and c pending, batch 2 (made when
    d arrived) read b, c and d. Running the first submission's command again resumes batch 1, whose
    b and c are left to batch 2 (reported as read there), and closes it: nothing is read twice."""
    engine = get_engine(settings)
    a, b, c, d = (store.InputFile(f"/scans/{n}.png", n * 64, 1) for n in "abcd")
    with session_scope(engine=engine) as s:
        first = store.register_batch(s, [a, b, c])
    _finish(engine, first.batch_id, {a.sha256}, interrupted=True)
    with session_scope(engine=engine) as s:
        second = store.register_batch(s, [a, b, c, d])  # no lock information: nothing taken over
    _finish(engine, second.batch_id, {b.sha256, c.sha256, d.sha256}, interrupted=False)
    with session_scope(engine=engine) as s:
        again = store.register_batch(s, [a, b, c, d], held_elsewhere=lambda batch_id: False)
    assert again.resumed and again.batch_id == first.batch_id and again.todo == [] and again.total == 1
    assert sorted((f.path, f.batch_id) for f in again.skipped if f.reason == "processed") == [
        (b.path, second.batch_id), (c.path, second.batch_id), (d.path, second.batch_id)
    ]  # fmt: skip
    assert _finish(engine, first.batch_id, set(), interrupted=False) == "done"
    assert _per_content(engine) == {"a": [(first.batch_id, "done")], **{k: [(second.batch_id, "done")] for k in "bcd"}}


def test_a_forced_run_stopped_and_forced_again_leaves_no_batch_interrupted(settings: Settings) -> None:
    """`--force` never resumes (it reads everything again); the stopped forced batch's pending scans go
    to the new forced batch, and the stopped one is closed instead of waiting for a run that never comes.
    A batch another run is reading keeps its documents."""
    engine = get_engine(settings)
    a, b = (store.InputFile(f"/scans/{n}.png", n * 64, 1) for n in "ab")
    with session_scope(engine=engine) as s:
        first = store.register_batch(s, [a, b], force=True, held_elsewhere=lambda batch_id: False)
    _finish(engine, first.batch_id, {a.sha256}, interrupted=True)
    with session_scope(engine=engine) as s:
        held = store.register_batch(s, [a, b], force=True, held_elsewhere=lambda batch_id: True)
        assert s.get(Batch, first.batch_id).status == "interrupted"  # type: ignore[union-attr]
        s.rollback()
    with session_scope(engine=engine) as s:
        second = store.register_batch(s, [a, b], force=True, held_elsewhere=lambda batch_id: False)
        assert s.get(Batch, first.batch_id).status == "done"  # type: ignore[union-attr]
    assert held.batch_id != first.batch_id and sorted(p for _, p in second.todo) == [a.path, b.path]
    assert _per_content(engine) == {"a": [(first.batch_id, "done"), (second.batch_id, "pending")],
                                    "b": [(second.batch_id, "pending")]}  # fmt: skip


def test_content_that_failed_for_good_is_skipped_by_later_submissions(settings: Settings) -> None:
    """A broken scan left in a hot folder: it fails once; later runs skip it ("failed", naming the batch)
    instead of failing it again into every new batch. A failure the moment or the settings decide
    (timeout) is tried again; --force reads both again; a resumed batch counts the skipped as known."""
    engine = get_engine(settings)
    bad, slow, good, new = (store.InputFile(f"/scans/{n}.png", n * 64, 1) for n in "bsgn")
    with session_scope(engine=engine) as s:
        first = store.register_batch(s, [bad, slow, good])
        for doc in s.scalars(select(Document).where(Document.batch_id == first.batch_id)):
            code = {bad.sha256: "truncated", slow.sha256: "timeout"}.get(doc.sha256)
            if code:
                store.store_document_failure(s, doc.id, code, f"{doc.path}: {code}")
            else:
                doc.status = "done"
        s.flush()
        store.finish_batch(s, first.batch_id)
    with session_scope(engine=engine) as s:
        again = store.register_batch(s, [bad, slow, good, new])
    assert sorted(p for _, p in again.todo) == [new.path, slow.path]
    assert sorted((f.path, f.reason, f.batch_id) for f in again.skipped) == [
        (bad.path, "failed", first.batch_id), (good.path, "processed", first.batch_id)
    ]  # fmt: skip
    _finish(engine, again.batch_id, {new.sha256}, interrupted=True)  # stopped with slow pending
    with session_scope(engine=engine) as s:
        resumed = store.register_batch(s, [bad, slow, good, new])
    assert resumed.resumed and resumed.batch_id == again.batch_id and [p for _, p in resumed.todo] == [slow.path]
    with session_scope(engine=engine) as s:
        forced = store.register_batch(s, [bad, good], force=True)
    assert sorted(p for _, p in forced.todo) == [bad.path, good.path] and forced.skipped == []


def test_unreadable_files_of_one_long_folder_are_two_documents(settings: Settings) -> None:
    """The stand-in content of an unreadable file was its path cut to 64 characters: two files of a folder
    whose path is that long were the same document, and the run ended in an internal error."""
    engine = get_engine(settings)
    folder = "/srv/scans/" + "branch-office-incoming" * 3
    with session_scope(engine=engine) as s:
        plan = store.register_batch(s, [])
        for name in ("a.png", "b.png"):
            store.record_unreadable(s, plan.batch_id, f"{folder}/{name}", "Permission denied")
    with session_scope(engine=engine) as s:
        docs = s.scalars(select(Document).where(Document.batch_id == plan.batch_id)).all()
        assert sorted(d.path for d in docs) == [f"{folder}/a.png", f"{folder}/b.png"]
        assert {d.status for d in docs} == {"failed"} and len({d.sha256 for d in docs}) == 2


def test_a_resumed_batch_counts_the_time_of_all_its_runs(settings: Settings) -> None:
    engine = get_engine(settings)
    with session_scope(engine=engine) as s:
        plan = store.register_batch(s, [store.InputFile("/scans/a.png", "a" * 64, 1)])
        store.finish_batch(s, plan.batch_id, seconds=2.0, interrupted=True, add_seconds=True)
        store.finish_batch(s, plan.batch_id, seconds=1.5, add_seconds=True)
        assert s.get(Batch, plan.batch_id).seconds == pytest.approx(3.5)  # type: ignore[union-attr]
        store.finish_batch(s, plan.batch_id, seconds=1.0)  # the distributed mode's wall time: as it is
        assert s.get(Batch, plan.batch_id).seconds == pytest.approx(1.0)  # type: ignore[union-attr]


def _registrations_take_turns(engine: Engine) -> None:
    """Two runs of one submission registering at the same moment: the second's registration waits for
    the first's to commit (`hold_registration`), so it resumes the first's batch instead of making a
    second batch of the same files, and, the batch being held (`claim`), it is told to wait (`busy`)
    and leaves the batch as it is. Once the first run is over, the second takes over what is pending."""
    files = [store.InputFile(f"/scans/{n}.png", n * 64, 1) for n in "ab"]
    first_lock, second_lock = BatchLock(engine), BatchLock(engine)
    second: list[store.BatchPlan | BaseException] = []

    def register_second() -> None:
        try:
            with session_scope(engine=engine) as s:
                second.append(store.register_batch(s, files, claim=second_lock.try_acquire))
        except BaseException as exc:  # reported by the assertion below
            second.append(exc)

    try:
        with session_scope(engine=engine) as s:
            first = store.register_batch(s, files, claim=first_lock.try_acquire)
            thread = threading.Thread(target=register_second)
            thread.start()
            thread.join(0.5)
            assert thread.is_alive(), second  # waiting for this registration to commit
            assert first_lock.batch_id == first.batch_id and not first.busy
        thread.join(60)
        [plan] = second
        assert isinstance(plan, store.BatchPlan), plan
        assert (plan.batch_id, plan.resumed, plan.busy) == (first.batch_id, True, True)
        assert plan.todo == first.todo and second_lock.batch_id is None
        with session_scope(engine=engine) as s:
            assert s.scalar(select(func.count()).select_from(Batch)) == 1
            assert s.scalar(select(func.count()).select_from(Document)) == 2
        assert batch_in_progress(engine, first.batch_id) is True

        # The first run stored one document, then was killed: its lock goes with it.
        with session_scope(engine=engine) as s:
            s.execute(cast(Table, Document.__table__).update().where(Document.id == first.todo[0][0])
                      .values(status="done"))  # fmt: skip
        first_lock.release()
        assert batch_in_progress(engine, first.batch_id) is False
        assert second_lock.try_acquire(first.batch_id)
        with session_scope(engine=engine) as s:
            assert store.take_over_batch(s, first.batch_id) == ({first.todo[1][0]}, "running")
    finally:
        first_lock.release()
        second_lock.release()


def test_registrations_of_one_submission_take_turns(either_engine: Engine) -> None:
    _registrations_take_turns(either_engine)


# Holds the lock on batch 7 of the database at argv[1] (after creating the schema), says so, sleeps.
_HOLD_BATCH = """
import sys, time
from digitreader.db.locks import BatchLock
from digitreader.db.migrate import upgrade
from digitreader.db.session import make_engine
engine = make_engine(sys.argv[1])
upgrade(engine)
lock = BatchLock(engine)
assert lock.try_acquire(7)
print("held", flush=True)
time.sleep(600)
"""


def _a_batch_lock_goes_with_its_process(url: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_BATCH, url], stdout=subprocess.PIPE, text=True)
    engine = make_engine(url)
    lock = BatchLock(engine)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert lock.enforced and not lock.try_acquire(7) and lock.batch_id is None
        assert batch_in_progress(engine, 7) is True and batch_in_progress(engine, 8) is False
        assert holder(engine, 7) == f"process {proc.pid}" and holder(engine, 9) is None  # who, for people
        assert lock.try_acquire(8)  # another batch: its own lock
        proc.kill()  # SIGKILL: no clean-up; the kernel (SQLite) or the server (PostgreSQL) lets go
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while not lock.try_acquire(7) and time.monotonic() < deadline:  # PostgreSQL: the backend ends
            time.sleep(0.05)
        assert lock.batch_id == 7  # and the lock on batch 8 was given back when 7 was taken
        assert batch_in_progress(engine, 8) is False
    finally:
        proc.kill()
        proc.wait()
        lock.release()
        engine.dispose()


def test_a_batch_lock_goes_with_its_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    _a_batch_lock_goes_with_its_process(url)
    assert (tmp_path / "x.sqlite.batch-lock").exists()


@pytest.mark.integration
def test_postgres_batch_lock_goes_with_its_process(pg_url: str) -> None:
    with fresh_pg_database() as url:
        _a_batch_lock_goes_with_its_process(url)


def test_a_filesystem_without_record_locks_goes_on_without_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where the filesystem refuses record locks (ENOLCK: some network shares), a run goes on as on a
    database without such locks, saying so, instead of taking every batch for held and waiting for
    ever."""
    import errno
    import fcntl

    def no_locks(*args: object) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    lock = BatchLock(make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}"))
    assert lock.enforced
    assert lock.try_acquire(3) and lock.batch_id == 3 and not lock.enforced
    assert "no batch locks" in caplog.text
    lock.release()
    assert batch_in_progress(lock.engine, 3) is None  # unknown: `status` shows what is stored


def test_no_batch_lock_on_an_in_memory_database() -> None:
    engine = make_engine("sqlite://")
    lock = BatchLock(engine)
    assert not lock.enforced and lock.try_acquire(1) and lock.try_acquire(1)
    assert batch_in_progress(engine, 1) is None


def test_a_resume_picks_its_batch_among_other_unfinished_ones(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several interrupted batches: the submission resumes the one that holds its files, not a newer
    one holding a file it lacks, nor one whose other files were never read; the counts that pick it
    are asked in chunks too (`_batches_within`)."""
    monkeypatch.setattr(store, "IN_CHUNK", 2)
    engine = get_engine(settings)
    a, b, c, d = (store.InputFile(f"/scans/{n}.png", n * 64, 1) for n in "abcd")
    plans = {}
    # Oldest first: ours; then a batch of two of its files (c, never read, is not in it); then one
    # holding a file this submission lacks (d).
    for name, files in (("ours", [a, b, c]), ("fewer", [a, b]), ("more", [a, b, c, d])):
        with session_scope(engine=engine) as s:
            plans[name] = store.register_batch(s, files, force=True)
            store.finish_batch(s, plans[name].batch_id, interrupted=True)
    with session_scope(engine=engine) as s:
        again = store.register_batch(s, [c, b, a])  # the same files, in another order
    assert again.resumed and again.batch_id == plans["ours"].batch_id
    assert sorted(p for _, p in again.todo) == [a.path, b.path, c.path]
    with session_scope(engine=engine) as s:
        assert s.scalar(select(func.count()).select_from(Batch)) == 3  # no new batch


def test_a_new_batch_leaves_out_what_another_run_is_reading(settings: Settings) -> None:
    """A hot folder submitted again while the last run still reads it (a cron job every 15 minutes,
    a run that takes longer): the new batch gets only the new files; those still pending in the
    running batch are skipped ("in_progress"). Once that run is gone, a re-run of its submission
    resumes its batch as before."""
    engine = get_engine(settings)
    a, b, c = (store.InputFile(f"/hot/{n}.png", n * 64, 1) for n in "abc")
    first_lock, lock = BatchLock(engine), BatchLock(engine)

    def held_elsewhere(batch_id: int) -> bool:
        return batch_in_progress(engine, batch_id) is True

    try:
        with session_scope(engine=engine) as s:
            first = store.register_batch(s, [a, b], claim=first_lock.try_acquire, held_elsewhere=held_elsewhere)
        with session_scope(engine=engine) as s:
            plan = store.register_batch(s, [a, b, c], claim=lock.try_acquire, held_elsewhere=held_elsewhere)
        assert not plan.resumed and not plan.busy and plan.batch_id != first.batch_id
        assert [p for _, p in plan.todo] == [c.path]
        assert sorted((f.path, f.reason, f.batch_id) for f in plan.skipped) == [
            (a.path, "in_progress", first.batch_id), (b.path, "in_progress", first.batch_id)]  # fmt: skip
        # Without the question, as before: both runs read a and b.
        with session_scope(engine=engine) as s:
            forced = store.register_batch(s, [a, b, c, store.InputFile("/hot/d.png", "d" * 64, 1)])
        assert sorted(p for _, p in forced.todo) == [a.path, b.path, c.path, "/hot/d.png"]

        first_lock.release()  # the first run is killed
        with session_scope(engine=engine) as s:
            again = store.register_batch(s, [b, a], claim=lock.try_acquire, held_elsewhere=held_elsewhere)
        assert again.resumed and again.batch_id == first.batch_id and not again.busy
    finally:
        first_lock.release()
        lock.release()


def _list_batches(engine: Engine) -> None:
    with session_scope(engine=engine) as s:
        first = _sample_document(s).batch  # one done document, one page, its digit flagged below
        first.status = "done"
        plan = store.register_batch(s, [store.InputFile(f"/x/{n}.png", n * 64, 1) for n in "ab"])
        s.execute(cast(Table, Digit.__table__).update().values(needs_review=True))
    with session_scope(engine=engine) as s:
        listed = store.list_batches(s)
        assert [(b["batch"], b["documents"], b["pages"], b["flagged_digits"]) for b in listed] == [
            (plan.batch_id, {"total": 2, "pending": 2}, 0, 0),
            (first.id, {"total": 1, "done": 1}, 1, 1),
        ]
        # Marked running, held by no run: interrupted, and listed as such.
        assert [b["batch"] for b in store.list_batches(s, status="interrupted")] == [plan.batch_id]
        assert [b["batch"] for b in store.list_batches(s, status="done")] == [first.id]
        assert [b["batch"] for b in store.list_batches(s, limit=1)] == [plan.batch_id]
    with session_scope(engine=engine) as s:  # a run that found nothing new: listed only on request
        empty = store.register_batch(s, [store.InputFile("/x/a.png", "a" * 64, 1)], force=True)
        s.execute(cast(Table, Document.__table__).delete().where(Document.batch_id == empty.batch_id))
        store.finish_batch(s, empty.batch_id)
    with session_scope(engine=engine) as s:
        assert [b["batch"] for b in store.list_batches(s)] == [plan.batch_id, first.id]
        listed = store.list_batches(s, empty=True)
        assert [(b["batch"], b["documents"]) for b in listed][0] == (empty.batch_id, {"total": 0})
        # `digitreader status` with no batch: the latest that read something, and how many empty ones came
        # after it; asked by its id, the empty batch itself.
        latest = store.batch_status(s, None)
        assert (latest["batch"], latest["newer_empty"], latest["documents"]["total"]) == (plan.batch_id, 1, 2)
        assert store.batch_status(s, empty.batch_id)["documents"] == {"total": 0}
        assert store.batch_status(s, empty.batch_id)["newer_empty"] == 0
        # Times in UTC with the offset, whatever the backend gives back: SQLite without an offset, a
        # PostgreSQL server in its session's zone.
        if engine.dialect.name == "postgresql":
            s.execute(text("SET LOCAL TIME ZONE 'Asia/Kolkata'"))
        shown = [b[k] for b in [*store.list_batches(s, empty=True), latest] for k in ("created_at", "finished_at")]
        times = [dt.datetime.fromisoformat(t) for t in shown if t is not None]
        assert len(times) >= 5 and all(t.utcoffset() == dt.timedelta(0) for t in times), shown
        assert all(abs(t - store.utcnow()) < dt.timedelta(minutes=10) for t in times), shown


def test_list_batches(either_engine: Engine) -> None:
    _list_batches(either_engine)


def test_db_text_escapes_what_is_not_utf8_and_nothing_else() -> None:
    assert store.db_text("/scans/été 1.png") == "/scans/été 1.png"
    assert store.db_text(os.fsdecode(b"/scans/scan-\xff\xfe.png")) == "/scans/scan-\\xff\\xfe.png"
    assert store.db_text("lone \ud800 surrogate") == "lone \\ud800 surrogate"


def test_cascade_delete_on_sqlite(settings: Settings) -> None:
    engine = get_engine(settings)
    with session_scope(engine=engine) as s:
        _sample_document(s)
    with session_scope(engine=engine) as s:
        s.execute(cast(Table, Page.__table__).delete())  # foreign keys with ON DELETE CASCADE are enforced
    with session_scope(engine=engine) as s:
        assert s.scalars(select(Digit)).all() == []
        assert s.scalars(select(Field)).all() == []


def test_unreachable_database_is_a_database_error(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none", _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(DatabaseError) as info:
        get_engine(s)
    assert info.value.exit_code == 6


@pytest.mark.integration
def test_postgres_upgrades_and_registrations_at_once(pg_url: str) -> None:
    """`digitreader db upgrade` run three times at once on an empty server database (operators, deploy
    jobs): one migrates, the others wait on the advisory lock and find the schema at head. Then three
    workers register the same model at once: one row, no error."""
    with fresh_pg_database() as url:
        _upgrades_and_registrations_at_once(url)


def _upgrades_and_registrations_at_once(url: str) -> None:
    engines = [make_engine(url) for _ in range(3)]
    barrier = threading.Barrier(len(engines))
    results: list[tuple[str | None, str | None] | BaseException] = []

    def run(engine: Engine) -> None:
        barrier.wait()
        try:
            results.append(upgrade(engine))
        except BaseException as exc:  # reported by the assertion below
            results.append(exc)

    try:
        threads = [threading.Thread(target=run, args=(e,)) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        head = head_revision()
        assert sorted(results, key=str) == sorted([(None, head), (head, head), (head, head)], key=str), results
        _check_schema(engines[0])

        # The same model registered by three inference workers at once: one row, no error.
        registered: list[str | BaseException] = []

        def register(engine: Engine) -> None:
            barrier.wait()
            try:
                with session_scope(engine=engine) as s:
                    registered.append(store.ensure_model_version(s, "9.9.9", "ab" * 32).version)
            except BaseException as exc:  # reported by the assertion below
                registered.append(exc)

        threads = [threading.Thread(target=register, args=(e,)) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert registered == ["9.9.9"] * 3, registered
        with session_scope(engine=engines[0]) as s:
            assert [(m.version, m.status) for m in s.scalars(select(ModelVersion))] == [("9.9.9", "active")]
    finally:
        for e in engines:
            e.dispose()


@pytest.mark.integration
def test_postgres_batch_of_more_files_than_a_statement_has_parameters(pg_url: str) -> None:
    """A batch of 70,000 files (a day's cheques) registers, and registers again as a resume, on
    PostgreSQL, whose statements hold at most 65,535 parameters: the already-read query is asked in
    chunks (`store.IN_CHUNK`). It used to fail with "number of parameters must be between 0 and 65535"."""
    with fresh_pg_database() as url:
        _a_batch_of_70_000_files(url)


def _a_batch_of_70_000_files(url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    files = [store.InputFile(f"/cheques/{i}.png", f"{i:064x}", 1) for i in range(70_000)]
    with session_scope(engine=engine) as s:
        first = store.register_batch(s, files[:5], force=True)  # five of them read before
        for doc_id, _ in first.todo:
            s.execute(cast(Table, Document.__table__).update().where(Document.id == doc_id).values(status="done"))
    with session_scope(engine=engine) as s:
        plan = store.register_batch(s, files)
    assert len(plan.todo) == 69_995 and len(plan.skipped) == 5 and not plan.resumed
    with session_scope(engine=engine) as s:
        s.execute(cast(Table, Batch.__table__).update().where(Batch.id == plan.batch_id).values(status="interrupted"))
    with session_scope(engine=engine) as s:
        again = store.register_batch(s, files)
    assert again.resumed and again.batch_id == plan.batch_id and len(again.todo) == 69_995
    engine.dispose()


def test_already_read_files_are_found_across_chunks(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "IN_CHUNK", 3)
    engine = get_engine(settings)
    files = [store.InputFile(f"/scans/{i}.png", f"{i:064x}", 1) for i in range(10)]
    with session_scope(engine=engine) as s:
        first = store.register_batch(s, files[2:9:2], force=True)  # 2, 4, 6, 8: in three chunks
        for doc_id, _ in first.todo:
            s.execute(cast(Table, Document.__table__).update().where(Document.id == doc_id).values(status="done"))
    with session_scope(engine=engine) as s:
        plan = store.register_batch(s, files)
    assert sorted(f.path for f in plan.skipped) == sorted(f.path for f in files[2:9:2])
    assert sorted(p for _, p in plan.todo) == sorted(f.path for f in files if f not in files[2:9:2])


@pytest.mark.integration
def test_postgres_upgrade_from_empty(pg_url: str) -> None:
    engine = make_engine(pg_url)
    assert current_revision(engine) is None
    with pytest.raises(DatabaseError, match="db upgrade"):
        ensure_schema(engine)  # a server database is never upgraded behind the user's back
    upgrade(engine)
    _check_schema(engine)
    assert upgrade(engine)[0] == head_revision()
    with session_scope(engine=engine) as s:
        doc_id = _sample_document(s).id
    with pytest.raises(IntegrityError), session_scope(engine=engine) as s:
        s.add(Page(document_id=doc_id, number=1, width=1, height=1))
    with session_scope(engine=engine) as s:
        s.execute(cast(Table, Document.__table__).delete())
    with session_scope(engine=engine) as s:
        assert s.scalars(select(Digit)).all() == []
    engine.dispose()


def test_a_migration_stopped_halfway_leaves_a_new_sqlite_file_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schema of a new SQLite file is made in one transaction. pysqlite starts none before DDL, so
    each CREATE TABLE committed alone: a Ctrl-C during the first run's migration (stress runs hit it)
    left tables without their alembic_version, and every later command failed "migration failed:
    table batches already exists" (exit 6) until the file was deleted."""
    from alembic.ddl.impl import DefaultImpl

    engine = make_engine(f"sqlite:///{tmp_path / 'new.sqlite'}")
    real, made = DefaultImpl.create_index, []

    def stopped_at_the_third_index(self: DefaultImpl, *args: Any, **kwargs: Any) -> None:
        made.append(args)
        if len(made) == 3:  # some tables made by then
            raise KeyboardInterrupt
        real(self, *args, **kwargs)

    monkeypatch.setattr(DefaultImpl, "create_index", stopped_at_the_third_index)
    with pytest.raises(KeyboardInterrupt):
        upgrade(engine)
    monkeypatch.undo()
    assert inspect(engine).get_table_names() == []  # nothing half made
    assert upgrade(engine) == (None, head_revision())  # the next run makes it whole
    assert {"batches", "documents", "digits", "alembic_version"} <= set(inspect(engine).get_table_names())
