"""The README's two quick-start commands, run for real (`make demo`, `make test`).

The install step is skipped (`make -o install`: the venv running these tests is the installed
one); everything else is exactly what the README's commands do. `make test` runs one small test
file (PYTEST_ADDOPTS) instead of recursing into the whole suite.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITREADER_") or k in (
        "DIGITREADER_DATA_DIR", "DIGITREADER_MODEL_PATH")}  # fmt: skip
    env["DIGITREADER_HOME"] = str(tmp_path / "home")  # isolated: never the user's database
    env.pop("MAKEFLAGS", None)
    return env


@pytest.mark.slow
def test_make_demo(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["make", "--no-print-directory", "-o", "install", "demo", f"VENV={VENV}"],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    truths = [json.loads(p.read_text()) for p in sorted((ROOT / "examples" / "scans").glob("*.truth.json"))]
    assert {Path(r["document"]).name for r in rows} == {t["file"] for t in truths}
    assert all(r["status"] in ("done", "needs_review") for r in rows)
    want = [f["value"] for t in truths for p in t["pages"] for f in p["fields"]]
    got = [r["value"] for r in rows]
    assert len(got) >= 0.9 * len(want)
    assert sum(v in got for v in want) >= 0.7 * len(want)  # most fields read exactly
    assert (tmp_path / "home" / "digitreader.sqlite").exists()
    # Running the demo again works too (it re-reads with --force and shows the results again).
    again = subprocess.run(
        ["make", "--no-print-directory", "-o", "install", "demo", f"VENV={VENV}"],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0 and len(list(csv.DictReader(io.StringIO(again.stdout)))) == len(rows)


def test_make_test(tmp_path: Path) -> None:
    env = _env(tmp_path)
    env["PYTEST_ADDOPTS"] = "tests/test_normalize.py -q -p no:cacheprovider"
    proc = subprocess.run(
        ["make", "--no-print-directory", "-o", "install-dev", "test", f"VENV={VENV}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "failed" not in proc.stdout
