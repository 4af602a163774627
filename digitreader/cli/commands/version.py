"""`digitreader version`: version and installed flavour (for bug reports)."""

from __future__ import annotations

import importlib.util
import platform

import typer

from digitreader import __version__, cpu
from digitreader.cli.output import print_json


def version() -> None:
    """Print the version, Python, which optional parts are installed, and the CPU (JSON on stdout).

    "cpu" says how this CPU runs the int8 models: "vnni" (sums in 32 bits), "saturating" (an x86 CPU
    without VNNI: only int8 files with 7-bit weights are used, see the README's DIGITREADER_PRECISION),
    "other" (not x86) or "unknown". Paste it into bug reports and benchmark results.

    Example:  digitreader version
    """

    def has(mod: str) -> bool:
        return importlib.util.find_spec(mod) is not None

    print_json(
        {
            "digitreader": __version__,
            "python": platform.python_version(),
            "onnxruntime": has("onnxruntime"),
            "torch": has("torch"),
            "cpu": cpu.describe(),
        }
    )


def register(app: typer.Typer) -> None:
    app.command("version")(version)
