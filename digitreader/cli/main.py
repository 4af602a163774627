"""`digitreader` entry point: the Typer app, logging setup, and the one place errors become exit codes.

Each command lives in its own module under `digitreader.cli.commands` and exposes
`register(app: typer.Typer) -> None`; modules are registered in name order. A command module
imports the libraries its work needs (the database, numpy, OpenCV, onnxruntime) inside the command,
so that `--help` loads none of them.
Data goes to stdout; logs, progress bars and summaries go to stderr.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import sys
from typing import Any

import typer
from typer.exceptions import TyperException

from digitreader import __version__
from digitreader.errors import DigitreaderError, ExitCode, raised_by_a_stop

log = logging.getLogger(__name__)

app = typer.Typer(
    name="digitreader",
    help=(
        "Read handwritten digits off scanned forms and bank cheques.\n\n"
        "Typical use:  digitreader submit scans/   then   digitreader export BATCH --format json\n\n"
        "Configuration comes from DIGITREADER_* environment variables (or a .env file); "
        "exit codes are listed in the README."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"digitreader {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging on stderr (-vv: debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors on stderr."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def reflow(text: str | None) -> str | None:
    """A command's help as the terminal should wrap it: the lines of each paragraph joined into one
    (docstrings are wrapped at the source's width, and Typer keeps those breaks, so an 80-column
    terminal showed every paragraph ragged). A line that starts indented (an example command) stays
    on a line of its own, and so does the line after it."""
    if not text:
        return text
    paragraphs = []
    for para in inspect.cleandoc(text).split("\n\n"):
        lines: list[str] = []
        keep_next = False
        for line in para.split("\n"):
            indented = line[:1].isspace()
            if lines and not indented and not keep_next:
                lines[-1] = f"{lines[-1]} {line.strip()}"
            else:
                lines.append(line.rstrip())
            keep_next = indented
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _reflow_help(typer_app: typer.Typer) -> None:
    for command in typer_app.registered_commands:
        command.help = reflow(command.help or inspect.getdoc(command.callback))
    for group in typer_app.registered_groups:
        sub = group.typer_instance
        if sub is not None:
            if isinstance(sub.info.help, str):
                sub.info.help = reflow(sub.info.help)
            _reflow_help(sub)


def _register_commands() -> None:
    from digitreader.cli import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(app)
    _reflow_help(app)


_register_commands()


def _never_fail_on_output() -> None:
    """Write what the terminal's encoding cannot as escapes (`\\udcff`) instead of failing: a file
    name that is not valid UTF-8 reaches Python with surrogates, and printing it (a path in
    `predict`'s or `export`'s output, an error message) raised UnicodeEncodeError under a UTF-8
    locale and lost the whole command's output."""
    import io

    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="backslashreplace")


_terminated = False


def _stop_on_sigterm() -> Any:
    """SIGTERM (`kill`, `docker stop`, systemd, `timeout`) stops a command the way Ctrl-C does: a
    document being written is committed first, the pool's processes are stopped, the batch is marked
    interrupted (a re-run completes it), exit 143. Before, the process died at once: the batch stayed
    "running" and the pool's processes were left behind. Commands that serve (`worker`, `review`) install their own.
    Returns the handler it replaced (None where none was installed), which `main` puts back."""
    import signal
    import threading

    global _terminated
    _terminated = False

    def stop(signum: int, frame: object) -> None:
        global _terminated
        _terminated = True
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, stop)


def _restore_sigterm(previous: Any) -> None:
    """Put back the SIGTERM handler `main` found: when the CLI runs inside another program (the
    tests call it in-process), its handler must not outlive the command. Under pytest it did: CI's
    time limit then sent SIGTERM to a test run that was waiting at exit, and got a KeyboardInterrupt
    traceback instead of the run's end."""
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _interrupted() -> None:
    said = sys.modules.get("digitreader.pipeline.decoder_messages")  # loaded only by a run that read pages
    if said is not None:
        said.give_back()  # a second Ctrl-C in a decoder block's clean-up left stderr redirected
    if _terminated:
        typer.echo("digitreader: terminated (SIGTERM)", err=True)
        sys.exit(int(ExitCode.TERMINATED))
    typer.echo("digitreader: interrupted", err=True)
    sys.exit(int(ExitCode.INTERRUPTED))


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; map errors to the documented exit codes."""
    _never_fail_on_output()
    previous = _stop_on_sigterm()
    try:
        _run(argv)
    finally:
        _restore_sigterm(previous)


def _run(argv: list[str] | None) -> None:
    try:
        rc = app(args=argv, standalone_mode=False)
        # Without standalone mode, Typer *returns* the code of typer.Exit and of Ctrl-C (130).
        if rc == ExitCode.INTERRUPTED:
            _interrupted()
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except DigitreaderError as exc:
        typer.echo(f"digitreader: error: {exc}", err=True)
        sys.exit(int(exc.exit_code))
    except KeyboardInterrupt:
        _interrupted()
    except typer.Exit as exc:  # raised by commands that choose their own exit code
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except typer.Abort:
        _interrupted()
    except TyperException as exc:  # usage errors: unknown option, bad value, missing argument
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            typer.echo(f"digitreader: error: {exc}", err=True)
        sys.exit(int(getattr(exc, "exit_code", ExitCode.USAGE) or ExitCode.USAGE))
    except Exception as exc:  # everything unexpected
        if raised_by_a_stop(exc):
            log.info("an error while stopping (the run stops as asked):", exc_info=True)
            _interrupted()
        log.exception("unexpected error")
        typer.echo(f"digitreader: internal error: {exc!r} (please report it)", err=True)
        sys.exit(int(ExitCode.INTERNAL))
