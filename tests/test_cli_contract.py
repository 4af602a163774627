"""What the command line promises scripts, pipes and logs: a batch id no batch can have is "not found"
(exit 10), `export -o` writes through links and into devices and FIFOs without replacing them (`-o -`
is stdout), an export of a batch still running leaves out the documents not read yet and says so, and
stderr's lines are never wrapped nor broken by a control character in a file name. Real sample scans
(examples/scans/), a real SQLite database (and PostgreSQL for its 32-bit ids), the CLI in-process and
as real processes."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from digitreader.errors import ExitCode
from tests.test_cli_inputs import run_cli
from tests.test_cli_submit import _wait_frozen
from tests.test_db import pg_url  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
SCANS = ROOT / "examples" / "scans"
CHEQUE = SCANS / "scan-0001-00002.jpg"  # the smallest sample scan
READ = {"done", "needs_review", "failed"}


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITREADER_") or k in (
        "DIGITREADER_DATA_DIR", "DIGITREADER_MODEL_PATH")}  # fmt: skip
    env.update({"DIGITREADER_HOME": str(home), "PYTHONUNBUFFERED": "1", "COLUMNS": "80", **extra})
    return env


def _cli(args: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run([sys.executable, "-m", "digitreader", *args], env=env, stderr=subprocess.PIPE,
                          text=True, timeout=300, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(home, batch id) of a batch of one real sample scan, in a SQLite database of its own."""
    from digitreader.settings import get_settings

    home = tmp_path_factory.mktemp("contract") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIGITREADER_HOME", str(home))
        for name in ("DIGITREADER_DATABASE_URL", "DIGITREADER_BROKER_URL", "DIGITREADER_PRECISION"):
            mp.delenv(name, raising=False)
        get_settings.cache_clear()
        out = io.StringIO()
        mp.setattr("sys.stdout", out)
        assert run_cli(["submit", "-q", str(CHEQUE)]) == 0
        yield home, out.getvalue().strip()
    get_settings.cache_clear()


# --- A. a batch id larger than the database's id column ------------------------------------------


def _assert_not_found(ids: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    for n in ids:
        for args in (
            ["status", str(n)],
            ["status", str(n), "--json"],
            ["export", str(n)],
            ["export", str(n), "--format", "csv"],
            ["review", "list", "--batch", str(n)],
        ):
            code = run_cli(args)
            out = capsys.readouterr()
            assert code == ExitCode.NOT_FOUND, (args, out.err)
            assert f"digitreader: error: batch {n} does not exist" in out.err, (args, out.err)
            assert "internal error" not in out.err and "Traceback" not in out.err
            assert out.out == ""


def test_a_batch_id_sqlite_cannot_hold_is_not_found(
    batch: tuple[Path, str], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status`, `export` and `review list --batch` with an id beyond SQLite's 64-bit INTEGER say the
    batch does not exist (exit 10), as `review show` does for a digit id; they used to end in an
    OverflowError traceback, "internal error (please report it)", exit 1."""
    _assert_not_found([99999999999999999999999, 2**63, 2**63 - 1, 0], capsys)
    assert run_cli(["status", batch[1], "--json"]) == 0  # the real one is still found
    assert json.loads(capsys.readouterr().out)["batch"] == int(batch[1])


@pytest.mark.integration
def test_a_batch_id_postgresql_cannot_hold_is_not_found(
    pg_url: str,  # noqa: F811
    isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On PostgreSQL (32-bit INTEGER ids) `export 2147483648` said "database error: integer out of
    range ... check that the server is running" (exit 6); now "batch 2147483648 does not exist" (10)."""
    from digitreader.settings import get_settings

    monkeypatch.setenv("DIGITREADER_DATABASE_URL", pg_url)
    get_settings.cache_clear()
    assert run_cli(["db", "upgrade"]) == 0
    capsys.readouterr()
    _assert_not_found([2**31, 2**31 - 1, 99999999999999999999999], capsys)


# --- B. export -o: stdout, links, devices and FIFOs ------------------------------------------------


def test_o_dash_is_stdout(
    batch: tuple[Path, str], home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """`export -o -` writes to stdout (it used to write a file named "-" and say "wrote -"); so does
    the helper `predict -o` uses."""
    from digitreader.cli.output import output_file

    monkeypatch.chdir(tmp_path)
    assert run_cli(["export", batch[1], "-o", "-"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["batch"] == int(batch[1]) and "wrote" not in out.err
    assert run_cli(["export", batch[1], "-f", "csv", "-o", "-"]) == 0
    assert capsys.readouterr().out.startswith("batch,document,sha256,")
    with output_file(Path("-")) as fh:
        fh.write("to stdout\n")
    assert capsys.readouterr().out == "to stdout\n"
    assert list(tmp_path.iterdir()) == []


def test_a_symlink_is_written_through_and_kept(batch: tuple[Path, str], home: Path, tmp_path: Path) -> None:
    """`export -o LINK` replaces the file the link points to (atomically, in that file's folder, its mode
    kept) and keeps the link; it used to replace the link itself with a regular file. A link to a file
    not there yet makes the file."""
    real, links = tmp_path / "real", tmp_path / "links"
    real.mkdir()
    links.mkdir()
    (real / "results.json").write_text("old")
    (real / "results.json").chmod(0o640)
    (links / "out.json").symlink_to("../real/results.json")
    (links / "new.csv").symlink_to(real / "new.csv")  # dangling
    assert run_cli(["export", batch[1], "-o", str(links / "out.json")]) == 0
    assert run_cli(["export", batch[1], "-f", "csv", "-o", str(links / "new.csv")]) == 0
    assert os.readlink(links / "out.json") == "../real/results.json"
    assert os.readlink(links / "new.csv") == str(real / "new.csv")
    assert json.loads((real / "results.json").read_text())["batch"] == int(batch[1])
    assert stat.S_IMODE((real / "results.json").stat().st_mode) == 0o640
    assert (real / "new.csv").read_text().startswith("batch,document,sha256,")
    assert sorted(p.name for p in real.iterdir()) == ["new.csv", "results.json"]  # no temporary left
    assert sorted(p.name for p in links.iterdir()) == ["new.csv", "out.json"]


def test_a_fifo_is_written_not_replaced(batch: tuple[Path, str], home: Path, tmp_path: Path) -> None:
    """A FIFO (or a device) named with -o is opened and written; it used to be replaced by a regular
    file, so the process reading it got nothing."""
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so that the export's open does not wait
    try:
        assert run_cli(["export", batch[1], "-f", "csv", "-o", str(fifo)]) == 0
        got = b""
        while True:
            try:
                chunk = os.read(reader, 1 << 16)
            except OSError as exc:
                assert exc.errno == errno.EAGAIN
                break
            if not chunk:
                break
            got += chunk
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    rows = list(csv.DictReader(io.StringIO(got.decode())))
    assert rows and {r["batch"] for r in rows} == {batch[1]}
    assert [p.name for p in tmp_path.iterdir()] == ["results.fifo"]


def test_a_link_to_dev_stdout_writes_to_stdout(batch: tuple[Path, str], tmp_path: Path) -> None:
    """A link to /dev/stdout (and /dev/stdout itself: as root, the old code would have replaced it with
    a regular file) writes to the process's standard output: a pipe, or a file the shell opened to
    append, which keeps what it held. The link is kept."""
    env = _env(batch[0])
    link = tmp_path / "to-stdout"
    link.symlink_to("/dev/stdout")
    res = _cli(["export", batch[1], "-f", "csv", "-o", str(link)], env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("batch,document,sha256,") and res.stdout.count(f"\n{batch[1]},") >= 1
    assert os.readlink(link) == "/dev/stdout"
    log = tmp_path / "log.txt"
    log.write_text("an earlier line\n")
    with open(log, "a") as fh:  # `>> log.txt`
        res = _cli(["export", batch[1], "-f", "csv", "-o", str(link)], env, stdout=fh)
    assert res.returncode == 0, res.stderr
    text = log.read_text()
    assert text.startswith("an earlier line\nbatch,document,sha256,") and os.readlink(link) == "/dev/stdout"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "to-stdout"]


# --- C. export of a batch still running ------------------------------------------------------------


def _read_so_far(db: Path, batch: int) -> tuple[int, int]:
    """(documents read, documents) of `batch`, read from the database file as another process would."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            read, total = con.execute(
                "select sum(status in ('done','needs_review','failed')), count(*) from documents where batch_id=?",
                (batch,),
            ).fetchone()
            return int(read or 0), int(total)
    except sqlite3.OperationalError:
        return 0, 0


def _export(batch: int, fmt: str, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    assert run_cli(["export", str(batch), "--format", fmt]) == 0
    out = capsys.readouterr()
    return out.out, out.err


def _assert_read_only(batch: int, total: int, capsys: pytest.CaptureFixture[str], said: str) -> int:
    """Both exports hold only documents read, count the others, and say so on stderr; the count."""
    out, err = _export(batch, "json", capsys)
    doc = json.loads(out)
    assert {d["status"] for d in doc["documents"]} <= READ
    unread = doc["unread"]
    assert unread == total - len(doc["documents"]) and unread > 0
    note = f"batch {batch} {said}: {unread} document{'s' if unread > 1 else ''} not read yet"
    assert note in err, err
    out, err = _export(batch, "csv", capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["status"] for r in rows} <= READ
    assert {r["document"] for r in rows} <= {d["path"] for d in doc["documents"]}
    assert f"batch {batch} {said}: " in err and "not read yet" in err
    return int(unread)


def test_export_of_a_batch_still_running_leaves_out_what_is_not_read_yet(
    isolated_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An export while the batch runs held its documents not read yet with status "pending" (which the
    results schema does not allow), in the JSON and the CSV, and said nothing. Now they are left out,
    counted in "unread", and stderr says the batch is still running (or was interrupted); exit 0."""
    scans = tmp_path / "scans"
    scans.mkdir()
    for f in sorted(SCANS.iterdir()):
        if not f.name.endswith(".json"):
            shutil.copy(f, scans / f.name)
    db = isolated_env / "digitreader.sqlite"
    env = _env(isolated_env, DIGITREADER_WORKERS="1")
    proc = subprocess.Popen([sys.executable, "-m", "digitreader", "submit", "-q", str(scans)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        batch = int(proc.stdout.readline())  # printed as soon as the batch exists
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and _read_so_far(db, batch)[0] < 1:
            time.sleep(0.01)
        proc.send_signal(signal.SIGSTOP)  # frozen with its batch lock held: the batch is running
        _wait_frozen(proc.pid)
        read, total = _read_so_far(db, batch)
        assert 1 <= read < total, "the batch ended before it could be exported while running"

        unread = _assert_read_only(batch, total, capsys, "is still running")
        assert unread == total - read
        out, err = _export(batch, "json", capsys)
        assert json.loads(out)["status"] == "running" and "export it again when it ends" in err

        proc.kill()  # its run gone, the batch is interrupted
        proc.wait(timeout=30)
        assert _assert_read_only(batch, total, capsys, "was interrupted") == unread
        out, err = _export(batch, "json", capsys)
        assert json.loads(out)["status"] == "interrupted" and "run the same submit command again" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_an_export_of_a_batch_that_ended_counts_nothing_unread(
    batch: tuple[Path, str], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = _export(int(batch[1]), "json", capsys)
    doc = json.loads(out)
    assert doc["unread"] == 0 and doc["status"] == "done" and len(doc["documents"]) == 1
    assert "not read yet" not in err


# --- D. stderr lines: never wrapped, control characters escaped --------------------------------------


def test_shown_escapes_control_characters_and_nothing_else() -> None:
    from digitreader.text import printable, shown

    assert shown("two\nlines.png") == "two\\nlines.png"
    assert shown("a\rb\tc\x1b[31md\x7fe\x85f\u2028g") == "a\\rb\\tc\\x1b[31md\\x7fe\\x85f\\u2028g"
    assert shown(os.fsdecode(b"/scans/scan-\xff.png")) == "/scans/scan-\\xff.png"  # as `printable`
    for text in ("/scans/été 1.png", "a\\nb.png", "scan-\\xff.png", "«z» 日本.pdf"):
        assert shown(text) == text  # valid text, and text shown already, unchanged
    assert shown(shown("a\nb\x00")) == shown("a\nb\x00") == "a\\nb\\x00"
    assert printable("two\nlines.png") == "two\nlines.png"  # what is stored keeps it


def test_submit_and_status_lines_stay_one_line_each(isolated_env: Path, tmp_path: Path) -> None:
    """With stderr a file or a pipe (cron, a log), Rich wrapped each "failed PATH: code: message" line
    and the summary at 80 columns, and a newline in a file name broke a line in two (so that a name
    could even forge a line); grep found half a line. Now each is one line, the newline shown `\\n`."""
    scans = tmp_path / ("a-folder-with-a-rather-long-name-as-scanners-make-them-" + "x" * 40)
    scans.mkdir()
    shutil.copy(CHEQUE, scans / "cheque.jpg")
    long = scans / ("scan-2026-12-06-department-of-accounts-payable-" + "0" * 30 + ".png")
    long.write_text("not an image at all, but a text file with a scan's name\n")
    newline = scans / "two\nlines.jpg"
    newline.write_bytes(CHEQUE.read_bytes()[:0])  # an empty file
    env = _env(isolated_env)
    res = _cli(["submit", str(scans)], env)
    assert res.returncode == ExitCode.PARTIAL, res.stderr
    batch = res.stdout.strip()
    lines = res.stderr.splitlines()
    failed = [line for line in lines if line.startswith("failed ")]
    assert len(failed) == 2, res.stderr
    shown_long = f"{long}: unsupported: not a supported image or PDF"
    assert any(line.startswith(f"failed {shown_long}") and line.endswith(")") for line in failed), failed
    shown_newline = f"{scans}/two\\nlines.jpg: empty_file: "
    assert any(line.startswith(f"failed {shown_newline}") for line in failed), failed
    summary = [line.strip() for line in lines if line.startswith("    ")]
    assert any(line.startswith(shown_long) for line in summary), res.stderr
    assert any(line.startswith(shown_newline) for line in summary), res.stderr
    assert not any(line.startswith("lines.jpg") for line in lines), res.stderr
    assert all(len(line) > 80 for line in failed)  # not cut at 80 columns

    st = _cli(["status", batch], env)
    assert st.returncode == 0, st.stderr
    listed = [line.strip() for line in st.stdout.splitlines() if line.startswith("  ")]
    assert any(line.startswith(shown_long) for line in listed), st.stdout
    assert any(line.startswith(shown_newline) for line in listed), st.stdout
    assert not any(line.startswith("lines.jpg") for line in st.stdout.splitlines()), st.stdout
    # The export keeps the name as it is (JSON escapes it its own way).
    paths = {d["path"] for d in json.loads(_cli(["export", batch], env).stdout)["documents"]}
    assert str(newline) in paths
