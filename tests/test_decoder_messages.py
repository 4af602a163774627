"""What the image decoders say of a damaged scan becomes that document's warnings, named by file and page.

Before: libjpeg's "Corrupt JPEG data: premature end of data segment" came out as an anonymous line on
stderr, and a JPEG that had lost the bottom third of its page was stored "done", its lost fields
simply missing. The damaged file here is a real sample scan whose last 40 % of data is gone, ended
by the JPEG end marker (a transfer that lost a chunk): libjpeg decodes the top of the page and fills
the rest.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from digitreader.pipeline import decoder_messages
from digitreader.pipeline.document import DocumentCut, join_parts, nothing_read_from_damage, segment_document
from digitreader.settings import Settings
from digitreader.types import DigitSlot, FieldCut, PageCut

ROOT = Path(__file__).resolve().parents[1]
SCAN = ROOT / "examples" / "scans" / "scan-0001-00001.jpg"
LIBJPEG = "Corrupt JPEG data: premature end of data segment"


def damaged_jpeg(to: Path, kept: float = 0.6) -> Path:
    """The sample scan with its last 40 % of data lost (1 - `kept`), closed by an end-of-image marker."""
    data = SCAN.read_bytes()
    to.write_bytes(data[: int(len(data) * kept)] + b"\xff\xd9")
    return to


def test_caught_takes_what_c_code_writes_to_descriptor_2(capfd: pytest.CaptureFixture[str]) -> None:
    with decoder_messages.caught() as heard:
        os.write(2, b"libfoo: bad code word at line 3\n")
        os.write(2, b"libfoo: bad code word at line 3\n")  # the same line twice: once
        warnings.warn("Corrupt EXIF data", UserWarning, stacklevel=1)
        assert heard == []  # filled when the block ends
    os.write(2, b"after the block\n")
    assert heard == ["libfoo: bad code word at line 3", "Corrupt EXIF data"]
    err = capfd.readouterr().err
    assert "libfoo" not in err and "after the block" in err


def test_many_messages_are_counted_not_all_kept() -> None:
    with decoder_messages.caught() as heard:
        for i in range(decoder_messages.MOST + 3):
            os.write(2, f"strip {i}: bad code word\n".encode())
    assert heard[: decoder_messages.MOST] == [f"strip {i}: bad code word" for i in range(decoder_messages.MOST)]
    assert heard[decoder_messages.MOST :] == ["... and 3 more"]


def test_a_stop_that_skips_the_blocks_clean_up_still_gets_its_message_out(capfd: pytest.CaptureFixture[str]) -> None:
    """A second Ctrl-C landing in the block's clean-up skips it: descriptor 2 stays on the scratch file.
    The CLI's "interrupted" gives it back first, so its line (and all after) reach the terminal."""
    from digitreader.cli.main import _interrupted

    block = decoder_messages.caught()
    block.__enter__()  # the block's clean-up never ran
    try:
        os.write(2, b"said in the block\n")
        with pytest.raises(SystemExit):
            _interrupted()
        os.write(2, b"after\n")
        err = capfd.readouterr().err
        assert "digitreader: interrupted" in err and "after" in err and "said in the block" not in err
    finally:
        block.__exit__(None, None, None)  # nothing left to give back: a no-op for descriptor 2
    os.write(2, b"still the terminal\n")
    assert "still the terminal" in capfd.readouterr().err


def test_an_exception_in_the_block_still_gives_descriptor_2_back(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError), decoder_messages.caught() as heard:
        os.write(2, b"said before the error\n")
        raise ValueError("decoder failed")
    os.write(2, b"stderr is back\n")
    assert heard == ["said before the error"]
    assert "stderr is back" in capfd.readouterr().err


def test_a_damaged_jpeg_is_read_with_its_decoders_warning(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    whole = segment_document(SCAN, settings)
    cut = segment_document(damaged_jpeg(tmp_path / "damaged.jpg"), settings)
    assert not whole.failed and whole.warnings == ()
    assert not cut.failed and cut.warnings == (f"page 1: {LIBJPEG}",)
    # The top of the page was read; fields on the lost part are missing: why the warning matters.
    assert 0 < len(cut.pages[0].fields) < len(whole.pages[0].fields)
    assert LIBJPEG not in capfd.readouterr().err


def test_a_long_documents_parts_keep_their_warnings() -> None:
    parts = [
        DocumentCut("a.tif", (_page_with_a_digit(1),), warnings=("page 1: Fax4Decode: Bad code word at line 8",)),
        DocumentCut("a.tif", (_page_with_a_digit(4),), warnings=("page 4: TIFFReadDirectory: unknown field",)),
    ]
    assert join_parts(parts).warnings == parts[0].warnings + parts[1].warnings


def test_a_damaged_scan_with_no_digit_in_what_decodes_fails(tmp_path: Path) -> None:
    """10 % of the sample scan's data: the decoder warns and the part it decodes holds no field. Not
    "done" with nothing in it: failed, `damaged`, the decoder's message in the error."""
    cut = segment_document(damaged_jpeg(tmp_path / "top.jpg", kept=0.1), Settings(_env_file=None))  # type: ignore[call-arg]
    assert (cut.error_code, cut.pages, cut.page_count) == ("damaged", (), 1)
    assert cut.error_message == (
        f"{tmp_path / 'top.jpg'}: no digit found in what decodes of the damaged image data: page 1: {LIBJPEG}"
    )


def _page_with_a_digit(number: int) -> PageCut:
    slot = DigitSlot(position=0, bbox=(0, 0, 9, 9), crop=np.zeros((28, 28), np.uint8), blank=False)
    return PageCut(number=number, width=10, height=10, fields=(FieldCut("f", "boxes", (0, 0, 9, 9), (slot,)),))


def test_only_a_whole_documents_damage_without_digits_fails_it() -> None:
    """A damaged part without digits beside a part with some (a long document read in parts) keeps the
    document; a whole scan with no digit is not failed for that alone (a page of print only)."""
    with_digit = _page_with_a_digit(2)
    empty = PageCut(number=1, width=10, height=10, fields=())
    damaged = DocumentCut("a.tif", (empty,), page_count=1, warnings=("page 1: Fax4Decode: Bad code word",))
    whole = DocumentCut("a.tif", (with_digit,), page_count=1)
    assert not join_parts([damaged, whole]).failed
    assert join_parts([damaged]).error_code == "damaged"
    assert nothing_read_from_damage(DocumentCut("b.png", (empty,), page_count=1)).pages == (empty,)
    assert nothing_read_from_damage(whole) is whole


def test_the_pages_read_from_damaged_data_are_those_the_warnings_name() -> None:
    pages = tuple(PageCut(number=n, width=10, height=10, fields=()) for n in (1, 2, 3))
    cut = DocumentCut("a.tif", pages, warnings=("page 2: Fax4Decode: Bad code word", "page 2: ... and 3 more"))
    assert cut.damaged_pages == {2}
    assert DocumentCut("a.tif", pages).damaged_pages == frozenset()
    # Said after the last page or of the file: it may concern any page.
    after = DocumentCut("a.tif", pages, warnings=("page 1: x", "after its pages: TIFFReadDirectory: bad"))
    assert after.damaged_pages == {1, 2, 3}
    assert DocumentCut("a.jpg", pages[:1], warnings=("its file: bad",)).damaged_pages == {1}


def test_codec_carries_the_warnings() -> None:
    from workers.codec import decode_cut, encode_cut

    cut = DocumentCut("a.jpg", (), page_count=1, warnings=(f"page 1: {LIBJPEG}",))
    assert decode_cut(encode_cut(cut)).warnings == cut.warnings
    assert decode_cut(encode_cut(DocumentCut("b.jpg", (), page_count=1))).warnings == ()


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "digitreader", *args], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("alone", [True, False], ids=["read-inline", "read-in-the-pool"])
def test_submit_names_the_damaged_scan_and_keeps_its_warning(alone: bool, isolated_env: Path, tmp_path: Path) -> None:
    """`submit` on a damaged JPEG, alone (read in the batch's own process) and beside a whole scan
    (read in the segmentation pool): exit 0, the warning named by file on stderr (not libjpeg's bare
    line), and the warning in `status`, the JSON export and the CSV; the document needs review, its
    fields flagged `damaged_image`."""
    folder = tmp_path / "in"
    folder.mkdir()
    bad = damaged_jpeg(folder / "damaged.jpg")
    if not alone:
        (folder / "whole.png").write_bytes((ROOT / "examples" / "scans" / "scan-0003-00001.png").read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITREADER_") or k == "DIGITREADER_DATA_DIR"}
    env.update({"DIGITREADER_HOME": str(isolated_env), "PYTHONUNBUFFERED": "1"})
    res = _cli(["submit", str(folder)], env)
    assert res.returncode == 0, res.stderr
    batch = res.stdout.strip()
    said = res.stderr.splitlines()
    assert not [ln for ln in said if ln.startswith("Corrupt JPEG")], res.stderr
    stderr = " ".join(res.stderr.split())  # the summary's lines are wrapped to the terminal's width
    assert f"warning {bad}: damaged image data, read as far as it decodes: page 1: {LIBJPEG}" in stderr
    assert "read from damaged image data (1;" in stderr
    st = json.loads(_cli(["status", batch, "--json"], env).stdout)
    assert st["warnings"] == [{"path": str(bad), "status": "needs_review", "warnings": [f"page 1: {LIBJPEG}"]}]
    assert f"{bad}: damaged image data" in _cli(["status", batch], env).stdout
    docs = {Path(d["path"]).name: d for d in json.loads(_cli(["export", batch], env).stdout)["documents"]}
    assert docs["damaged.jpg"]["warnings"] == [f"page 1: {LIBJPEG}"] and docs["damaged.jpg"]["pages"][0]["fields"]
    assert alone or docs["whole.png"]["warnings"] == []
    # Each field of the damaged page with a cell is flagged for a look at the paper; the whole scan
    # beside it is not.
    fields = docs["damaged.jpg"]["pages"][0]["fields"]
    assert docs["damaged.jpg"]["status"] == "needs_review"
    cells = [f for f in fields if f["digits"]]
    assert cells and all("damaged_image" in f["flags"] and f["needs_review"] for f in cells)
    assert all("damaged_image" not in f["flags"] for f in fields if f not in cells)
    assert alone or not [f for p in docs["whole.png"]["pages"] for f in p["fields"] if "damaged_image" in f["flags"]]
    rows = list(csv.DictReader(io.StringIO(_cli(["export", batch, "--format", "csv"], env).stdout)))
    assert {r["warnings"] for r in rows if r["document"] == str(bad)} == {f"page 1: {LIBJPEG}"}
    assert alone or {r["warnings"] for r in rows if r["document"] != str(bad)} == {""}


def _read_all(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's other end was closed (the run ended)
            return out
        if not chunk:
            return out
        out += chunk


_BAR_WHILE_CAUGHT = """
import json, os, sys, time
from digitreader.cli.output import progress
from digitreader.pipeline import decoder_messages
bar = progress(transient=True)
bar.start()
task = bar.add_task("reading", total=10)
with decoder_messages.caught() as heard:
    for _ in range(5):  # half a second: the bar's thread redraws it about five times meanwhile
        bar.advance(task)
        time.sleep(0.1)
    os.write(2, b"Corrupt JPEG data: premature end of data segment\\n")
bar.stop()
print(json.dumps(heard))
"""


def _on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run `args` with stderr on a pseudo-terminal (200 columns): exit status, stdout, the terminal's text."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    env = {**env, "TERM": "xterm-256color"}
    env.pop("CI", None)  # rich draws no live bar where CI is set
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    screen = _read_all(master).decode("utf-8", "replace")
    os.close(master)
    out = proc.stdout.read().decode() if proc.stdout else ""
    return proc.wait(timeout=300), out, screen


def test_the_progress_bar_draws_beside_what_is_caught() -> None:
    """A live bar is redrawn from its own thread, also while a page decodes and descriptor 2 is
    caught: it draws on its own duplicate of stderr, so the terminal shows it and the decoder's
    message is kept whole (on descriptor 2 the redraws were caught, and glued to the message)."""
    rc, out, screen = _on_a_terminal([sys.executable, "-c", _BAR_WHILE_CAUGHT], dict(os.environ))
    assert rc == 0, screen
    assert json.loads(out) == [LIBJPEG]
    assert screen.count("reading") >= 4, screen  # redrawn on the terminal meanwhile
    assert "Corrupt JPEG" not in screen


@pytest.mark.slow
def test_a_progress_bar_drawn_while_pages_decode_is_not_taken_for_a_warning(isolated_env: Path, tmp_path: Path) -> None:
    """On a terminal `submit` draws its progress bar from a thread of the process that also decodes
    pages inline (DIGITREADER_WORKERS=1), so the bar can be redrawn while descriptor 2 points at the
    scratch file: those redraws must reach the terminal, not the documents' warnings."""
    folder = tmp_path / "in"
    folder.mkdir()
    whole = damaged_jpeg(tmp_path / "damaged.jpg").read_bytes()
    names = [f"damaged-{i}.jpg" for i in range(6)]
    for i, name in enumerate(names):  # six files, six contents: a byte after the end marker differs
        (folder / name).write_bytes(whole + bytes([i]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITREADER_") or k == "DIGITREADER_DATA_DIR"}
    env.update({"DIGITREADER_HOME": str(isolated_env), "DIGITREADER_WORKERS": "1"})
    rc, out, screen = _on_a_terminal([sys.executable, "-m", "digitreader", "submit", str(folder)], env)
    batch = out.strip()
    assert rc == 0, screen
    assert "\x1b[?25l" in screen and screen.count("\r\x1b[2K") > 6  # a live bar, redrawn as it went
    assert not [ln for ln in screen.splitlines() if ln.strip().startswith("Corrupt JPEG")], screen
    docs = json.loads(_cli(["export", batch], env).stdout)["documents"]
    assert sorted(Path(d["path"]).name for d in docs) == names
    assert all(d["warnings"] == [f"page 1: {LIBJPEG}"] for d in docs), [d["warnings"] for d in docs]


def test_whole_scans_of_every_kind_say_nothing(tmp_path: Path) -> None:
    """No warning where nothing is wrong: the sample scans (JPEG, PNG, multi-page TIFF, PDF) and whole
    files in the variants scanners write (progressive and CMYK JPEG, 16-bit and 1-bit fax TIFF with a
    private tag, 16-bit PNG)."""
    import numpy as np
    from PIL import Image, TiffImagePlugin

    page = np.asarray(Image.open(ROOT / "examples" / "scans" / "scan-0003-00001.png").convert("L"))
    tag = TiffImagePlugin.ImageFileDirectory_v2()
    tag[50000] = "scanner software 1.0"  # a private tag, as scanning software writes
    tag.tagtype[50000] = 2
    made = {
        "progressive.jpg": lambda p: Image.fromarray(page).save(p, progressive=True, quality=90),
        "cmyk.jpg": lambda p: Image.fromarray(page).convert("CMYK").save(p, quality=90),
        "deep.png": lambda p: Image.fromarray(page.astype(np.uint16) * 257).save(p),
        "deep.tif": lambda p: Image.fromarray(page.astype(np.uint16) * 257).save(p, compression="tiff_lzw"),
        "fax.tif": lambda p: (
            Image.fromarray(page)
            .point(lambda v: 255 if v > 128 else 0)
            .convert("1")
            .save(p, compression="group4", tiffinfo=tag)
        ),
    }
    files = sorted(p for p in (ROOT / "examples" / "scans").iterdir() if not p.name.endswith(".json"))
    for name, write in made.items():
        write(tmp_path / name)
        files.append(tmp_path / name)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    cuts = {f.name: segment_document(f, settings) for f in files}
    assert {n: (c.error_code, c.warnings) for n, c in cuts.items()} == {f.name: (None, ()) for f in files}
    assert all(c.pages and c.pages[0].fields for c in cuts.values())
