"""`digitreader predict` on real MNIST test digits written out as image files, and on bad files."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from digitreader.cli.main import app
from digitreader.errors import ExitCode
from training.data import load_mnist

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digit_files(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """12 test digits as scans would give them: upscaled, dark ink on light paper and the reverse, some in colour."""
    test = load_mnist("test", data_dir)
    assert test.labels is not None
    folder = tmp_path_factory.mktemp("digits")
    truth: dict[str, int] = {}
    rng = np.random.default_rng(0)
    for k, i in enumerate(range(12)):
        size = int(rng.integers(40, 200))
        img = cv2.resize(test.images[i], (size, size), interpolation=cv2.INTER_CUBIC)
        if k % 2 == 0:
            img = 255 - img  # dark ink on white paper
        if k % 3 == 0:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        name = folder / f"d{k:02d}.{'png' if k % 4 else 'jpg'}"
        cv2.imwrite(str(name), img)
        truth[str(name)] = int(test.labels[i])
    return folder, truth


def test_predict_jsonl_reads_both_polarities(digit_files: tuple[Path, dict[str, int]]) -> None:
    folder, truth = digit_files
    proc = subprocess.run([sys.executable, "-m", "digitreader", "predict", str(folder)], capture_output=True,
                          text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 12
    for r in rows:
        assert set(r) == {"path", "label", "confidence", "top", "needs_review"}
        assert r["label"] == truth[r["path"]], r
        assert len(r["top"]) == 3 and r["top"][0][0] == r["label"] and 0 < r["confidence"] <= 1


def test_predict_csv_and_bad_files(digit_files: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    folder, truth = digit_files
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = sorted(truth)[:3]
    result = CliRunner().invoke(app, ["predict", "--format", "csv", *good, str(bad), str(tmp_path / "missing.png")])
    assert result.exit_code == ExitCode.PARTIAL
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [int(r["label"]) for r in rows] == [truth[g] for g in good]
    assert "broken.png" in result.stderr and "missing.png" in result.stderr


def test_predict_all_bad_is_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "digitreader", "predict", str(bad)], capture_output=True, text=True,
                          cwd=ROOT)  # fmt: skip
    assert proc.returncode == ExitCode.INPUT and "empty" in proc.stderr and proc.stdout == ""


def test_predict_kaggle_submission(data_dir: Path, tmp_path: Path) -> None:
    test = load_mnist("test", data_dir)
    assert test.labels is not None
    n = 40
    header = ",".join(f"pixel{i}" for i in range(784))
    np.savetxt(tmp_path / "test.csv", test.images[:n].reshape(n, -1), fmt="%d", delimiter=",", header=header,
               comments="")  # fmt: skip
    result = CliRunner().invoke(app, ["predict", "--kaggle-csv", str(tmp_path / "test.csv"), "-o",
                                      str(tmp_path / "submission.csv")])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = list(csv.reader((tmp_path / "submission.csv").open()))
    assert rows[0] == ["ImageId", "Label"] and len(rows) == n + 1
    assert [int(r[0]) for r in rows[1:]] == list(range(1, n + 1))
    labels = np.array([int(r[1]) for r in rows[1:]])
    assert (labels == test.labels[:n]).mean() >= 0.95


def test_predict_needs_inputs() -> None:
    proc = subprocess.run([sys.executable, "-m", "digitreader", "predict"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == ExitCode.USAGE and "--kaggle-csv" in proc.stderr


def test_predict_names_a_damaged_image_it_still_reads(data_dir: Path, tmp_path: Path) -> None:
    """A JPEG digit that lost the end of its data is read (as far as it decodes) with libjpeg's
    complaint on stderr as a warning naming the file, not as a line of its own."""
    test = load_mnist("test", data_dir)
    ok, data = cv2.imencode(".jpg", 255 - cv2.resize(test.images[0], (280, 280), interpolation=cv2.INTER_CUBIC))
    assert ok
    damaged = tmp_path / "damaged.jpg"
    damaged.write_bytes(data.tobytes()[: int(len(data) * 0.8)] + b"\xff\xd9")
    proc = subprocess.run([sys.executable, "-m", "digitreader", "predict", str(damaged)], capture_output=True,
                          text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    assert f"digitreader: warning: {damaged}: damaged image data, read as far as it decodes: " in proc.stderr
    assert "Corrupt JPEG data" in proc.stderr
    assert not [ln for ln in proc.stderr.splitlines() if ln.startswith("Corrupt JPEG")], proc.stderr
