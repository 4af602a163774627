"""Bad settings and a database from a newer release, from the command line (real subprocesses): each
stops with its documented exit code and one line naming what is wrong, never a traceback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from digitreader.errors import ExitCode

ROOT = Path(__file__).resolve().parents[1]
SCAN = ROOT / "examples" / "scans" / "scan-0003-00001.png"


def _run(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DIGITREADER_") or k == "DIGITREADER_DATA_DIR"}
    base.update({"DIGITREADER_HOME": str(home), **env})
    return subprocess.run([sys.executable, "-m", "digitreader", *args], env=base, cwd=home,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("THRESHOLD", "1.5", "less than or equal to 1"),
        ("THRESHOLD", "nan", "finite number"),
        ("DOCUMENT_TIME_LIMIT", "inf", "finite number"),  # before: every document failed "internal"
        ("WORKERS", "two", "valid integer"),
        ("ROTATE_PAGES", "maybe", "valid boolean"),
    ],
)
def test_a_bad_setting_stops_every_command_with_exit_2_naming_it(
    tmp_path: Path, name: str, value: str, says: str
) -> None:
    """Before: pydantic's ValidationError as a traceback, exit 1 ("internal error")."""
    for args in (["status"], ["submit", str(SCAN)]):
        res = _run(args, tmp_path, **{f"DIGITREADER_{name}": value})
        assert res.returncode == ExitCode.USAGE, res.stderr
        assert res.stdout == "" and "Traceback" not in res.stderr
        assert f"bad setting: DIGITREADER_{name}='{value}': " in res.stderr and says in res.stderr


def test_an_empty_setting_means_its_default_and_a_bad_env_file_is_named(tmp_path: Path) -> None:
    """`DIGITREADER_MODEL_PATH=` (a compose file's empty value) was a path "" and crashed with
    IsADirectoryError; a .env that is not UTF-8 crashed with UnicodeDecodeError."""
    res = _run(["models", "show"], tmp_path, DIGITREADER_MODEL_PATH="", DIGITREADER_WORKERS="")
    assert res.returncode == 0, res.stderr
    assert '"active": true' in res.stdout
    (tmp_path / ".env").write_bytes(b"DIGITREADER_REVIEWER=J\xf6rg\n")
    res = _run(["status"], tmp_path)
    assert res.returncode == ExitCode.USAGE and "Traceback" not in res.stderr
    assert "cannot read the settings file .env: it is not UTF-8" in res.stderr


def test_a_model_path_that_is_a_folder_is_a_model_error(tmp_path: Path) -> None:
    """Before: IsADirectoryError, exit 1, from `models show`, `models list` and `submit`."""
    folder = tmp_path / "models"
    folder.mkdir()
    for args in (["models", "show"], ["submit", str(SCAN)]):
        res = _run(args, tmp_path, DIGITREADER_MODEL_PATH=str(folder))
        assert res.returncode == ExitCode.MODEL and "Traceback" not in res.stderr
        assert f"the model is not a file: {folder}" in res.stderr
    res = _run(["models", "list"], tmp_path, DIGITREADER_MODEL_PATH=str(folder))
    assert res.returncode == 0 and "ERROR: not a file" in res.stdout


def test_a_splitter_file_that_is_not_there_stops_submit(tmp_path: Path) -> None:
    """Before: a warning, twice, and every string field read without the splitter's second opinion."""
    res = _run(["submit", str(SCAN)], tmp_path, DIGITREADER_SPLITTER=str(tmp_path / "gone.onnx"))
    assert res.returncode == ExitCode.MODEL and res.stdout == ""
    assert f"DIGITREADER_SPLITTER={tmp_path / 'gone.onnx'}: no such model file" in res.stderr


def test_a_database_from_a_newer_release_is_a_database_error(tmp_path: Path) -> None:
    """A schema revision this code does not know: Alembic's CommandError as two tracebacks, exit 1, and
    `db current` advised `db upgrade`, which crashed. Now exit 6 saying the database is newer."""
    assert _run(["db", "upgrade"], tmp_path).returncode == 0
    db = sqlite3.connect(tmp_path / "digitreader.sqlite")
    db.execute("UPDATE alembic_version SET version_num = '9999'")
    db.commit()
    db.close()
    for args in (["status"], ["export", "1"], ["db", "upgrade"], ["db", "current"], ["submit", str(SCAN)]):
        res = _run(args, tmp_path)
        assert res.returncode == ExitCode.DATABASE, (args, res.stderr)
        assert "Traceback" not in res.stderr, args
        assert "the database schema is at revision 9999, newer than this digitreader knows" in res.stderr, args


def test_an_unusable_sqlite_file_is_not_blamed_on_a_server(tmp_path: Path) -> None:
    """A SQLite file this user cannot write (WAL mode needs it even to read) was reported with the hint
    "check that the server is running"."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError

    from digitreader.db.migrate import _unreachable

    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    exc = DBAPIError("SELECT 1", None, sqlite3.OperationalError("attempt to write a readonly database"))
    err = _unreachable(engine, exc)
    assert err.exit_code == ExitCode.DATABASE and "readonly" in err.message
    assert err.hint is not None and "can be written by this user" in err.hint and "server" not in err.hint
    pg = _unreachable(create_engine("postgresql+psycopg://u@127.0.0.1:1/x"), exc)
    assert pg.hint is not None and "server is running" in pg.hint


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://:s3cret@127.0.0.1:6379/abc", "the database number 'abc' is not a number"),
        ("redis://u:s3cret@127.0.0.1:notaport/14", "the port is not a number"),
        ("http://127.0.0.1:6379/14", "needs a Redis broker"),
    ],
)
def test_a_malformed_broker_url_is_a_bad_setting_and_nothing_is_registered(tmp_path: Path, url: str, says: str) -> None:
    """Before: an internal error (ValueError, KeyError 'No such transport'), exit 1, after the batch was
    registered: it stayed "running" with its documents pending. The password is never shown."""
    res = _run(["submit", str(SCAN)], tmp_path, DIGITREADER_BROKER_URL=url)
    assert res.returncode == ExitCode.USAGE and res.stdout == "" and "Traceback" not in res.stderr
    assert "bad setting: DIGITREADER_BROKER_URL=" in res.stderr and says in res.stderr
    assert "s3cret" not in res.stderr
    assert _run(["status"], tmp_path).returncode == ExitCode.NOT_FOUND  # no batch was made


def test_a_broker_that_is_down_at_submit_still_gives_the_batch_id(tmp_path: Path) -> None:
    """The batch is registered before its documents are queued: with the broker down, submit exits 7
    and prints the batch's id alone on stdout as on success (before: nothing), and the same command
    again resumes that batch."""
    down = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    first = _run(["submit", str(SCAN)], tmp_path, DIGITREADER_BROKER_URL=down)
    assert first.returncode == ExitCode.BROKER and "cannot queue documents on the broker" in first.stderr
    assert first.stdout.strip().isdigit() and first.stdout.count("\n") == 1
    again = _run(["submit", str(SCAN)], tmp_path, DIGITREADER_BROKER_URL=down)
    assert again.returncode == ExitCode.BROKER and again.stdout == first.stdout
