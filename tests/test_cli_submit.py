"""submit / status / export / models / db from the command line: in-process (CliRunner) and as real
subprocesses (exit codes, stdout holding only data, a batch killed mid-way and resumed)."""

from __future__ import annotations

import csv
import ctypes
import datetime as dt
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from digitreader.cli.main import app
from digitreader.errors import ExitCode, NotFoundError
from tests.test_pipeline_e2e import make_bad_files, make_scans, score

runner = CliRunner()


@pytest.fixture(scope="session")
def scans(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    return make_scans(tmp_path_factory.getbasetemp(), data_dir)


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITREADER_") or k in (
        "DIGITREADER_DATA_DIR", "DIGITREADER_MODEL_PATH")}  # fmt: skip
    env.update({"DIGITREADER_HOME": str(home), "PYTHONUNBUFFERED": "1", **extra})
    return env


def _cli(args: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "digitreader", *args], env=env, capture_output=True, text=True,
                          timeout=300, **kw)  # fmt: skip


@pytest.mark.slow
def test_submit_status_export_in_process(isolated_env: Path, scans: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["submit", str(scans)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().isdigit() and res.stdout.count("\n") == 1  # the batch id alone
    batch = res.stdout.strip()
    assert "documents 6" in res.stderr and "pages 8" in res.stderr and "flagged" in res.stderr
    # The summary names the model and the file that read (the int8 one on a CPU: DIGITREADER_PRECISION=auto).
    from digitreader.pipeline.recognize import read_manifest

    assert f"model {read_manifest()['version']} (int8), threshold" in res.stderr

    st = runner.invoke(app, ["status", batch, "--json"])
    assert st.exit_code == 0
    info = json.loads(st.stdout)
    assert info["status"] == "done" and info["documents"]["total"] == 6 and info["pages"] == 8
    assert info["digits"] > 100 and info["failures"] == []
    assert info["model_precision"] == "int8"
    assert "documents: 6" in runner.invoke(app, ["status"]).stdout  # latest batch, as text

    ex = runner.invoke(app, ["export", batch, "--format", "json"])
    export = json.loads(ex.stdout)
    assert export["schema"] == "digitreader.results/v1" and len(export["documents"]) == 6
    assert export["model_precision"] == "int8"
    assert score(export)["digit_accuracy"] >= 0.85

    out = tmp_path / "out" / "results.csv"
    assert runner.invoke(app, ["export", batch, "-f", "csv", "-o", str(out)]).exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    n_fields = sum(len(p["fields"]) for d in export["documents"] for p in d["pages"])
    assert len(rows) == n_fields
    assert {"document", "page", "field", "value", "confidence", "flag"} <= set(rows[0])
    first = export["documents"][0]["pages"][0]["fields"][0]
    assert (rows[0]["field"], rows[0]["value"]) == (first["name"], first["value"])

    # A second submit skips everything already read; --force reads it again.
    again = runner.invoke(app, ["submit", str(scans)])
    assert again.exit_code == 0 and "skipped 6 already processed" in again.stderr
    # `status` still shows the batch that read them, not the empty one the second submit made.
    latest = runner.invoke(app, ["status"]).stdout
    assert f"batch {batch}:" in latest and "documents: 6" in latest
    assert "the 1 later batch had nothing new to read" in latest
    assert runner.invoke(app, ["export", "999"]).exception.__class__ is NotFoundError


def test_a_document_with_no_digit_field_is_named_in_the_summary_and_status(isolated_env: Path, tmp_path: Path) -> None:
    """A page of printed text (or a form read at a wrong scale) is read with no field: `done`, with
    nothing to review and nothing read. Before, neither `submit` nor `status` said so."""
    from PIL import Image, ImageDraw, ImageFont

    folder = tmp_path / "in"
    folder.mkdir()
    letter = Image.new("L", (1240, 1754), 255)
    draw = ImageDraw.Draw(letter)
    for i in range(20):
        draw.text(
            (100, 100 + 60 * i), f"Dear customer, your order number {i} was sent", font=ImageFont.load_default(size=30)
        )
    letter.save(folder / "letter.png", dpi=(150, 150))
    shutil.copy(Path(__file__).resolve().parents[1] / "examples" / "scans" / "scan-0003-00001.png", folder / "form.png")
    res = runner.invoke(app, ["submit", str(folder)])
    assert res.exit_code == 0, res.output
    assert "no digit field found in 1 (not a form, or scanned at another scale?):" in res.stderr
    assert f"    {folder / 'letter.png'}\n" in res.stderr and "form.png" not in res.stderr
    st = json.loads(runner.invoke(app, ["status", res.stdout.strip(), "--json"]).stdout)
    assert st["no_fields"] == [str(folder / "letter.png")] and st["documents"]["done"] == 2
    assert "no digit field found in 1" in runner.invoke(app, ["status"]).stdout


def test_usage_errors(isolated_env: Path, tmp_path: Path) -> None:
    env = _env(isolated_env)
    bad = _cli(["submit", str(tmp_path / "nope")], env)
    assert bad.returncode == ExitCode.USAGE and bad.stdout == "" and "no such file" in bad.stderr
    (tmp_path / "empty").mkdir()
    assert _cli(["submit", str(tmp_path / "empty")], env).returncode == ExitCode.USAGE
    assert _cli(["submit", str(tmp_path), "--threshold", "2"], env).returncode == ExitCode.USAGE
    missing = _cli(["export", "12345"], env)
    assert missing.returncode == ExitCode.NOT_FOUND and "does not exist" in missing.stderr
    # A FIFO named like a scan (reading it would block): refused by name, and passed over in a folder.
    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "scan.png")
    fifo = _cli(["submit", str(fifo_dir / "scan.png")], env)
    assert fifo.returncode == ExitCode.USAGE and "not a regular file or folder" in fifo.stderr
    folder = _cli(["submit", str(fifo_dir)], env)
    assert folder.returncode == ExitCode.USAGE and "no scans found" in folder.stderr


def test_unsettled_files(tmp_path: Path) -> None:
    from digitreader.pipeline.process import unsettled

    now = time.time()
    ages = {"old": 3600, "fresh": 5, "skewed": -5, "wrong_clock": -365 * 86400}
    files = {}
    for name, age in ages.items():
        files[name] = tmp_path / f"{name}.png"
        files[name].write_bytes(b"x")
        os.utime(files[name], (now - age, now - age))
    got = unsettled([*files.values(), tmp_path / "gone.png"], 60, now=now)
    assert got == {files["fresh"], files["skewed"]}
    assert unsettled(list(files.values()), 0, now=now) == set()


@pytest.mark.slow
def test_settle_leaves_files_still_being_written_for_the_next_run(
    isolated_env: Path, scans: Path, tmp_path: Path
) -> None:
    """`--settle 60`: a scan modified a moment ago (a scanner still writing it into a hot folder) is
    left for the next run and the summary says so; once it is older, the next run reads it."""
    folder = tmp_path / "hot"
    folder.mkdir()
    old, new = (folder / p.name for p in sorted(scans.glob("*.jp*g"))[:2])
    for dst in (old, new):
        shutil.copy(scans / dst.name, dst)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    env = _env(isolated_env)
    first = _cli(["submit", str(folder), "--settle", "60"], env)
    assert first.returncode == 0, first.stderr
    assert "left 1 modified in the last 60 s for the next run" in first.stderr
    export = json.loads(_cli(["export", first.stdout.strip()], env).stdout)
    assert [d["path"] for d in export["documents"]] == [str(old)]
    os.utime(new, (time.time() - 120, time.time() - 120))
    second = _cli(["submit", str(folder)], {**env, "DIGITREADER_SETTLE_SECONDS": "60"})
    assert second.returncode == 0, second.stderr
    export = json.loads(_cli(["export", second.stdout.strip()], env).stdout)
    assert [d["path"] for d in export["documents"]] == [str(new)]


def test_help_explains_with_examples() -> None:
    for cmd in (
        ["submit"],
        ["status"],
        ["batches"],
        ["export"],
        ["models", "list"],
        ["models", "show"],
        ["db", "upgrade"],
    ):
        res = runner.invoke(app, [*cmd, "--help"])
        assert res.exit_code == 0 and "Example" in res.stdout, cmd


def test_model_and_database_errors(isolated_env: Path, scans: Path, tmp_path: Path) -> None:
    no_model = _cli(["submit", str(scans)], _env(isolated_env, DIGITREADER_MODEL_PATH=str(tmp_path / "x.onnx")))
    assert no_model.returncode == ExitCode.MODEL and no_model.stdout == ""
    nowhere = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    no_db = _cli(["submit", str(scans)], _env(isolated_env, DIGITREADER_DATABASE_URL=nowhere))
    assert no_db.returncode == ExitCode.DATABASE and "database" in no_db.stderr
    (tmp_path / "not-a-db.sqlite").write_text("garbage " * 100)
    corrupt = _cli(["status"], _env(isolated_env, DIGITREADER_DATABASE_URL=f"sqlite:///{tmp_path}/not-a-db.sqlite"))
    assert corrupt.returncode == ExitCode.DATABASE


@pytest.mark.slow
def test_subprocess_partial_and_all_failed(isolated_env: Path, scans: Path, tmp_path: Path) -> None:
    """A real run as a subprocess: bad files fail alone (exit 3); only bad files: exit 4."""
    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted(scans.glob("*.jp*g"))[0]
    (folder / good.name).write_bytes(good.read_bytes())
    expected = make_bad_files(folder / "bad", good)
    env = _env(isolated_env)
    res = _cli(["submit", str(folder)], env)
    assert res.returncode == ExitCode.PARTIAL, res.stderr
    batch = res.stdout.strip()
    assert batch.isdigit()
    st = json.loads(_cli(["status", batch, "--json"], env).stdout)
    assert {Path(f["path"]).name: f["code"] for f in st["failures"]} == expected
    # As text: one line per failure, `PATH: CODE: why`, the path said once (the stored message names
    # the file too), a page's error with its page.
    text = _cli(["status", batch], env).stdout.splitlines()
    lines = {Path(f["path"]).name: [ln for ln in text if f["path"] in ln] for f in st["failures"]}
    assert all(len(ls) == 1 and ls[0].count(str(folder)) == 1 for ls in lines.values()), text
    assert all(f": {code}: " in lines[name][0] for name, code in expected.items())
    assert ": empty_file: the file is empty" in lines["zero.png"][0]
    assert ": truncated: page 1: " in lines["truncated.png"][0]
    export = json.loads(_cli(["export", batch], env).stdout)
    ok = [d for d in export["documents"] if d["status"] != "failed"]
    assert len(ok) == 1 and ok[0]["pages"][0]["fields"]
    assert all(d["error"]["code"] == expected[Path(d["path"]).name] for d in export["documents"]
               if d["status"] == "failed")  # fmt: skip
    only_bad = _cli(["submit", "--force", str(folder / "bad")], env)  # --force: they failed before
    assert only_bad.returncode == ExitCode.INPUT  # every document failed
    # `batches` lists both, newest first, with their documents by status; --status keeps one kind.
    listed = json.loads(_cli(["batches", "--json"], env).stdout)
    n_bad = len(expected)
    assert [(b["batch"], b["status"], b["documents"]) for b in listed] == [
        (int(batch) + 1, "failed", {"total": n_bad, "failed": n_bad}),
        (int(batch), "partial", {"total": n_bad + 1, "failed": n_bad, ok[0]["status"]: 1}),
    ]
    assert listed[1]["pages"] == 1 and listed[0]["pages"] == 0
    partial = json.loads(_cli(["batches", "--status", "partial", "--json"], env).stdout)
    assert [b["batch"] for b in partial] == [int(batch)]
    table = _cli(["batches"], env).stdout.splitlines()
    assert table[0].split()[:3] == ["batch", "created", "status"] and len(table) == 3
    assert table[2].split()[0] == batch and "partial" in table[2].split()
    # JSON gives UTC with its offset; the text, this machine's local time (here UTC+5:30).
    created = dt.datetime.fromisoformat(listed[1]["created_at"])
    assert created.utcoffset() == dt.timedelta(0)
    local = (created + dt.timedelta(hours=5, minutes=30)).replace(tzinfo=None)
    assert local.strftime("%Y-%m-%d %H:%M") in _cli(["batches"], {**env, "TZ": "XYZ-5:30"}).stdout.splitlines()[2]
    shown = _cli(["status", batch], {**env, "TZ": "XYZ-5:30"}).stdout.splitlines()[0]
    assert f"(created {local:%Y-%m-%d %H:%M:%S}" in shown
    # The same folder again, as a hot folder's next run: the good scan was read; the bad files whose
    # bytes decide their failure are skipped, naming the batch they last failed in, not failed again
    # into every new batch; huge.png (too_large: a setting decides it) is read, and fails, again.
    again = _cli(["submit", str(folder)], env)
    said = " ".join(again.stderr.split())
    assert again.returncode == ExitCode.INPUT, again.stderr
    assert f"skipped {len(expected) - 1} that failed before (batch {int(batch) + 1}:" in said, said
    assert "skipped 1 already processed" in said
    st = json.loads(_cli(["status", again.stdout.strip(), "--json"], env).stdout)
    assert [(Path(f["path"]).name, f["code"]) for f in st["failures"]] == [("huge.png", "too_large")]


def _stored(db: Path, batch: int) -> tuple[int, str | None]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            n = con.execute(
                "select count(*) from documents where batch_id=? and status in ('done','needs_review')", (batch,)
            ).fetchone()[0]
            status = con.execute("select status from batches where id=?", (batch,)).fetchone()
            return int(n), status[0] if status else None
    except sqlite3.OperationalError:
        return 0, None


def _run_until_stored(args: list[str], env: dict[str, str], db: Path, at_least: int, sig: int) -> tuple[int, int]:
    """Start submit, wait until `at_least` documents are stored, send `sig`; (batch id, return code).

    The process is frozen (SIGSTOP) as soon as enough are stored, and the signal is sent while it is
    frozen, with documents still to store: however late this poll comes on a busy machine, the batch
    cannot finish first (before, a late poll let it finish: the Ctrl-C'd run exited 0)."""
    # SIGINT as from a terminal's Ctrl-C (a shell running us in the background may have ignored it).
    proc = subprocess.Popen([sys.executable, "-m", "digitreader", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    assert proc.stdout is not None
    batch = int(proc.stdout.readline().strip())  # printed as soon as the batch exists
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if _stored(db, batch)[0] >= at_least:
            proc.send_signal(signal.SIGSTOP)
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the batch finished before it could be interrupted"
    _wait_frozen(proc.pid)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
        total = con.execute("select count(*) from documents where batch_id=?", (batch,)).fetchone()[0]
    assert _stored(db, batch)[0] < total, "the batch stored every document before it could be interrupted"
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    proc.communicate(timeout=120)
    return batch, proc.returncode


def _wait_frozen(pid: int) -> None:
    """Until the process is stopped by SIGSTOP (state T in /proc/PID/stat): the signal takes effect
    asynchronously, and a commit finishing meanwhile would change what is counted."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] == "T":
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop")


def _processes_of(home: Path) -> list[int]:
    """The processes (pool processes, fork server, resource tracker) started with DIGITREADER_HOME=home."""
    mine = f"DIGITREADER_HOME={home}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and mine in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def _assert_no_process_left(home: Path) -> None:
    deadline = time.monotonic() + 20
    while _processes_of(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_of(home) == []


@pytest.mark.slow
def test_sigterm_stops_a_batch_as_ctrl_c_does(isolated_env: Path, scans: Path) -> None:
    """`kill`, `docker stop`, systemd and `timeout` send SIGTERM: the documents in hand are finished,
    the batch is marked interrupted, exit 143, and no pool process is left behind. Before, the process
    died at once, the batch stayed "running" and the pool's processes waited forever."""
    db = isolated_env / "digitreader.sqlite"
    env = _env(isolated_env, DIGITREADER_WORKERS="2", DIGITREADER_BATCH_SIZE="8")
    batch, rc = _run_until_stored(["submit", str(scans)], env, db, 1, signal.SIGTERM)
    assert rc == ExitCode.TERMINATED
    n, status = _stored(db, batch)
    assert status == "interrupted" and n >= 1
    _assert_no_process_left(isolated_env)
    done = _cli(["submit", str(scans)], env)
    assert done.returncode == 0 and done.stdout.strip() == str(batch) and "(resumed)" in done.stderr


_CTRL_C_AFTER_A_CALL = """
import importlib, signal, sys
target, match = sys.argv[1:3]
module, _, attr = target.partition(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
real = getattr(owner, name)
def after_call(*args, **kwargs):
    result = real(*args, **kwargs)
    print(f"returned from {name}", file=sys.stderr, flush=True)
    if not getattr(after_call, "done", False) and match in repr(args):
        after_call.done = True
        signal.raise_signal(signal.SIGINT)  # a Ctrl-C just as the call returns
    return result
setattr(owner, name, after_call)
from digitreader.cli.main import main
main(sys.argv[3:])
"""


@pytest.mark.parametrize(
    ("at", "match", "workers", "stored", "status"),
    [
        ("digitreader.pipeline.process:segment_document", "", 1, 0, "interrupted"),
        ("sqlalchemy.engine.default:DefaultDialect.do_execute", "INSERT INTO pages", 1, 1, "interrupted"),
        ("digitreader.db.store:finish_batch", "", 1, 6, "done"),
        ("multiprocessing.process:BaseProcess.start", "", 2, 0, "interrupted"),
        ("digitreader.cli.commands.submit:_Bar.started", "", 2, 0, "interrupted"),
    ],
    ids=[
        "reading-the-first-document",
        "storing-a-document",
        "closing-the-batch",
        "starting-a-pool-process",
        "showing-the-batch-id",
    ],
)
def test_ctrl_c_at_awkward_moments(
    isolated_env: Path, scans: Path, at: str, match: str, workers: int, stored: int, status: str
) -> None:
    """A Ctrl-C gives exit 130 and a batch the next run finishes, wherever it lands. Before:
    - just after the first document was read inline (one document, or DIGITREADER_WORKERS=1): "internal
      error", exit 1 (the pool's `except` clause named `cf.process`, a submodule nothing had imported);
    - just after a statement that writes a document's pages: SQLite's write lock stayed held (the
      statement, its RETURNING rows unread, was kept by the KeyboardInterrupt's traceback), and 30 s
      later the batch was left "running" ("database is locked");
    - as the finished batch was being closed: the closing update rolled back, the batch "running";
    - just after a segmentation process had started, before its pool noted it: the run never ended
      (the pool's shutdown waited for a process that would never be told to stop);
    - just after the batch id was shown: the batch was left "running".
    The document being stored when it comes is now stored first, and the Ctrl-C acted on after."""
    db = isolated_env / "digitreader.sqlite"
    env = _env(isolated_env, DIGITREADER_WORKERS=str(workers))
    cmd = [sys.executable, "-c", _CTRL_C_AFTER_A_CALL, at, match, "submit", str(scans)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)  # a run that hangs fails
    assert res.returncode == ExitCode.INTERRUPTED, res.stderr
    assert "internal error" not in res.stderr and "digitreader: interrupted" in res.stderr
    assert "could not mark batch" not in res.stderr, res.stderr
    batch = int(res.stdout.strip())
    assert _stored(db, batch) == (stored, status)
    _assert_no_process_left(isolated_env)
    again = _cli(["submit", str(scans)], env)
    assert again.returncode == 0 and _stored(db, batch) == (6, "done")
    assert (again.stdout.strip() == str(batch)) == (status == "interrupted")  # resumed, or a new empty batch


def test_ctrl_c_stops_a_long_document_read_inline_at_once(isolated_env: Path, scans: Path) -> None:
    """A single long document is read in the batch's own process: a Ctrl-C after its first page stops
    it there, not once the whole document is read (the pool's hold on submitting must not hold this)."""
    env = _env(isolated_env, DIGITREADER_WORKERS="1")
    at = "digitreader.pipeline.segment:segment_page"  # imported from there as each document is read
    cmd = [sys.executable, "-c", _CTRL_C_AFTER_A_CALL, at, "", "submit", str(scans / "multi")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == ExitCode.INTERRUPTED, res.stderr
    assert res.stderr.count("returned from segment_page") == 1  # of the file's 3 pages
    assert _stored(isolated_env / "digitreader.sqlite", int(res.stdout)) == (0, "interrupted")


@pytest.mark.slow
def test_a_killed_batch_leaves_no_pool_process(isolated_env: Path, scans: Path) -> None:
    """SIGKILL (the OOM killer, `kill -9`) gives the batch's process no chance to clean up: its pool's
    processes notice it is gone (`document.init_worker`'s watch) and end within a second or two.
    Before, they waited forever to hand in their results, holding their memory and the pipes."""
    db = isolated_env / "digitreader.sqlite"
    env = _env(isolated_env, DIGITREADER_WORKERS="2", DIGITREADER_BATCH_SIZE="8")
    batch, rc = _run_until_stored(["submit", str(scans)], env, db, 1, signal.SIGKILL)
    assert rc == -signal.SIGKILL and _stored(db, batch)[1] == "running"
    _assert_no_process_left(isolated_env)
    # `status` tells the clerk what the database cannot: no run holds the batch any more.
    status = json.loads(_cli(["status", "--json"], env).stdout)
    assert status["batch"] == batch and status["status"] == "interrupted"
    listed = json.loads(_cli(["batches", "--status", "interrupted", "--json"], env).stdout)
    assert [(b["batch"], b["status"]) for b in listed] == [(batch, "interrupted")]
    assert json.loads(_cli(["export", str(batch)], env).stdout)["status"] == "interrupted"


def _popen(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "digitreader", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("first_run_ends", ["finishes", "is killed"])
def test_a_second_run_of_the_same_submission_waits_for_the_first(
    isolated_env: Path, scans: Path, first_run_ends: str
) -> None:
    """The same `submit` started again while the first still runs (a clerk's run beside the cron job)
    waits for the first instead of reading every document a second time; when the first finishes,
    there is nothing left for it; when the first is killed, it finishes the batch. Before, both read
    every document (each stored twice, `attempts` 2)."""
    db = isolated_env / "digitreader.sqlite"
    env = _env(isolated_env, DIGITREADER_WORKERS="1", DIGITREADER_BATCH_SIZE="8")
    args = ["submit", str(scans)]
    first = _popen(args, env)
    second: subprocess.Popen[str] | None = None
    try:
        assert first.stdout is not None
        batch = int(first.stdout.readline().strip())  # registered, and holding its batch's lock
        first.send_signal(signal.SIGSTOP)  # still running, but reading nothing meanwhile
        assert json.loads(_cli(["status", "--json"], env).stdout)["status"] == "running"
        # A cron job that must not pile up behind a long run: exit 11 at once, touching nothing.
        busy = _cli([*args, "--if-busy", "exit"], env)
        assert busy.returncode == ExitCode.BUSY == 11 and busy.stdout.strip() == str(batch)
        assert f"batch {batch} is being read by another digitreader run of these files (process {first.pid})" in (
            busy.stderr)  # fmt: skip
        second = _popen(args, env)
        assert second.stderr is not None
        waiting = second.stderr.readline()
        assert f"batch {batch} is being read by another digitreader run of these files (process {first.pid})" in (
            waiting), waiting  # fmt: skip
        if first_run_ends == "finishes":
            first.send_signal(signal.SIGCONT)
            out, err = first.communicate(timeout=120)
            assert first.returncode == 0, err
        else:
            first.kill()
            first.wait(timeout=30)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
        assert out.strip() == str(batch)  # the id of the batch it waited for, alone on stdout
        assert f"batch {batch} (resumed after another run of these files): done" in err
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*), count(distinct sha256), sum(attempts) from documents").fetchone() == (
            6, 6, 6)  # fmt: skip
        assert con.execute("select count(*), min(status) from batches").fetchone() == (1, "done")
        assert con.execute("select count(*) from pages").fetchone()[0] == 8
    assert json.loads(_cli(["status", "--json"], env).stdout)["status"] == "done"


@pytest.mark.slow
def test_interrupted_batch_resumes_without_duplicates(isolated_env: Path, scans: Path) -> None:
    db = isolated_env / "digitreader.sqlite"
    # One segmentation process and tiny inference batches: documents are stored one by one.
    env = _env(isolated_env, DIGITREADER_WORKERS="1", DIGITREADER_BATCH_SIZE="8")
    args = ["submit", str(scans)]
    batch, rc = _run_until_stored(args, env, db, 1, signal.SIGINT)  # Ctrl-C
    assert rc == ExitCode.INTERRUPTED
    n1, status = _stored(db, batch)
    assert status == "interrupted" and 1 <= n1 < 6
    batch2, rc = _run_until_stored(args, env, db, n1 + 1, signal.SIGKILL)  # a crash: no clean-up at all
    assert batch2 == batch and rc == -signal.SIGKILL
    n2, status = _stored(db, batch)
    assert status == "running" and n2 > n1
    done = _cli(args, env)  # the same command again finishes the same batch
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(batch) and "(resumed)" in done.stderr
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*), count(distinct sha256) from documents").fetchone() == (6, 6)
        assert con.execute("select count(*) from documents where status not in ('done','needs_review')"
                           ).fetchone()[0] == 0  # fmt: skip
        assert con.execute("select count(*) from batches").fetchone()[0] == 1
        assert con.execute("select status from batches").fetchone()[0] == "done"
        assert con.execute("select sum(page_count) from documents").fetchone()[0] == 8
        assert con.execute("select count(*) from pages").fetchone()[0] == 8
    export = json.loads(_cli(["export", str(batch)], env).stdout)
    assert score(export)["digit_accuracy"] >= 0.85


@pytest.mark.slow
def test_a_hot_folder_submitted_again_while_the_last_run_reads_it(
    isolated_env: Path, scans: Path, tmp_path: Path, data_dir: Path
) -> None:
    """The folder submitted again, with a new scan in it, while the last run is still reading it: the
    new batch reads only the new scan and says it skipped those the other run is reading. Before,
    it read them all again."""
    from digitreader.synth import generate

    extra = tmp_path / "extra"
    generate(extra, pages=1, seed=43, fmt="png", kind="form", data_dir=data_dir)
    db = isolated_env / "digitreader.sqlite"
    env = _env(isolated_env, DIGITREADER_WORKERS="1", DIGITREADER_BATCH_SIZE="8")
    first = _popen(["submit", str(scans)], env)
    try:
        assert first.stdout is not None
        batch = int(first.stdout.readline().strip())
        first.send_signal(signal.SIGSTOP)
        second = _cli(["submit", str(scans), str(extra)], env)
        assert second.returncode == 0, second.stderr
        assert int(second.stdout) != batch
        assert f"skipped 6 being read by another run now (batch {batch})" in second.stderr
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*), count(distinct sha256), sum(attempts) from documents").fetchone() == (
            7, 7, 7)  # fmt: skip
        assert con.execute("select batch_id, count(*) from documents group by 1 order by 1").fetchall() == [
            (batch, 6), (int(second.stdout), 1)]  # fmt: skip
        assert {r[0] for r in con.execute("select status from batches")} == {"done"}


def test_models_list_and_db_upgrade(isolated_env: Path) -> None:
    env = _env(isolated_env)
    up = _cli(["db", "upgrade"], env)
    assert up.returncode == 0 and up.stdout.strip()
    assert _cli(["db", "current"], env).stdout.strip() == up.stdout.strip()
    models = json.loads(_cli(["models", "list", "--json"], env).stdout)
    active = [m for m in models if m["active"]]
    assert len(active) == 1 and active[0]["sha256"] and active[0]["error"] is None
    show = json.loads(_cli(["models", "show"], env).stdout)
    assert show["sha256"] == active[0]["sha256"] and show["version"] == active[0]["version"]
    # The string splitter's own model, checked against its manifest as it loads.
    manifest = Path(__file__).resolve().parents[1] / "digitreader" / "models" / "splitter" / "manifest.json"
    splitter = json.loads(manifest.read_text())
    assert show["splitter"]["setting"] == "shipped" and show["splitter"]["sha256"] == splitter["sha256"]
    show = json.loads(_cli(["models", "show"], {**env, "DIGITREADER_SPLITTER": "reader"}).stdout)
    assert show["splitter"]["sha256"] == show["sha256"]


def test_file_names_that_are_not_utf8(isolated_env: Path, scans: Path, tmp_path: Path) -> None:
    """A scan whose file name is not valid UTF-8 (a name from an old Windows share or a zip archive)
    is read like any other: stored and exported with each such byte as `\\xNN`, and `predict` prints
    its path as escapes that give the name back. It used to stop the whole batch with an internal error
    (the database refused the name), and `predict` crashed in OpenCV (segmentation fault)."""
    first, second = [p for p in sorted(scans.iterdir()) if p.suffix in (".png", ".jpg", ".jpeg")][:2]
    folder = tmp_path / "names"
    folder.mkdir()
    ok = folder / f"ok{first.suffix}"
    shutil.copyfile(first, ok)
    bad = os.fsencode(folder) + b"/scan-\xff\xfe" + os.fsencode(second.suffix)
    try:
        with open(bad, "wb") as fh:
            fh.write(second.read_bytes())
    except OSError:
        pytest.skip("this file system refuses file names that are not UTF-8")
    env = _env(isolated_env, PYTHONIOENCODING="utf-8:strict")  # a terminal that cannot print the raw bytes
    done = _cli(["submit", str(folder)], env)
    assert done.returncode == 0, done.stderr
    export = json.loads(_cli(["export", done.stdout.strip()], env).stdout)
    docs = sorted(export["documents"], key=lambda d: d["path"])
    assert [d["path"] for d in docs] == [str(ok), f"{folder}/scan-\\xff\\xfe{second.suffix}"]
    assert all(d["status"] in ("done", "needs_review") and d["pages"] for d in docs)
    pred = _cli(["predict", str(folder)], env)
    assert pred.returncode == 0, pred.stderr
    printed = [json.loads(line)["path"] for line in pred.stdout.splitlines()]
    assert sorted(p.encode("utf-8", "surrogateescape") for p in printed) == sorted([os.fsencode(ok), bad])


def test_an_error_raised_while_a_ctrl_c_is_handled_is_still_a_ctrl_c(
    isolated_env: Path, scans: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A KeyboardInterrupt that lands inside Python's threading code can leave a lock released twice,
    and the run ends on "RuntimeError: release unlocked lock" raised while the Ctrl-C was handled
    (once in 240 stops at random points of a pooled run): exit 130, "interrupted", not "internal error"
    (exit 1). An error with no Ctrl-C behind it stays an internal error."""
    from digitreader.cli.main import main
    from digitreader.pipeline import process

    def stopped(*args: Any, **kwargs: Any) -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("release unlocked lock")  # noqa: B904 - raised as threading raises it

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    for fake, code, said in ((stopped, ExitCode.INTERRUPTED, "interrupted"), (broken, ExitCode.INTERNAL, "internal")):
        monkeypatch.setattr(process, "process_batch", fake)
        with pytest.raises(SystemExit) as info:
            main(["submit", str(scans)])
        assert info.value.code == code
        assert said in capsys.readouterr().err


def test_a_stop_that_ctypes_turns_into_an_error_stops_the_run(
    isolated_env: Path, scans: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Ctrl-C (or SIGTERM) landing in the Python half of a pypdfium2 call (a page's `_as_parameter_`)
    reaches us as ctypes' `ArgumentError("argument 1: KeyboardInterrupt: ")`. Before, the PDF being read
    failed "internal" and the run went on with the rest of the batch: exit 3, the stop lost (once in 250
    SIGTERMs of `stress_stops.py`). Now the run stops: exit 130, the batch "interrupted", no document
    failed; the same command then finishes it."""
    import pypdfium2
    import pypdfium2.raw as pdfium_c

    from digitreader.cli.main import main
    from digitreader.db import Document, session_scope
    from digitreader.errors import raised_by_a_stop
    from digitreader.settings import get_settings

    class Stopped:  # what a page is to ctypes while the signal handler runs in its conversion
        @property
        def _as_parameter_(self) -> Any:
            raise KeyboardInterrupt

    with pytest.raises(ctypes.ArgumentError) as real:  # what ctypes really makes of it
        pdfium_c.FPDFPage_GetRotation(Stopped())
    assert raised_by_a_stop(real.value) and not raised_by_a_stop(ctypes.ArgumentError("argument 1: wrong type"))
    pdfs = sorted(scans.rglob("*.pdf"))
    assert pdfs, "the test scans hold a PDF"
    folder = isolated_env.parent / "with-pdf"
    folder.mkdir()
    shutil.copy(pdfs[0], folder / pdfs[0].name)
    other = sorted(p for p in scans.iterdir() if p.suffix in (".png", ".jpg", ".bmp"))[0]
    shutil.copy(other, folder / other.name)
    monkeypatch.setenv("DIGITREADER_WORKERS", "1")  # read in this process, where signals land
    get_settings.cache_clear()
    whole = pypdfium2.PdfPage.get_rotation
    monkeypatch.setattr(pypdfium2.PdfPage, "get_rotation", lambda page: pdfium_c.FPDFPage_GetRotation(Stopped()))
    with pytest.raises(SystemExit) as info:
        main(["submit", str(folder)])
    assert info.value.code == ExitCode.INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted" in err and "internal" not in err
    with session_scope(get_settings()) as s:
        assert not [d for d in s.query(Document) if d.status == "failed"]
    monkeypatch.setattr(pypdfium2.PdfPage, "get_rotation", whole)
    main(["submit", str(folder)])  # returns: exit 0
    with session_scope(get_settings()) as s:
        statuses = [d.status for d in s.query(Document)]
    assert len(statuses) == 2 and set(statuses) <= {"done", "needs_review"}, statuses


@pytest.mark.slow
def test_a_pool_process_killed_while_sending_its_result_fails_its_document_alone(
    isolated_env: Path, scans: Path, tmp_path: Path
) -> None:
    """A pool process killed halfway through sending its result back (the out-of-memory killer, a
    SIGKILL): the pool's reader waited forever for the rest of the message, and so did the batch.
    Now the pool is found stuck, ended, and the documents in it read again alone: the one that dies
    so again fails (`worker_lost`), the others are stored, and the run ends (exit 3)."""
    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted(f for f in scans.iterdir() if f.suffix in (".png", ".jpg", ".tif", ".pdf"))
    for f in good:
        shutil.copy(f, folder / f.name)
    (folder / "poison.jpg").write_bytes(good[0].read_bytes() + b"\0")
    env = _env(isolated_env, DIGITREADER_WORKERS="2", DIGITREADER_TEST_CRASH_ON="sending:poison*")
    res = _cli(["submit", str(folder)], env)  # 300 s at most: a hang fails, never blocks the tests
    assert res.returncode == ExitCode.PARTIAL, res.stderr
    with sqlite3.connect(isolated_env / "digitreader.sqlite") as con:
        rows = dict(con.execute("select path, coalesce(error_code, status) from documents").fetchall())
    assert {Path(p).name: c for p, c in rows.items()} == {
        "poison.jpg": "worker_lost",
        **{f.name: rows[str(folder / f.name)] for f in good},
    }
    assert all(rows[str(folder / f.name)] in ("done", "needs_review") for f in good)
