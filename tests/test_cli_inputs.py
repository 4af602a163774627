"""What `submit` reads of the paths it is given (`collect_inputs`): folders reached through `..` or
lying under a hidden folder, symlinked subfolders, globs that match folders. Real files, copied from
examples/scans."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from digitreader.errors import ExitCode, UsageError
from digitreader.pipeline.process import collect_inputs

ROOT = Path(__file__).resolve().parents[1]
SCAN = ROOT / "examples" / "scans" / "scan-0001-00002.jpg"  # the smallest sample scan (a cheque)


def _scan(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SCAN, path)
    return path


def run_cli(args: list[str]) -> int:
    """`digitreader ARGS` in-process; its exit code."""
    from digitreader.cli.main import main

    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _names(files: list[Path], base: Path) -> list[str]:
    return [os.path.relpath(f, base) for f in files]


def test_a_folder_reached_through_dotdot_or_under_a_hidden_folder_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only names below the folder given count as hidden: `submit ../incoming` and a folder under
    `~/.scans/` used to read nothing ("no scans found in folder", exit 2), as every path holding a part
    that starts with "." was left out, the parts the user typed included."""
    scans = tmp_path / ".hidden" / "scans"
    a = _scan(scans / "a.jpg")
    b = _scan(scans / "sub" / "b.jpg")
    _scan(scans / ".thumbs" / "c.jpg")  # a hidden folder inside the one given: left out
    dot = _scan(scans / ".d.jpg")  # a hidden file inside it: left out
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")

    assert collect_inputs([scans]) == [a, b]
    assert _names(collect_inputs(["../.hidden/scans"]), scans) == ["a.jpg", "sub/b.jpg"]
    assert _names(collect_inputs([f"{tmp_path}/work/../.hidden/scans"]), scans) == ["a.jpg", "sub/b.jpg"]
    monkeypatch.chdir(scans / "sub")
    assert _names(collect_inputs([".."]), scans) == ["a.jpg", "sub/b.jpg"]
    # A hidden file named is read, as any file named is.
    assert collect_inputs([dot]) == [dot]
    # A folder that holds only hidden scans has none to read.
    with pytest.raises(UsageError, match="no scans found in folder"):
        collect_inputs([_hidden_only(tmp_path)])


def _hidden_only(tmp_path: Path) -> Path:
    folder = tmp_path / "only-hidden"
    _scan(folder / ".x.jpg")
    _scan(folder / ".cache" / "y.jpg")
    return folder


def test_submit_reads_a_folder_named_through_dotdot(
    isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command itself, in-process: `submit ../incoming` from a sibling folder reads its scan."""
    _scan(tmp_path / ".scans" / "incoming" / "a.jpg")
    (tmp_path / ".scans" / "work").mkdir()
    monkeypatch.chdir(tmp_path / ".scans" / "work")
    rc = run_cli(["submit", "../incoming"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert out.out.strip().isdigit() and "documents 1 (1 done" in out.err


def test_a_symlinked_subfolder_is_followed_and_a_loop_read_once(tmp_path: Path) -> None:
    """A symlinked folder inside a submitted folder is read (Python 3.11's `rglob` passed over it
    silently); a link back to a folder above, or a second link to one read already, reads nothing twice
    and ends."""
    real = tmp_path / "elsewhere" / "north"
    north = _scan(real / "n.jpg")
    top = tmp_path / "top"
    a = _scan(top / "a.jpg")
    (top / "branch-north").symlink_to(real, target_is_directory=True)
    (top / "z-north-again").symlink_to(real, target_is_directory=True)
    (top / "sub").mkdir()
    (top / "sub" / "up").symlink_to(top, target_is_directory=True)  # a loop
    (top / "broken").symlink_to(tmp_path / "gone", target_is_directory=True)
    files = collect_inputs([top])
    assert files == [a, top / "branch-north" / "n.jpg"]
    assert [f.resolve() for f in files] == [a.resolve(), north.resolve()]
    # A folder that is a link to its own parent alone: its scans once.
    up = top / "sub" / "up"
    assert collect_inputs([up]) == [up / "a.jpg", up / "branch-north" / "n.jpg"]


def test_a_glob_that_matches_folders_reads_them_as_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`submit 'days/2026-12-*'` reads the folders the glob matches as if each were named; it used to
    keep file matches only and refuse such a glob ("no files match", exit 2)."""
    monkeypatch.chdir(tmp_path)
    d5 = _scan(Path("days/2026-12-05/a.jpg"))
    d6 = _scan(Path("days/2026-12-06/deep/b.jpg"))
    _scan(Path("days/2026-12-06/.trash/c.jpg"))  # hidden below the folder matched: left out
    top = _scan(Path("days/2026-12-07.jpg"))  # a file the glob matches: read as before
    (tmp_path / "days" / "2026-11-30").mkdir()
    assert collect_inputs(["days/2026-12-*"]) == [d5, d6, top]
    assert collect_inputs(["days/2026-12-0[56]"]) == [d5, d6]
    # A glob whose folders hold no scan is refused, as an empty folder named is.
    (tmp_path / "days" / "2026-10-01").mkdir()
    with pytest.raises(UsageError) as exc:
        collect_inputs(["days/2026-1[01]-*"])
    assert exc.value.exit_code == ExitCode.USAGE and "no scans match days/2026-1[01]-*" in str(exc.value)


def test_jpeg_names_windows_gives_are_read_and_files_left_out_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder's `.jfif` and `.jpe` files (JPEGs as Windows saves them) are scans; before, they were left
    out without a word. Images of kinds not read (a fax as GIF, a phone's HEIC) are counted in one
    warning; other files (a scan's sidecar .json, notes, Thumbs.db) and hidden ones are left out quietly."""
    top = tmp_path / "in"
    scans = [_scan(top / "a.jpg"), _scan(top / "b.jfif"), _scan(top / "sub" / "c.JPE")]
    for junk in ("notes.txt", "a.truth.json", "Thumbs.db", "fax.gif", "sub/photo.HEIC", "sub/old.gif", "README"):
        (top / junk).write_bytes(b"x")
    (top / ".DS_Store").write_bytes(b"x")
    with caplog.at_level("WARNING", logger="digitreader.pipeline.process"):
        assert collect_inputs([top]) == sorted(scans)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning == "left out 3 image(s) of kinds not read (.gif 2, .heic 1); convert them to PNG, JPEG, TIFF or PDF"
    caplog.clear()
    with caplog.at_level("WARNING", logger="digitreader.pipeline.process"):
        assert collect_inputs([top / "a.jpg", top / "b.jfif"]) == scans[:2]
    assert not caplog.records  # files named: nothing left out


def test_submit_shows_a_name_that_is_not_utf8_as_status_and_export_do(
    isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file name that is not valid UTF-8 is shown with each such byte as `\\xNN` (README:
    `scan-\\xff.png`) in `submit`'s lines (a failed document's line, the summary, a folder with no
    scan) as `status` and the export show it; `submit` used to show `\\udcfe`."""
    monkeypatch.chdir(tmp_path)  # short paths: lines that fit in the 80 columns of a console that is no terminal
    folder = b"names"
    os.mkdir(folder)
    try:
        open(folder + b"/empty-\xfe.png", "wb").close()  # zero bytes: fails (empty_file)
    except OSError:
        pytest.skip("this file system refuses file names that are not UTF-8")
    names = os.fsdecode(folder)
    assert run_cli(["submit", names]) == ExitCode.INPUT
    err = capsys.readouterr().err
    line = f"{names}/empty-\\xfe.png: empty_file: the file is empty (0 bytes)"
    assert err.count(line) == 2, err  # as it fails, and in the summary's failures
    assert "\\udc" not in err and "\udcfe" not in err
    batch = err.split("batch ", 1)[1].split(":", 1)[0].split(" ", 1)[0]
    assert run_cli(["status", batch]) == ExitCode.OK
    assert line in capsys.readouterr().out  # `status` shows it so too
    # A folder whose name is not UTF-8, with no scan in it: named so in the error.
    empty = folder + b"/day-\xff"
    os.mkdir(empty)
    assert run_cli(["submit", os.fsdecode(empty)]) == ExitCode.USAGE
    assert f"no scans found in folder {names}/day-\\xff\n" in capsys.readouterr().err


def test_failure_and_warning_lines_show_each_byte_of_a_name_that_is_not_utf8_as_an_escape() -> None:
    from digitreader.cli.output import failure_line, warning_line

    path = os.fsdecode(b"s/scan-\xff.jpg")  # as Python has it: with a surrogate
    assert failure_line(path, "truncated", f"{path} (page 2): cannot decode the image") == (
        "s/scan-\\xff.jpg: truncated: page 2: cannot decode the image"
    )
    assert failure_line("s/scan-\\xff.jpg", "empty_file", "s/scan-\\xff.jpg: the file is empty (0 bytes)") == (
        "s/scan-\\xff.jpg: empty_file: the file is empty (0 bytes)"  # as the database has it: the same
    )
    assert warning_line(path, ["page 1: Corrupt JPEG data"]) == (
        "s/scan-\\xff.jpg: damaged image data, read as far as it decodes: page 1: Corrupt JPEG data"
    )
    assert failure_line("é.png", "x", None) == "é.png: x"  # valid text as it is
