"""What image decoders say about a damaged file while they read a page, caught as that page's warnings.

The C libraries under OpenCV, Pillow and pdfium write their complaints straight to the process's
standard error, file descriptor 2: libjpeg's "Corrupt JPEG data: premature end of data segment"
(the rest of the page is then grey or black, and its digits are gone), libtiff's "Fax4Decode: Bad
code word at line 151 of strip 5", libpng's "libpng error: bad adaptive filter value". No Python
redirection reaches them, so without this they came out as anonymous lines among the progress bar's,
naming no file, and the document was stored as if its scan were whole.

`caught()` points descriptor 2 at a scratch file while a page decodes and hands back what was
written, one message per distinct line (at most `MOST` a page, each cut to `LONGEST` characters);
the load stage's caller (`document.segment_document`) keeps them as the document's warnings ("page
1: Corrupt JPEG data: ..."), which are stored, exported and shown by `submit` and `status`. Python warnings
raised meanwhile (Pillow's "Corrupt EXIF data") are caught the same way.

Descriptor 2 is the process's: whatever another thread writes to it during a decode is caught too.
The CLI's progress bar, redrawn from a thread of its own, therefore draws on a duplicate of it
(`cli.output.bar_console`); nothing else in a process that decodes writes to stderr from another
thread.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator

#: Messages kept for one page; more are counted ("... and 40 more").
MOST = 5
#: A message is cut to this many characters.
LONGEST = 300

_scratch: dict[int, int] = {}  # process id -> descriptor of its scratch file (deleted from its folder)
_lock = threading.Lock()
_held: list[int] = []  # while a block has descriptor 2: a copy of what it was (for `give_back`)


def _scratch_file() -> int | None:
    """This process's scratch file (made once; a forked child makes its own), or None."""
    pid = os.getpid()
    fd = _scratch.get(pid)
    if fd is None:
        try:
            fd, name = tempfile.mkstemp(prefix="digitreader-stderr-")
            os.unlink(name)
        except OSError:
            return None
        _scratch.clear()  # a parent's, inherited by fork: left open, as the parent's other files are
        _scratch[pid] = fd
    return fd


def _tidy(lines: list[str]) -> list[str]:
    """Distinct non-empty lines, in order, at most `MOST` of them (then a count of the rest)."""
    seen: list[str] = []
    for line in lines:
        text = " ".join(line.split())
        if text and text not in seen:
            seen.append(text[:LONGEST])
    if len(seen) > MOST:
        seen = seen[:MOST] + [f"... and {len(seen) - MOST} more"]
    return seen


@contextlib.contextmanager
def caught() -> Iterator[list[str]]:
    """Catch what decoders write to standard error (and Python warnings) inside the block.

    Yields a list that is filled, when the block ends, with the messages (see the module's doc). Where
    descriptor 2 cannot be redirected (closed, or no scratch file), the block runs as it would without
    this and the list stays empty. One block at a time in a process (others wait): descriptor 2 is the
    process's own.
    """
    heard: list[str] = []
    with _lock:
        fd = _scratch_file()
        try:
            saved = os.dup(2) if fd is not None else None
        except OSError:
            saved = None
        if fd is None or saved is None:
            yield heard
            return
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        with contextlib.suppress(AttributeError, OSError, ValueError):
            sys.stderr.flush()  # what Python holds for stderr goes out now, not into the scratch file
        raised: list[warnings.WarningMessage] = []
        try:
            _held.append(saved)  # first: a stop between these two lines still finds 2 to give back
            os.dup2(fd, 2)
            with warnings.catch_warnings(record=True) as raised_here:
                warnings.simplefilter("always")
                try:
                    yield heard
                finally:
                    raised = list(raised_here)
        finally:
            give_back()
            size = os.lseek(fd, 0, os.SEEK_END)
            data = os.pread(fd, min(size, 1 << 20), 0) if size else b""
            lines = data.decode("utf-8", "replace").splitlines()
            for w in raised:
                if not issubclass(w.category, DeprecationWarning):
                    lines.append(f"{_origin(w.filename)}{w.message}")
            heard.extend(_tidy(lines))


def give_back() -> None:
    """Put descriptor 2 back where a `caught` block found it, if the block has not (idempotent). The
    block does so as it ends; a second Ctrl-C that lands in that clean-up skips it, so the CLI calls
    this before it says "interrupted" (else that line, and all after it, went into the scratch file)."""
    while _held:
        saved = _held[-1]
        os.dup2(saved, 2)
        _held.pop()  # after the dup2: a stop between them leaves `saved` to put back again
        with contextlib.suppress(OSError):
            os.close(saved)


def _origin(filename: str) -> str:
    """Who raised a Python warning, as a prefix: "Pillow: " for PIL's modules."""
    return "Pillow: " if f"{os.sep}PIL{os.sep}" in filename else ""
