"""Shared CLI helpers: stderr console, progress bars, JSON on stdout."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from digitreader.errors import UsageError
from digitreader.text import shown

#: Logs, progress and summaries: stderr. stdout is for data only. Never wrapped (`soft_wrap`): where
#: stderr is no terminal (cron, a log file) Rich would break lines at 80 columns, and a line per
#: document ("failed PATH: code: message") must stay one line, for grep as for people.
err = Console(stderr=True, soft_wrap=True)


_bar_console: Console | None = None


def bar_console() -> Console:
    """Where live progress bars draw: on a terminal, a console of its own on a duplicate of the
    process's standard error. A bar is redrawn from a thread of its own, and while a page decodes in
    this process descriptor 2 is pointed at a scratch file to catch what the image decoders say
    (`pipeline.decoder_messages`); on its own descriptor the bar is neither caught nor lost. Elsewhere
    (stderr not a terminal, or replaced, as by tests): `err`."""
    global _bar_console
    if _bar_console is not None:
        return _bar_console
    try:
        real = err.is_terminal and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # replaced by an object without a descriptor
        real = False
    if not real:
        return err
    try:
        stream = open(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8", errors="replace")  # noqa: SIM115
    except OSError:
        return err
    _bar_console = Console(file=stream, force_terminal=True)
    return _bar_console


def progress(transient: bool = False, disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err if disable else bar_console(),
        transient=transient,
        disable=disable,
    )


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _mode_for(path: Path) -> int:
    """The mode `output_file` gives `path`: an existing file's own, else what the umask leaves of
    0666 (what `> FILE` gives it). The umask can only be read by setting it: no thread of these
    commands creates files meanwhile."""
    try:
        st = path.stat()
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass  # a new file
    mask = os.umask(0o077)
    os.umask(mask)
    return 0o666 & ~mask


#: `-o -`: standard output.
STDOUT = "-"


def _in_proc(path: Path) -> tuple[bool, int | None]:
    """Whether `path`, or a link on the way to what it names, lies in /proc, and the descriptor of this
    process it names if it does: `/dev/stdout` (a link to /proc/self/fd/1), `/dev/fd/3`,
    `/proc/self/fd/1` name a descriptor already open (a terminal, a pipe, or a file the shell opened,
    maybe to append), which is written as the shell writes `> /dev/stdout`: through a duplicate of it,
    never by replacing a file of that name."""
    p = Path(os.path.abspath(path))
    for _ in range(40):  # the kernel's limit on links followed
        p = Path(os.path.realpath(p.parent), p.name)  # the folders on the way, links resolved
        if p.parts[1:2] == ("proc",):
            mine = len(p.parts) >= 5 and p.parts[2] == str(os.getpid()) and p.parts[-2] == "fd"
            return True, int(p.name) if mine and p.name.isdigit() else None
        if not p.is_symlink():
            return False, None
        p = Path(p.parent, os.readlink(p))
    return False, None


@contextlib.contextmanager
def output_file(path: Path) -> Iterator[TextIO]:
    """A file the user named (`export -o`, `predict -o`), written whole or not at all: the text goes
    to a temporary file beside it, which replaces it once the block ends without an error, so a reader
    never sees half a file and a command that fails leaves the old one. Folders on the way are made. A
    new file gets the mode the umask gives, a file replaced keeps its mode. A folder named, or a place
    that cannot be written, is a `UsageError` (exit 2) that says why, never a traceback.

    `-` is standard output. A symbolic link is written through: the file it points to is replaced (in
    its own folder), the link kept. What is not a regular file (a terminal or other device, a FIFO, a
    socket) is opened and written as it is, as `> PATH` does, never replaced; `/dev/stdout`,
    `/dev/fd/N` are written through the descriptor they name, as a shell does."""
    if str(path) == STDOUT:
        yield sys.stdout
        sys.stdout.flush()
        return
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name")
    tmp: str | None = None
    try:
        proc, named = _in_proc(path)
        if named is not None:  # a descriptor of this process: written where it stands (appended, if so opened)
            sys.stdout.flush()
            with os.fdopen(os.dup(named), "w", encoding="utf-8", newline="") as fh:
                yield fh
            return
        try:
            special = proc or not stat.S_ISREG(path.stat().st_mode)
        except FileNotFoundError:  # a new file, or a link to one
            special = False
        if special:  # a device, a FIFO, a socket: opened and written, as `> PATH` does
            with open(path, "w", encoding="utf-8", newline="") as fh:
                yield fh
            return
        real = Path(os.path.realpath(path))  # a link's file is replaced, the link kept
        real.parent.mkdir(parents=True, exist_ok=True)
        mode = _mode_for(real)
        fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            os.fchmod(fd, mode)  # mkstemp's is 0600, whatever the umask
            yield fh
        os.replace(tmp, real)
        tmp = None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:  # failed or interrupted: no temporary file left behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def writable_folder(path: Path) -> None:
    """Make the folder a command writes into (`synth`, `train --out`), or say why it cannot be written
    (`UsageError`, exit 2) before any work is done, rather than fail later with a traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, "Permission denied")
    except OSError as exc:
        raise UsageError(f"cannot write to {path}: {exc.strerror or exc}") from exc


def warning_line(path: str, warnings: list[str] | tuple[str, ...]) -> str:
    """A document read from damaged image data in one line: `PATH: damaged image data, read as far as
    it decodes: FIRST MESSAGE (and N more)`."""
    more = f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else ""
    first = shown(warnings[0]) if warnings else ""
    return f"{shown(path)}: damaged image data, read as far as it decodes: {first}{more}"


def failure_line(path: str, code: str | None, message: str | None) -> str:
    """A failed document in one line, `PATH: CODE: MESSAGE`, its message without the path it starts
    with: the loaders' errors name their file ("a.png: the file is empty (0 bytes)"), and one of a
    page keeps the page ("a.pdf (page 2): ..." -> "a.pdf: truncated: page 2: ..."). A name that is not
    valid UTF-8 is shown with `\\xNN` escapes, a control character escaped too (`text.shown`)."""
    path, msg = shown(path), shown(message or "")
    if msg.startswith(path):
        rest = msg[len(path) :]
        if rest.startswith(": "):
            msg = rest[2:]
        elif rest.startswith(" (page "):
            page, sep, tail = rest[2:].partition("): ")
            msg = f"{page}: {tail}" if sep else msg
    return f"{path}: {code}: {msg}" if msg else f"{path}: {code}"


def local_time(iso: str | None, *, seconds: bool = False) -> str:
    """A time from the JSON (ISO 8601, UTC) as people read it: this machine's local time,
    "2026-12-06 17:15" (with seconds: "2026-12-06 17:15:47"). The JSON keeps UTC with its offset."""
    if not iso:
        return ""
    t = dt.datetime.fromisoformat(iso)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
