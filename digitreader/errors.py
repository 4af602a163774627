"""Typed errors and the exit codes they map to.

Every error the user can cause or fix is a `DigitreaderError` with a stable `code` (a short slug
stored in the database and in exports) and an `exit_code`. One place (`digitreader.cli.main`)
turns them into process exit codes. The codes are documented in the README.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # a bug: please report it
    USAGE = 2  # bad arguments or options (also what Typer/Click use)
    PARTIAL = 3  # the batch ran, but some documents failed (see `digitreader status`)
    INPUT = 4  # the input could not be read (a single document, or every document failed)
    MODEL = 5  # the model is missing, corrupt or does not match its checksum
    DATABASE = 6  # the database is unreachable or its schema is wrong
    BROKER = 7  # the Celery broker is unreachable
    DEPENDENCY = 8  # an optional extra is not installed (e.g. training without torch)
    DATASET = 9  # a training/evaluation dataset is missing, truncated or fails its checksum
    NOT_FOUND = 10  # a batch, document, digit or model named on the command line does not exist
    BUSY = 11  # another run is reading these files now (`submit --if-busy exit`)
    INTERRUPTED = 130  # Ctrl-C
    TERMINATED = 143  # SIGTERM (`kill`, `docker stop`, systemd, `timeout`): stopped as Ctrl-C stops it


class DigitreaderError(Exception):
    """Base class. `code` is a stable slug; `hint` tells the user what to do."""

    exit_code: ExitCode = ExitCode.INTERNAL
    code: str = "error"

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(DigitreaderError):
    exit_code = ExitCode.USAGE
    code = "usage"


class ChangedMeanwhileError(UsageError):
    """The digit is no longer what the reviewer saw: someone corrected (or undid) it since the page was
    loaded. The correction is refused so as not to overwrite theirs; `current` is its label now (None:
    blank), `by` who made its latest correction (None: no correction left, an undo changed it)."""

    code = "changed"

    def __init__(self, digit_id: int, seen: int | None, current: int | None, by: str | None) -> None:
        shown = "x" if seen is None else str(seen)
        now = "x" if current is None else str(current)
        who = f"{by} changed it" if by else "it was changed (a correction undone)"
        super().__init__(
            f"digit {digit_id}: {who} since you saw it: it is now {now}, not {shown}; your label was not saved",
            hint="look at it again (its current label is shown) and label it again if it is still wrong",
        )
        self.digit_id = digit_id
        self.current = current
        self.by = by


class NotFoundError(DigitreaderError):
    exit_code = ExitCode.NOT_FOUND
    code = "not_found"


class MissingDependencyError(DigitreaderError):
    exit_code = ExitCode.DEPENDENCY
    code = "missing_dependency"

    def __init__(self, module: str, extra: str, what: str) -> None:
        super().__init__(
            f"{what} needs the Python package '{module}', which is not installed.",
            hint=f"install the extra: pip install 'digitreader[{extra}]'",
        )


class DatasetError(DigitreaderError):
    """A dataset file is missing, truncated, malformed or fails its checksum."""

    exit_code = ExitCode.DATASET
    code = "dataset"


class ModelError(DigitreaderError):
    """The model file is missing, corrupt, fails its SHA-256 or lacks required metadata."""

    exit_code = ExitCode.MODEL
    code = "model"


class BusyError(DigitreaderError):
    """Another run is reading the batch of these files, and the caller asked not to wait for it."""

    exit_code = ExitCode.BUSY
    code = "busy"

    def __init__(self, batch_id: int, holder: str | None = None) -> None:
        super().__init__(
            f"batch {batch_id} is being read by another digitreader run of these files"
            + (f" ({holder})" if holder else ""),
            hint=f"let it finish (digitreader status {batch_id}), or run the command again without --if-busy exit "
            "to wait for it",
        )
        self.batch_id = batch_id


class DatabaseError(DigitreaderError):
    exit_code = ExitCode.DATABASE
    code = "database"


class BrokerError(DigitreaderError):
    exit_code = ExitCode.BROKER
    code = "broker"
    #: The batch registered before the broker failed (the same command again queues what is missing).
    batch_id: int | None = None


class InputError(DigitreaderError):
    """A document (or one page of it) cannot be processed. Recorded per document; the batch goes on.

    Codes used: unreadable, truncated, unsupported, encrypted, too_large, empty_file, empty_page,
    blank_page, all_black, damaged, template_mismatch, timeout, worker_lost.
    """

    exit_code = ExitCode.INPUT
    code = "input"

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        page: int | None = None,
        code: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = ""
        if path is not None:
            where = f"{path}"
            if page is not None:
                where += f" (page {page})"
            where += ": "
        super().__init__(where + message, hint=hint, code=code)
        self.path = str(path) if path is not None else None
        self.page = page


def raised_by_a_stop(exc: BaseException) -> bool:
    """Whether `exc` is what a Ctrl-C (or SIGTERM, which the CLI turns into one) became on its way up,
    so that the run should stop rather than count it as an error:
    - ctypes turns an exception raised while it converts a call's arguments into
      `ctypes.ArgumentError("argument 1: KeyboardInterrupt: ")`, dropping the original: a stop that
      lands in the Python half of a pypdfium2 call (a PDF page's `_as_parameter_`) arrived as that
      error, and the PDF being read failed "internal" while the batch went on (exit 3, the stop lost;
      found by `benchmarks/stress_stops.py`);
    - a KeyboardInterrupt that lands inside Python's own threading code can leave a lock released twice
      ("RuntimeError: release unlocked lock"), with the KeyboardInterrupt as its context."""
    import ctypes

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        if isinstance(cause, ctypes.ArgumentError) and "KeyboardInterrupt" in str(cause):
            return True
        seen.add(id(cause))
        cause = cause.__context__
    return False
