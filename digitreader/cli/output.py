"""Shared CLI helpers: stderr console, progress bars, JSON on stdout."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Logs, progress and summaries: stderr. stdout is for data only.
err = Console(stderr=True)


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


def warning_line(path: str, warnings: list[str] | tuple[str, ...]) -> str:
    """A document read from damaged image data in one line: `PATH: damaged image data, read as far as
    it decodes: FIRST MESSAGE (and N more)`."""
    more = f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else ""
    return f"{path}: damaged image data, read as far as it decodes: {warnings[0] if warnings else ''}{more}"


def failure_line(path: str, code: str | None, message: str | None) -> str:
    """A failed document in one line, `PATH: CODE: MESSAGE`, its message without the path it starts
    with: the loaders' errors name their file ("a.png: the file is empty (0 bytes)"), and one of a
    page keeps the page ("a.pdf (page 2): ..." -> "a.pdf: truncated: page 2: ...")."""
    msg = message or ""
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
