"""What `export` and `predict` write: a document read with no field in the CSV, the mode of a file
written with `-o`, and `-o` to a place that cannot be written. Real scans, run in-process."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from digitreader.errors import ExitCode
from tests.test_cli_inputs import SCAN, run_cli


def _letter(path: Path) -> Path:
    """An A4 page of printed text and no form: read "done", with no field."""
    img = np.full((3508, 2480), 255, np.uint8)
    for i in range(30):
        text = f"Lorem ipsum dolor sit amet, consectetur adipiscing elit {i}"
        cv2.putText(img, text, (150, 200 + i * 100), cv2.FONT_HERSHEY_SIMPLEX, 2.0, 0, 4)
    cv2.imwrite(str(path), img)
    return path


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(home, batch id) of one batch: a letter with no field, a cheque, and an empty file (failed)."""
    from digitreader.settings import get_settings

    base = tmp_path_factory.mktemp("export")
    scans = base / "scans"
    scans.mkdir()
    _letter(scans / "letter.png")
    shutil.copyfile(SCAN, scans / "cheque.jpg")
    (scans / "empty.png").touch()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIGITREADER_HOME", str(base / "home"))
        for name in ("DIGITREADER_DATABASE_URL", "DIGITREADER_BROKER_URL", "DIGITREADER_PRECISION"):
            mp.delenv(name, raising=False)
        get_settings.cache_clear()
        out = io.StringIO()
        mp.setattr("sys.stdout", out)
        assert run_cli(["submit", "-q", str(scans)]) == ExitCode.PARTIAL  # the empty file fails
        yield base / "home", out.getvalue().strip()
    get_settings.cache_clear()


def test_csv_gives_a_document_read_with_no_field_one_row(
    batch: tuple[Path, str], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A document read with no field (a page of printed text) has one row with empty field columns,
    as a failed one has; it used to have none, though `status` and the JSON count it."""
    assert run_cli(["export", batch[1]]) == 0
    docs = {Path(d["path"]).name: d for d in json.loads(capsys.readouterr().out)["documents"]}
    assert set(docs) == {"letter.png", "cheque.jpg", "empty.png"}
    letter = docs["letter.png"]
    assert letter["status"] == "done" and letter["pages"] and not any(p["fields"] for p in letter["pages"])

    assert run_cli(["export", batch[1], "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    by_doc: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_doc.setdefault(Path(row["document"]).name, []).append(row)
    assert set(by_doc) == set(docs)  # every document of the batch, once at least
    (row,) = by_doc["letter.png"]
    assert row["status"] == "done" and row["error"] == ""
    assert all(row[k] == "" for k in ("page", "field", "kind", "value", "confidence", "flag", "flags"))
    (failed,) = by_doc["empty.png"]
    assert failed["status"] == "failed" and failed["error"].startswith("empty_file: ") and failed["field"] == ""
    n_fields = sum(len(p["fields"]) for p in docs["cheque.jpg"]["pages"])
    assert n_fields and len(by_doc["cheque.jpg"]) == n_fields


def _umask(mask: int) -> int:
    return os.umask(mask)


def test_export_to_a_file_gives_it_the_umask_s_mode_and_keeps_an_existing_file_s(
    batch: tuple[Path, str], home: Path, tmp_path: Path
) -> None:
    """`export -o FILE` writes a new file with the mode the umask gives (as `> FILE` does) and keeps the
    mode of a file it replaces; it used to leave every file rw------- (the temporary file's 0600)."""
    new, kept = tmp_path / "out" / "new.csv", tmp_path / "kept.json"
    kept.write_text("old")
    kept.chmod(0o640)
    before = _umask(0o022)
    try:
        assert run_cli(["export", batch[1], "-f", "csv", "-o", str(new)]) == 0
        assert run_cli(["export", batch[1], "-o", str(kept)]) == 0
        _umask(0o002)
        assert run_cli(["export", batch[1], "-o", str(tmp_path / "group.json")]) == 0
    finally:
        _umask(before)
    assert stat.S_IMODE(new.stat().st_mode) == 0o644
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and json.loads(kept.read_text())["batch"] == int(batch[1])
    assert stat.S_IMODE((tmp_path / "group.json").stat().st_mode) == 0o664
    assert sorted(p.name for p in tmp_path.iterdir()) == ["group.json", "kept.json", "out"]  # no temporary left
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new.csv"]


def _unwritable(tmp_path: Path) -> Path:
    """A path whose folder cannot be made: its would-be parent is a file (root may write anywhere else)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    return blocker / "sub" / "results.out"


def test_predict_to_a_place_that_cannot_be_written_is_a_usage_error(
    isolated_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`predict -o` to a place that cannot be written says so and exits 2, as `export -o` does; it used
    to end in a traceback and "internal error (please report it)", exit 1."""
    digits = tmp_path / "digits"
    digits.mkdir()
    img = np.full((40, 40), 255, np.uint8)
    cv2.putText(img, "7", (8, 34), cv2.FONT_HERSHEY_SIMPLEX, 1.2, 0, 3)
    cv2.imwrite(str(digits / "seven.png"), img)
    target = _unwritable(tmp_path)
    for args in (["predict", str(digits)], ["predict", str(digits), "-f", "csv"]):
        assert run_cli([*args, "-o", str(target)]) == ExitCode.USAGE
        err = capsys.readouterr().err
        assert f"digitreader: error: cannot write {target}: " in err
        assert "internal error" not in err and "Traceback" not in err
    assert run_cli(["predict", str(digits), "-o", str(tmp_path)]) == ExitCode.USAGE  # a folder
    assert f"{tmp_path} is a folder; give a file name" in capsys.readouterr().err
    # A file that can be written gets the results, with the umask's mode as `export -o` gives.
    out = tmp_path / "res" / "digits.jsonl"
    assert run_cli(["predict", str(digits), "-o", str(out)]) == 0
    assert json.loads(out.read_text())["label"] == 7
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_current_umask()


def test_export_to_a_place_that_cannot_be_written_is_a_usage_error(
    batch: tuple[Path, str], home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = _unwritable(tmp_path)
    assert run_cli(["export", batch[1], "-o", str(target)]) == ExitCode.USAGE
    assert f"digitreader: error: cannot write {target}: " in capsys.readouterr().err


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
