"""CLI plumbing: help, version, exit codes for usage errors."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from digitreader.cli.main import app
from digitreader.errors import ExitCode


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "version" in result.output


def test_version_is_json_on_stdout() -> None:
    proc = subprocess.run([sys.executable, "-m", "digitreader", "version"], capture_output=True, text=True, check=True)
    info = json.loads(proc.stdout)
    assert info["digitreader"] and info["onnxruntime"] is True


def test_unknown_option_is_usage_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "digitreader", "--no-such-flag"], capture_output=True, text=True)
    assert proc.returncode == ExitCode.USAGE
    assert proc.stdout == ""
