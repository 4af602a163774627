"""The `digitreader` command's entry point (`[project.scripts]`, `python -m digitreader`).

The CLI's imports (Typer, then every command module: a fifth of a second at each start) happen in
here, so that a Ctrl-C while they load ends the way a Ctrl-C ends any later moment of a command:
"digitreader: interrupted" and exit 130, not a traceback. Nothing is stored before they are loaded.
"""

from __future__ import annotations

import sys

from digitreader.errors import ExitCode


def main() -> None:
    try:
        try:
            from digitreader.cli.main import main as run
        except KeyboardInterrupt:
            sys.stderr.write("digitreader: interrupted\n")
            raise SystemExit(int(ExitCode.INTERRUPTED)) from None
        run()
    finally:
        _forget_handled_interrupts()


def _forget_handled_interrupts() -> None:
    """Keep the exit code the command chose after a Ctrl-C or SIGTERM it handled.

    CPython marks a KeyboardInterrupt that leaves code run from a string (`exec` or `eval` of source:
    `dataclasses` and `namedtuple` make their methods that way, while a module is first imported) as
    "unhandled", and never clears the mark when the program catches it; under `python -m`, the
    interpreter then ends by killing itself with SIGINT after its clean-up, whatever exit code the
    program gave. A SIGTERM landing as a stage was first imported made a run that printed "digitreader:
    terminated (SIGTERM)" and marked its batch interrupted die by SIGINT (exit -2, not 143): twice in
    about 400 SIGTERMs of `benchmarks/stress_stops.py`. Everything that reaches here was handled (an
    interrupt that escapes the command still is unhandled: CPython marks it again after this). The mark
    is `_Py_UnhandledKeyboardInterrupt` (CPython 3.8-3.11); elsewhere nothing is done."""
    try:
        import ctypes

        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 0
    except (AttributeError, OSError, ValueError):  # another Python, or built without the symbol
        pass
