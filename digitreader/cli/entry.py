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
        from digitreader.cli.main import main as run
    except KeyboardInterrupt:
        sys.stderr.write("digitreader: interrupted\n")
        raise SystemExit(int(ExitCode.INTERRUPTED)) from None
    run()
