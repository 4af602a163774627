"""A file found as it was when it was last hashed is not read again (`pipeline.hashcache`), on real
SQLite and PostgreSQL; and any change to a file, even one that keeps its size and modification time,
has it read again."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, update
from typer.testing import CliRunner

from digitreader.db import store
from digitreader.db.models import FileHash
from digitreader.db.session import session_scope
from digitreader.pipeline import hashcache
from digitreader.pipeline.hashcache import HashCache, cache_key
from digitreader.pipeline.process import hash_inputs
from digitreader.settings import Settings
from tests.test_db import either_engine, fresh_pg_engine, pg_url  # noqa: F401  (fixtures)


class Reads:
    """Counts the files `hashcache` reads, by wrapping the function that reads and hashes them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[Path] = []
        real = hashcache.sha256_file_and_size

        def counted(path: str | Path) -> tuple[str, int]:
            self.paths.append(Path(path))
            return real(path)

        monkeypatch.setattr(hashcache, "sha256_file_and_size", counted)


def _files(folder: Path, n: int = 4, size: int = 5000) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"scan-{i}.png"
        p.write_bytes(os.urandom(size))
        out.append(p)
    return out


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _hash(engine: Engine, paths: list[Path], *, trust: bool = True) -> dict[Path, str]:
    cache = HashCache.load(engine, paths, trust=trust)
    files, bad = hash_inputs(paths, threads=2, cache=cache)
    assert bad == []
    cache.save(engine)
    return {Path(f.path): f.sha256 for f in files}


def test_unchanged_files_are_not_read_again_and_changed_ones_are(
    either_engine: Engine,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hashcache, "RACY_SECONDS", 0.0)  # these files were written just now
    reads = Reads(monkeypatch)
    paths = _files(tmp_path / "scans")
    first = _hash(either_engine, paths)
    assert first == {p: _sha(p) for p in paths} and sorted(reads.paths) == sorted(paths)

    reads.paths.clear()
    assert _hash(either_engine, paths) == first
    assert reads.paths == []  # every file as it was: none read

    # Rewritten in place with the same size, its modification time set back: the change time moved.
    same_size, replaced = paths[0], paths[1]
    st = same_size.stat()
    same_size.write_bytes(os.urandom(st.st_size))
    os.utime(same_size, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert same_size.stat().st_mtime_ns == st.st_mtime_ns and same_size.stat().st_size == st.st_size
    # Replaced by another file of the same size and times (a new inode).
    other = tmp_path / "other.png"
    other.write_bytes(os.urandom(replaced.stat().st_size))
    st = replaced.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, replaced)
    third = _hash(either_engine, paths)
    assert third == {p: _sha(p) for p in paths}
    assert third[same_size] != first[same_size] and third[replaced] != first[replaced]
    assert sorted(reads.paths) == sorted([same_size, replaced])

    # --force trusts no stamp: everything is read again.
    reads.paths.clear()
    assert _hash(either_engine, paths, trust=False) == third
    assert sorted(reads.paths) == sorted(paths)


def test_files_changed_lately_or_while_read_are_not_remembered(
    settings: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from digitreader.db.session import get_engine

    engine = get_engine(settings)  # type: ignore[arg-type]
    fresh, growing, old = _files(tmp_path / "scans", 3)
    # A file last changed less than RACY_SECONDS before it is hashed is read and not remembered: a
    # second write in the same tick of the file system's clock could leave its stamp as it is.
    st = fresh.stat()
    monkeypatch.setattr(
        hashcache.time, "time_ns", lambda: max(st.st_mtime_ns, st.st_ctime_ns) + int(hashcache.RACY_SECONDS * 1e9) - 1
    )
    cache = HashCache()
    cache.sha256(fresh)
    assert cache.hashed == []
    monkeypatch.setattr(hashcache.time, "time_ns", lambda: old.stat().st_ctime_ns + int(hashcache.RACY_SECONDS * 1e9))
    cache.sha256(old)
    assert [row[0] for row in cache.hashed] == [cache_key(old)]

    # A file that a scanner is still writing while it is hashed: read, not remembered.
    real = hashcache.sha256_file_and_size

    def still_written(path: str | Path) -> tuple[str, int]:
        out = real(path)
        with open(path, "ab") as fh:
            fh.write(b"more")
        return out

    monkeypatch.setattr(hashcache, "sha256_file_and_size", still_written)
    monkeypatch.setattr(hashcache.time, "time_ns", lambda: growing.stat().st_ctime_ns + int(1e12))
    cache.sha256(growing)
    assert [row[0] for row in cache.hashed] == [cache_key(old)]
    cache.save(engine)
    with session_scope(engine=engine) as s:
        assert s.scalars(select(FileHash.path)).all() == [cache_key(old)]


def test_saving_replaces_what_was_known_and_forgets_old_hashes(either_engine: Engine) -> None:  # noqa: F811
    with session_scope(engine=either_engine) as s:
        rows = [("/scans/a.png", "1:2:3:4:5", "a" * 64, 1), ("/scans/b.png", "1:2:3:4:6", "b" * 64, 1)]
        store.save_file_hashes(s, rows)
    with session_scope(engine=either_engine) as s:
        s.execute(update(FileHash).where(FileHash.path == "/scans/b.png").values(
            hashed_at=store.utcnow() - dt.timedelta(days=store.FILE_HASH_DAYS + 1)))  # fmt: skip
    with session_scope(engine=either_engine) as s:
        store.save_file_hashes(s, [("/scans/a.png", "9:9:9:9:9", "c" * 64, 9)])
    with session_scope(engine=either_engine) as s:
        known = store.known_file_hashes(s, ["/scans/a.png", "/scans/b.png", "/scans/c.png"])
    assert known == {"/scans/a.png": ("9:9:9:9:9", "c" * 64, 9)}  # a replaced, b forgotten


@pytest.mark.integration
def test_two_runs_saving_the_same_files_at_once(pg_url: str) -> None:  # noqa: F811
    """Two submits of one hot folder remember the same files at the same moment: neither fails."""
    with fresh_pg_engine() as engine:
        _save_at_once(engine)


def _save_at_once(engine: Engine) -> None:
    rows = [(f"/hot/{i:05d}.png", f"{i}:0:0:0:{i}", f"{i:064x}", i) for i in range(5000)]
    errors: list[BaseException] = []

    def save(part: list[tuple[str, str, str, int]]) -> None:
        try:
            with session_scope(engine=engine) as s:
                store.save_file_hashes(s, part)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(rows[k:],)) for k in (0, 1000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with session_scope(engine=engine) as s:
        assert s.scalar(select(func.count()).select_from(FileHash).where(FileHash.path.like("/hot/%"))) == 5000


def test_a_folder_submitted_again_is_not_read_again(
    isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the CLI: the second submit of a folder reads none of its files (they are skipped, as
    before, by their content's hash), and --force reads every one."""
    import shutil

    from digitreader.cli.main import app

    monkeypatch.setattr(hashcache, "RACY_SECONDS", 0.0)
    scans = tmp_path / "scans"
    shutil.copytree(Path(__file__).parents[1] / "examples" / "scans", scans)
    n = len(list(scans.glob("*.truth.json")))
    reads = Reads(monkeypatch)
    runner = CliRunner()
    assert runner.invoke(app, ["submit", "-q", str(scans)]).exit_code == 0
    assert len(reads.paths) == n

    reads.paths.clear()
    again = runner.invoke(app, ["submit", str(scans)])
    assert again.exit_code == 0 and f"skipped {n} already processed" in again.stderr
    assert reads.paths == []

    forced = runner.invoke(app, ["submit", "-q", "--force", str(scans)])
    assert forced.exit_code == 0 and len(reads.paths) == n


def test_progress_while_new_files_are_read_to_be_hashed(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A large folder new to the cache is read whole before the batch is made: the hook (the CLI's bar)
    hears of each file read; a second run, which reads none, says nothing of hashing."""
    import shutil

    from digitreader.cli.commands.submit import _Bar
    from digitreader.pipeline.process import process_batch
    from digitreader.pipeline.report import ProgressHook

    monkeypatch.setattr(hashcache, "RACY_SECONDS", 0.0)
    scans = tmp_path / "scans"
    shutil.copytree(Path(__file__).parents[1] / "examples" / "scans", scans)
    n = len(list(scans.glob("*.truth.json")))

    class Heard(ProgressHook):
        def __init__(self) -> None:
            self.events: list[tuple[str, int, int]] = []

        def hashing(self, done: int, total: int) -> None:
            self.events.append(("hashing", done, total))

        def started(self, batch_id: int, todo: int, total: int) -> None:
            self.events.append(("started", todo, total))

    first = Heard()
    process_batch([scans], settings, hook=first)
    assert first.events == [*(("hashing", k, n) for k in range(1, n + 1)), ("started", n, n)]
    again = Heard()
    process_batch([scans], settings, hook=again)
    assert again.events == [("started", 0, 0)]

    # The CLI's bar: a task while files are read, gone when the batch starts.
    bar = _Bar(quiet=False)
    bar.hashing(1, 3)
    assert [t.description for t in bar.bar.tasks] == ["reading new files to hash them"]
    bar.hashing(3, 3)
    assert bar.bar.tasks[0].completed == 3
    bar.started(7, 2, 2)
    assert [t.description for t in bar.bar.tasks] == ["batch 7: 0 pages"]
    bar.stop()
    assert capsys.readouterr().out == "7\n"
