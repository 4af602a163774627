"""`digitreader version`: version and installed flavour (for bug reports)."""

from __future__ import annotations

import importlib.util
import platform

import typer

from digitreader import __version__
from digitreader.cli.output import print_json


def version() -> None:
    """Print the version, Python, and which optional parts are installed (JSON on stdout)."""

    def has(mod: str) -> bool:
        return importlib.util.find_spec(mod) is not None

    print_json(
        {
            "digitreader": __version__,
            "python": platform.python_version(),
            "onnxruntime": has("onnxruntime"),
            "torch": has("torch"),
        }
    )


def register(app: typer.Typer) -> None:
    app.command("version")(version)
