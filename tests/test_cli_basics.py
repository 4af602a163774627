"""CLI plumbing: help, version, exit codes for usage errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from digitreader.cli.main import app
from digitreader.errors import ExitCode


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "version" in result.output


def test_help_paragraphs_wrap_at_the_terminal_not_at_the_source() -> None:
    """A docstring's line breaks are the source's: the help shows each paragraph as one text that the
    terminal wraps, keeps indented example lines as they are, and shows brackets as written."""
    wide = {"COLUMNS": "250", "TERMINAL_WIDTH": "250"}
    out = CliRunner().invoke(app, ["submit", "--help"], env=wide).output
    # In the docstring "digits," ends a line and "flagged" starts the next.
    assert "(documents, pages, digits, flagged, failed, seconds) go to stderr" in out
    assert "exit 7: broker unreachable); --wait follows it to the end" in out
    out = CliRunner().invoke(app, ["predict", "--help"], env=wide).output
    assert "[digit, probability]" in " ".join(out.split())  # not eaten as rich markup
    lines = [line.strip() for line in out.splitlines()]
    assert "Examples:" in lines and "digitreader predict my_digits/ --format csv" in lines
    for args in (["--help"], ["review", "--help"], ["models", "promote", "--help"], ["db", "--help"]):
        assert CliRunner().invoke(app, args, env=wide).exit_code == 0


def test_reflow_joins_paragraph_lines_and_keeps_indented_ones() -> None:
    from digitreader.cli.main import reflow

    text = "First line\n    of one.\n\n    Second, wrapped\n    here.\n\n"
    text += "    Examples:\n      cmd a\n      cmd b\n    after"
    assert reflow(text) == "First line of one.\n\nSecond, wrapped here.\n\nExamples:\n  cmd a\n  cmd b\nafter"
    assert reflow(None) is None and reflow("") == ""


def test_help_loads_no_heavy_library() -> None:
    """`digitreader --help` (and every command's --help) imports each command's module but none of the
    libraries its work needs: the database, OpenCV, numpy and onnxruntime are imported when a command
    runs, so the help shows in a third of a second instead of most of one."""
    code = (
        "import sys\n"
        "from digitreader.cli.main import main\n"
        "try:\n"
        "    main(['submit', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('sqlalchemy', 'alembic', 'numpy', 'cv2', 'onnxruntime', 'PIL', 'celery', 'redis', 'torch')\n"
        "print('imported:', ','.join(m for m in heavy if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "imported: ", proc.stdout.splitlines()[-1]


def test_the_progress_bar_moves_with_a_long_document_s_parts_and_counts_pages() -> None:
    from digitreader.cli.commands.submit import _Bar
    from digitreader.pipeline.report import DocumentReport

    bar = _Bar(quiet=True)
    bar.started(7, todo=2, total=2)
    assert bar.task is not None
    task = bar.bar.tasks[0]
    bar.part_done(11, 1, 3)
    bar.part_done(11, 2, 3)
    assert abs(task.completed - 0.5) < 1e-9  # 2 of 3 parts cut: half of the document (storing is last)
    assert task.description == "batch 7: 0 pages"
    bar.document_done(DocumentReport(11, "long.pdf", "needs_review", pages=12, digits=300, flagged=4))
    bar.document_done(DocumentReport(12, "one.png", "failed", pages=1, error_code="unreadable"))
    assert abs(task.completed - 2.0) < 1e-9 and not bar.shown
    # The label counts what the documents held: pages read, digits flagged, documents failed.
    assert task.description == "batch 7: 13 pages, 4 flagged, 1 failed"
    bar.stop()


def test_version_is_json_on_stdout() -> None:
    proc = subprocess.run([sys.executable, "-m", "digitreader", "version"], capture_output=True, text=True, check=True)
    info = json.loads(proc.stdout)
    assert info["digitreader"] and info["onnxruntime"] is True


def test_unknown_option_is_usage_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "digitreader", "--no-such-flag"], capture_output=True, text=True)
    assert proc.returncode == ExitCode.USAGE
    assert proc.stdout == ""


def test_verbose_logs_say_what_was_migrated_without_alembic_s_chatter(tmp_path: Path) -> None:
    """With -v the first use of a new database logs one line of ours ("database upgraded from None to
    ..."), not Alembic's announcements of its plugins and context (nine lines per process before);
    with -vv Alembic's lines are there too."""
    env = {**os.environ, "DIGITREADER_HOME": str(tmp_path / "v")}
    env.pop("DIGITREADER_DATABASE_URL", None)
    info = subprocess.run(
        [sys.executable, "-m", "digitreader", "-v", "status"], env=env, capture_output=True, text=True
    )
    assert "database upgraded from None to" in info.stderr
    assert "alembic" not in info.stderr, info.stderr
    env["DIGITREADER_HOME"] = str(tmp_path / "vv")
    debug = subprocess.run(
        [sys.executable, "-m", "digitreader", "-vv", "status"], env=env, capture_output=True, text=True
    )
    assert "alembic.runtime.migration" in debug.stderr and "Running upgrade" in debug.stderr


def test_failure_line_says_the_path_once() -> None:
    from digitreader.cli.output import failure_line

    assert failure_line("a.png", "empty_file", "a.png: the file is empty (0 bytes)") == (
        "a.png: empty_file: the file is empty (0 bytes)"
    )
    assert failure_line("s/b.pdf", "truncated", "s/b.pdf (page 2): cannot decode the image") == (
        "s/b.pdf: truncated: page 2: cannot decode the image"
    )
    # A message that does not start with the path, or none, is kept as it is.
    assert failure_line("c.png", "unreadable", "Permission denied") == "c.png: unreadable: Permission denied"
    assert failure_line("c.png", "timeout", None) == "c.png: timeout"
    assert failure_line("c.png", "x", "c.png.bak: other file") == "c.png: x: c.png.bak: other file"


_LOADED = """
import sys
from digitreader.cli.main import main
sys.argv = ["digitreader", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
heavy = ("alembic", "numpy", "cv2", "onnxruntime", "celery")
print("loaded:", *(m for m in heavy if m in sys.modules), file=sys.stderr)
"""


def test_reading_commands_start_light(tmp_path: Path) -> None:
    """`status`, `batches` and `export` only read the database: once it exists at the schema's head they
    load neither Alembic nor numpy, OpenCV, onnxruntime or Celery (each is a part of a second of a
    command's start)."""
    env = {**os.environ, "DIGITREADER_HOME": str(tmp_path / "home")}
    env.pop("DIGITREADER_DATABASE_URL", None)
    env.pop("DIGITREADER_BROKER_URL", None)

    def loaded(*args: str) -> str:
        res = subprocess.run([sys.executable, "-c", _LOADED, *args], env=env, capture_output=True, text=True)
        return [ln for ln in res.stderr.splitlines() if ln.startswith("loaded:")][-1].removeprefix("loaded:").strip()

    assert "alembic" in loaded("batches")  # the first command makes the database
    from digitreader.db import session_scope, store
    from digitreader.db.session import get_engine
    from digitreader.settings import Settings

    engine = get_engine(Settings(home=tmp_path / "home", _env_file=None))  # type: ignore[call-arg]
    with session_scope(engine=engine) as s:  # a batch to show and export
        store.register_batch(s, [store.InputFile("/scans/a.png", "a" * 64, 1)])
    for args in (["status"], ["batches"], ["batches", "--json"], ["export", "1"]):
        assert loaded(*args) == "", args


_CTRL_C_WHILE_IMPORTING = """
import builtins, os, runpy, signal, sys
real = builtins.__import__
def hook(name, *args, **kw):
    if name == "typer":  # the CLI's first import of its own: a Ctrl-C lands right there
        builtins.__import__ = real
        os.kill(os.getpid(), signal.SIGINT)
    return real(name, *args, **kw)
builtins.__import__ = hook
sys.argv = ["digitreader", "--help"]
runpy.run_module("digitreader", run_name="__main__")
"""


def test_a_ctrl_c_while_the_cli_loads_is_a_ctrl_c_not_a_traceback() -> None:
    """`python -m digitreader` (and the installed command, the same entry point) stopped by a Ctrl-C
    while its modules load: exit 130 and one line, as a Ctrl-C at any later moment ends."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    res = subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_IMPORTING], capture_output=True, text=True, env=env,
                         timeout=120)  # fmt: skip
    assert res.returncode == ExitCode.INTERRUPTED, res.stderr
    assert res.stderr == "digitreader: interrupted\n" and res.stdout == ""
    import tomllib

    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["digitreader"] == "digitreader.cli.entry:main"


_HANDLED_CTRL_C_IN_SOURCE_RUN_FROM_A_STRING = """
import sys
import digitreader.cli.main as cli
from digitreader.cli import entry

command = cli.main
def main(argv=None):
    try:
        command(argv)
    finally:
        # A Ctrl-C that landed in code run from a string (dataclasses and namedtuple make their methods
        # with exec() as a module is first imported: the last such import of the run), caught as the
        # CLI catches every stop. (Any later exec of a string would clear CPython's mark itself.)
        try:
            exec("raise KeyboardInterrupt")
        except KeyboardInterrupt:
            pass
cli.main = main
sys.argv = ["digitreader", "version"]
entry.main()
"""


def test_a_handled_ctrl_c_keeps_the_exit_code_under_python_dash_m(tmp_path: Path) -> None:
    """CPython marks a KeyboardInterrupt out of `exec` of a string as unhandled and never clears it;
    under `python -m` it then killed itself with SIGINT at exit, whatever code the program chose (a
    SIGTERMed run that said "terminated" died by SIGINT, exit -2, twice in ~400 stops). The entry
    point clears the mark: the command's own exit code (0 here) stands."""
    (tmp_path / "handled_stop.py").write_text(_HANDLED_CTRL_C_IN_SOURCE_RUN_FROM_A_STRING)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1])])}
    res = subprocess.run([sys.executable, "-m", "handled_stop"], capture_output=True, text=True, env=env, timeout=120,
                         cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, (res.returncode, res.stderr)
    assert res.stdout.strip()  # `version` printed its line
