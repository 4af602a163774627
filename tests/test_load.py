"""Load stage: every supported format, EXIF orientation, and every loading error on a real bad file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from digitreader.errors import ExitCode, InputError
from digitreader.pipeline.load import count_pages, load_pages
from digitreader.pipeline.segment import segment_page
from digitreader.settings import Settings
from digitreader.types import FieldCut

DATA = Path(__file__).resolve().parent / "data"


def _value(field: FieldCut, predictor: Any) -> str:
    """A cut field's value as the model reads it (its blank cells left out)."""
    crops = [s.crop for s in field.slots if not s.blank]
    return "".join(str(v) for v in predictor.predict(np.stack(crops)).labels.tolist()) if crops else ""


def _read_alike(scan: Path, changed: Path, settings: Settings) -> tuple[list[str], list[str], int]:
    """The values of the fields read on a page and on a changed copy of it (each in the order
    found), and how many of the first are among the second (as multisets: boxes move with a turn)."""
    from digitreader.pipeline.process import segment_document
    from digitreader.pipeline.recognize import Predictor

    predictor = Predictor.load(None, settings)

    def values(path: Path) -> list[str]:
        cut = segment_document(path, settings, None, None)
        assert not cut.failed
        return [_value(f, predictor) for f in cut.pages[0].fields]

    want, got = values(scan), values(changed)
    return want, got, sum(min(want.count(v), got.count(v)) for v in set(want))


def _page(h: int = 120, w: int = 90) -> np.ndarray:
    """Grey page with a dark bar near the top-left (to see orientation)."""
    a = np.full((h, w), 240, np.uint8)
    a[10:20, 5:40] = 10
    return a


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("empty.png", "empty_file"),
        ("not_an_image.png", "unsupported"),
        ("truncated.png", "truncated"),
        ("truncated.jpg", "truncated"),
        ("bomb.png", "too_large"),
        ("encrypted.pdf", "encrypted"),
        ("truncated.pdf", "truncated"),
        ("empty_page.pdf", "empty_page"),
    ],
)
def test_bad_files_raise_typed_errors(name: str, code: str, settings: Settings) -> None:
    path = DATA / name
    with pytest.raises(InputError) as info:
        list(load_pages(path, settings))
    err = info.value
    assert err.code == code
    assert err.exit_code == ExitCode.INPUT
    assert str(path) in str(err)  # the message names the file


@pytest.mark.parametrize(("name", "code"), [("blank.png", "blank_page"), ("all_black.png", "all_black")])
def test_blank_and_black_pages_are_refused_by_segmentation(name: str, code: str, settings: Settings) -> None:
    (page,) = list(load_pages(DATA / name, settings))
    with pytest.raises(InputError) as info:
        segment_page(page, settings)
    assert info.value.code == code and info.value.page == 1


def test_missing_file_is_unreadable(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(InputError) as info:
        list(load_pages(tmp_path / "nope.png", settings))
    assert info.value.code == "unreadable"


def test_page_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    Image.fromarray(_page(400, 300)).save(p)
    small_limit = Settings(max_page_pixels=100_000, _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(InputError) as info:
        list(load_pages(p, small_limit))
    assert info.value.code == "too_large" and info.value.page == 1


def test_file_size_limit(tmp_path: Path) -> None:
    p = tmp_path / "a.png"
    Image.fromarray(_page()).save(p)
    with pytest.raises(InputError) as info:
        list(load_pages(p, Settings(max_file_bytes=10, _env_file=None)))  # type: ignore[call-arg]
    assert info.value.code == "too_large"


@pytest.mark.parametrize("fmt", ["png", "jpeg", "bmp", "tiff"])
def test_single_page_formats(fmt: str, tmp_path: Path, settings: Settings) -> None:
    p = tmp_path / f"page.{fmt}"
    Image.fromarray(_page()).save(p, dpi=(200, 200))
    (page,) = list(load_pages(p, settings))
    assert page.gray.shape == (120, 90) and page.gray.dtype == np.uint8
    assert abs(int(page.gray[15, 20]) - 10) < 25 and abs(int(page.gray[100, 80]) - 240) < 10
    assert page.dpi is not None and abs(page.dpi - 200) < 1
    assert count_pages(p, settings) == 1


def test_multipage_tiff_with_mixed_depths(tmp_path: Path, settings: Settings) -> None:
    g = _page()
    frames = [
        Image.fromarray(g),  # 8-bit
        Image.fromarray(g.astype(np.uint16) * 257),  # 16-bit
        Image.fromarray(g).point(lambda v: 255 if v > 128 else 0).convert("1"),  # 1-bit
        Image.fromarray(np.dstack([g, g, g, np.full_like(g, 255)]), "RGBA"),  # with alpha
    ]
    p = tmp_path / "multi.tif"
    frames[0].save(p, save_all=True, append_images=frames[1:], compression="tiff_deflate")
    pages = list(load_pages(p, settings))
    assert [pg.number for pg in pages] == [1, 2, 3, 4]
    assert count_pages(p, settings) == 4
    for pg in pages:
        assert pg.gray.dtype == np.uint8 and pg.gray.shape == (120, 90)
        assert pg.gray[15, 20] < 40 and pg.gray[100, 80] > 200


def test_pages_loads_only_that_part(tmp_path: Path, settings: Settings) -> None:
    """`load_pages(pages=(first, last))` yields those pages only, numbered as in the whole document
    and with the same pixels (what a part of a long document is segmented from)."""
    frames = [Image.fromarray(_page() // (i + 1)) for i in range(5)]  # five different pages
    tif, pdf, png = tmp_path / "five.tif", tmp_path / "five.pdf", tmp_path / "one.png"
    frames[0].save(tif, save_all=True, append_images=frames[1:], compression="tiff_deflate")
    frames[0].save(pdf, save_all=True, append_images=frames[1:], resolution=100)
    frames[0].save(png)
    for p in (tif, pdf):
        whole = list(load_pages(p, settings))
        part = list(load_pages(p, settings, pages=(2, 4)))
        assert [pg.number for pg in part] == [2, 3, 4]
        assert all(np.array_equal(pg.gray, whole[pg.number - 1].gray) for pg in part)
        assert not np.array_equal(part[0].gray, part[1].gray)
        assert [pg.number for pg in load_pages(p, settings, pages=(5, 9))] == [5]
    assert [pg.number for pg in load_pages(png, settings, pages=(1, 1))] == [1]
    assert list(load_pages(png, settings, pages=(2, 3))) == []


def test_transparent_areas_become_paper(tmp_path: Path, settings: Settings) -> None:
    rgba = np.zeros((50, 40, 4), np.uint8)  # fully transparent black...
    rgba[10:20, 10:30] = (0, 0, 0, 255)  # ...except an opaque black bar
    p = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(p)
    (page,) = list(load_pages(p, settings))
    assert page.gray[0, 0] == 255 and page.gray[15, 15] == 0
    # The same picture as grey or RGB with a tRNS key colour (black: see-through), and a grey bar where
    # the black bar was: before, the key colour was read as black, and such a page failed "all_black".
    grey = np.zeros((50, 40), np.uint8)
    grey[10:20, 10:30] = 40
    Image.fromarray(grey, "L").save(tmp_path / "key.png", transparency=0)
    Image.fromarray(np.dstack([grey] * 3), "RGB").save(tmp_path / "key-rgb.png", transparency=(0, 0, 0))
    for name in ("key.png", "key-rgb.png"):
        assert "transparency" in Image.open(tmp_path / name).info
        (page,) = list(load_pages(tmp_path / name, settings))
        assert page.gray[0, 0] == 255 and page.gray[15, 15] == 40, name


def test_colour_becomes_grey(tmp_path: Path, settings: Settings) -> None:
    rgb = np.full((40, 40, 3), 250, np.uint8)
    rgb[5:15, 5:35] = (20, 30, 200)  # blue ink
    p = tmp_path / "colour.jpg"
    Image.fromarray(rgb).save(p, quality=95)
    (page,) = list(load_pages(p, settings))
    assert page.gray.ndim == 2 and page.gray[10, 20] < 80 and page.gray[30, 30] > 230


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_honoured(orientation: int, tmp_path: Path, settings: Settings) -> None:
    upright = _page()
    # Store the pixels rotated the way a camera would, and the EXIF tag that says how to undo it.
    stored = {3: np.rot90(upright, 2), 6: np.rot90(upright, 1), 8: np.rot90(upright, -1)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / "rotated.jpg"
    Image.fromarray(np.ascontiguousarray(stored)).save(p, exif=exif.tobytes(), quality=95)
    (page,) = list(load_pages(p, settings))
    assert page.gray.shape == upright.shape
    assert np.abs(page.gray.astype(int) - upright.astype(int)).mean() < 6


def test_pdf_pages_are_rasterized_at_the_configured_dpi(tmp_path: Path) -> None:
    p = tmp_path / "doc.pdf"
    ims = [Image.fromarray(_page(300, 210)) for _ in range(2)]
    ims[0].save(p, save_all=True, append_images=ims[1:], resolution=100)  # 2.1 x 3 inches
    s = Settings(pdf_dpi=150, _env_file=None)  # type: ignore[call-arg]
    pages = list(load_pages(p, s))
    assert len(pages) == 2 and count_pages(p, s) == 2
    assert abs(pages[0].width - 315) <= 1 and abs(pages[0].height - 450) <= 1
    assert pages[1].dpi == 150
    assert pages[0].gray[int(15 * 1.5), int(20 * 1.5)] < 60


@pytest.mark.parametrize("orientation", [1, 6])
def test_jpeg_decoded_reduced_keeps_the_page_size(orientation: int, tmp_path: Path, settings: Settings) -> None:
    """max_reduction=2 decodes a 300-dpi JPEG at half size (never under 150 dpi); width/height, and so
    every box, stay those of the page as submitted, EXIF quarter turns included."""
    upright = _page(701, 499)  # odd sizes: the reduced page is rounded up
    stored = upright if orientation == 1 else np.rot90(upright, 1)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / "page.jpg"
    Image.fromarray(np.ascontiguousarray(stored)).save(p, exif=exif.tobytes(), quality=95, dpi=(300, 300))
    (full,) = list(load_pages(p, settings))
    (half,) = list(load_pages(p, settings, max_reduction=2))
    assert full.reduction == 1 and half.reduction == 2
    assert (half.width, half.height) == (full.width, full.height) == (499, 701)
    assert half.gray.shape == (351, 250)
    assert half.gray[7, 10] < 60 and half.gray[100, 100] > 220  # the bar at (5..40, 10..20) full-size
    # At 150 dpi a JPEG is never reduced further (the working resolution).
    p150 = tmp_path / "page150.jpg"
    Image.fromarray(upright).save(p150, quality=95, dpi=(150, 150))
    (kept,) = list(load_pages(p150, settings, max_reduction=4))
    assert kept.reduction == 1 and kept.gray.shape == (701, 499)


@pytest.mark.filterwarnings("ignore:.*(EXIF|Truncated File Read).*")  # Pillow's, on the cut directories
@pytest.mark.parametrize("compression", ["tiff_deflate", None])
def test_a_multipage_tiff_cut_anywhere_is_truncated_or_whole(
    compression: str | None, tmp_path: Path, settings: Settings
) -> None:
    """A 3-page TIFF cut short at every length from its signature on (every byte of the small Deflate
    file, about 500 cuts of the uncompressed one): the document is either read whole, 3 pages, or
    fails "truncated" (with count_pages the same). Before: cut in a page's directory, Pillow's page
    count raised TypeError ("Missing dimensions": an internal error) or SyntaxError, or ended early
    without a word, and the file was read as 1 or 2 pages, "done"; cut in the header, it was "not a
    supported image"."""
    frames = [Image.fromarray(_page()) for _ in range(3)]
    whole = tmp_path / "three.tif"
    frames[0].save(whole, save_all=True, append_images=frames[1:], compression=compression)
    data = whole.read_bytes()
    cut = tmp_path / "cut.tif"
    outcomes = set()
    for size in range(4, len(data), max(1, len(data) // 500)):  # from its 4-byte signature on
        cut.write_bytes(data[:size])
        for read in (lambda: len(list(load_pages(cut, settings))), lambda: count_pages(cut, settings)):
            try:
                outcome = f"{read()} pages"
            except InputError as exc:
                outcome = exc.code
            assert outcome in ("3 pages", "truncated"), (size, outcome)
            outcomes.add(outcome)
    assert "truncated" in outcomes


def test_a_stated_dpi_that_cannot_be_the_pages_is_not_believed(tmp_path: Path, settings: Settings) -> None:
    """Cameras and many programs state 72 or 96 dpi whatever the pixels are. A 300-dpi A4 form stated at
    72 dpi would be a sheet 1.24 m long: read at that scale no field was found, and the document was
    "done" with nothing read. Such a dpi is not believed (the page size decides, as with no dpi)."""
    from digitreader.pipeline.prepare import plausible_dpi
    from digitreader.pipeline.process import segment_document

    assert plausible_dpi(2480, 3508, 300) and plausible_dpi(595, 842, 72) and plausible_dpi(1378, 630, 200)
    assert not plausible_dpi(2480, 3508, 72) and not plausible_dpi(2480, 3508, 96) and not plausible_dpi(10, 10, 50)
    form = Image.open(Path(__file__).resolve().parents[1] / "examples" / "scans" / "scan-0001-00001.jpg")
    pixels = form.convert("L")
    counts = {}
    for dpi in (300, 96, 72):
        path = tmp_path / f"form-{dpi}.jpg"
        pixels.save(path, dpi=(dpi, dpi), quality=92)
        assert Image.open(path).info["dpi"][0] == dpi
        cut = segment_document(path, settings, None, None)
        assert not cut.failed
        counts[dpi] = [len(p.fields) for p in cut.pages]
    assert counts[300][0] >= 20 and counts[96] == counts[300] and counts[72] == counts[300]


@pytest.mark.parametrize("turned", [False, True])
def test_a_fax_in_normal_mode_is_read_with_square_pixels(turned: bool, tmp_path: Path, settings: Settings) -> None:
    """A fax in normal mode is 204 dpi across and 98 dpi down: each pixel twice as tall as wide. Read
    as stored, every field was half as tall as its width says: of the sample form's 27 fields 8-16
    were found, and a few of those read surely as other numbers. Now its rows are resampled to square
    pixels first (`load.square_pixels`), and every box maps back to the fax's own pixels. Stored on
    its side (TIFF Orientation 6, 98 x 204 dpi as stored), the same."""
    import json

    from digitreader.pipeline.process import segment_document

    scan = Path(__file__).resolve().parents[1] / "examples" / "scans" / "scan-0001-00001.jpg"
    truth = json.loads(scan.with_name("scan-0001-00001.truth.json").read_text())
    form = Image.open(scan).convert("L")
    fine_dpi = form.info["dpi"][0]
    w, h = form.size
    sx, sy = 204 / fine_dpi, 98 / fine_dpi
    fax = form.resize((round(w * sx), round(h * sy)), Image.Resampling.LANCZOS)
    fax = fax.point(lambda v: 255 if v > 200 else 0).convert("1")  # bitonal, as a fax is
    path = tmp_path / "fax.tif"
    if turned:  # stored on its side: a viewer turns it 90 degrees clockwise (Orientation 6)
        fax.transpose(Image.Transpose.ROTATE_90).save(path, compression="group3", dpi=(98, 204), tiffinfo={274: 6})
    else:
        fax.save(path, compression="group3", dpi=(204, 98))
    (page,) = list(load_pages(path, settings))
    assert (page.width, page.height) == fax.size and page.dpi == 204
    assert abs(page.gray.shape[0] - fax.size[1] * 204 / 98) <= 1 and abs(page.y_scale - 98 / 204) < 0.01
    cut = segment_document(path, settings, None, None)
    assert not cut.failed
    (read,) = cut.pages
    true_fields = truth["pages"][0]["fields"]
    assert len(read.fields) >= len(true_fields) - 2
    found = 0
    for tf in true_fields:  # each true field's box, in the fax's pixels, holds a field found there
        x, y, bw, bh = tf["bbox"]
        cx, cy = (x + bw / 2) * sx, (y + bh / 2) * sy
        here = [
            f
            for f in read.fields
            if f.bbox[0] <= cx <= f.bbox[0] + f.bbox[2] and f.bbox[1] <= cy <= f.bbox[1] + f.bbox[3]
        ]
        if here:
            found += 1
            fb = here[0].bbox
            assert abs(fb[2] - bw * sx) <= 0.1 * bw * sx and abs(fb[3] - bh * sy) <= 0.15 * bh * sy, (fb, tf["bbox"])
    assert found >= len(true_fields) - 2
    # The review strips are cut where the fields are: each shows its field's box at square pixels.
    (strips,) = cut.strips
    assert len(strips) == len(read.fields)
    for f, st in zip(read.fields, strips, strict=True):
        assert st is not None
        img = cv2.imdecode(np.frombuffer(st.jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert img is not None
        _, _, bw, bh = st.box
        assert abs(img.shape[0] / img.shape[1] - (bh * 204 / 98) / bw) < 0.05 * (bh * 204 / 98) / bw
        # It shows what the form itself shows there (the page before it was faxed).
        x0, y0 = st.box[0] / sx, st.box[1] / sy
        ref = np.asarray(form)[int(y0) : int(y0 + bh / sy), int(x0) : int(x0 + bw / sx)]
        ref = cv2.resize(ref, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_AREA)
        assert np.corrcoef(ref.ravel().astype(float), img.ravel().astype(float))[0, 1] > 0.6, f.bbox


@pytest.mark.parametrize("margin", [0, 90])
def test_a_dark_margin_around_a_skewed_sheet_is_paper(margin: int, tmp_path: Path, settings: Settings) -> None:
    """A sheet smaller than the scanner's bed, lying 2.5 degrees skewed, with the bed around it black
    (the lid open) or grey. Before, the margin was read as ink: the skew was measured from its straight
    edges (0 degrees) and not one field of the form was found. Now the margin is paper
    (`prepare.fill_margins`): the skew is the sheet's, and the fields are those found without it, at
    the same place on the sheet."""
    import cv2

    from digitreader.pipeline.prepare import fill_margins, prepare_page
    from digitreader.pipeline.process import segment_document

    scan = Path(__file__).resolve().parents[1] / "examples" / "scans" / "scan-0001-00001.jpg"
    form = np.asarray(Image.open(scan).convert("L"))
    form = cv2.copyMakeBorder(form, 120, 120, 120, 120, cv2.BORDER_CONSTANT, value=235)  # the sheet's edges
    h, w = form.shape
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), 2.5, 1.0)
    sheet = cv2.warpAffine(form, turn, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=235)
    top, left = 150, 220
    bed = np.full((h + 2 * top, w + 2 * left), margin, np.uint8)
    bed[top : top + h, left : left + w] = sheet
    plain, framed = tmp_path / "sheet.png", tmp_path / "on-the-bed.png"
    Image.fromarray(sheet).save(plain, dpi=(300, 300))
    Image.fromarray(bed).save(framed, dpi=(300, 300))
    skews = [prepare_page(next(iter(load_pages(p, settings))), settings).skew_degrees for p in (plain, framed)]
    assert abs(skews[0] - skews[1]) < 0.3 and abs(skews[0]) > 2.0, skews
    want, got = segment_document(plain, settings, None, None), segment_document(framed, settings, None, None)
    assert not got.failed and len(want.pages[0].fields) >= 20
    boxes = sorted(f.bbox for f in got.pages[0].fields)
    moved = sorted((x + left, y + top, bw, bh) for x, y, bw, bh in (f.bbox for f in want.pages[0].fields))
    assert len(boxes) == len(moved)
    for a, b in zip(boxes, moved, strict=True):
        assert max(abs(u - v) for u, v in zip(a, b, strict=True)) <= 4, (a, b)
    assert np.array_equal(fill_margins(sheet, 300 / 25.4), sheet)  # no margin: the page as it is
    filled = fill_margins(bed, 300 / 25.4)
    assert (filled[:top] > 200).all() and np.array_equal(filled[top : top + h, left : left + w], sheet)


def test_uneven_light_is_no_margin(tmp_path: Path, settings: Settings) -> None:
    """A page darkened gradually towards its right edge (to 55 % of the paper's level: a lamp's fall-off,
    a book's curve) is as dark there as a grey scanner bed, but it is the page: it is not made paper
    (`fill_margins` asks a margin to meet paper at its edge), and the fields on its dark side are read
    as before `fill_margins` was written (for a while the right third of such a page, its fields with
    it, was whitened: 34 of 216 fields lost on 20 pages)."""
    from digitreader.pipeline.prepare import fill_margins
    from digitreader.pipeline.process import segment_document

    scan = Path(__file__).resolve().parents[1] / "examples" / "scans" / "scan-0001-00001.jpg"
    form = np.asarray(Image.open(scan).convert("L")).astype(np.float32)
    ramp = np.linspace(1.0, 0.55, form.shape[1], dtype=np.float32)[None, :]
    shaded = (form * ramp).astype(np.uint8)
    assert np.array_equal(fill_margins(shaded, 300 / 25.4), shaded)
    path = tmp_path / "shaded.png"
    Image.fromarray(shaded).save(path, dpi=(300, 300))
    want, got = segment_document(scan, settings, None, None), segment_document(path, settings, None, None)
    assert len(got.pages[0].fields) == len(want.pages[0].fields) >= 20


def test_a_faint_scan_is_read_as_the_same_page_with_contrast(tmp_path: Path, settings: Settings) -> None:
    """A form scanned light (its darkest ink 35 % as far from paper: a pale copy, a light scan,
    pencil). Before, the skew was taken as 0 (no pixel under the skew's fixed level of 170) and the
    ink levels were those of a page with black ink: 1 to 22 of a form's 27 fields were found, and
    most of their digits came out blank. Now the skew is measured at the page's own ink level and the
    ink levels are brought closer to paper by the page's contrast (`prepare.ink_levels`): the same
    fields as the page scanned with contrast, at the same places."""
    from digitreader.pipeline.prepare import ink_levels, prepare_page
    from digitreader.pipeline.process import segment_document

    scan = Path(__file__).resolve().parents[1] / "examples" / "scans" / "scan-0001-00001.jpg"
    form = np.asarray(Image.open(scan).convert("L")).astype(np.float32)
    light = np.clip(255 - (255 - form) * 0.35, 0, 255).astype(np.uint8)
    faint = tmp_path / "faint.png"
    Image.fromarray(light).save(faint, dpi=(300, 300))
    pages = [next(iter(load_pages(p, settings))) for p in (scan, faint)]
    normal, pale = (prepare_page(p, settings) for p in pages)
    assert abs(normal.skew_degrees) > 1.0 and abs(pale.skew_degrees - normal.skew_degrees) < 0.3
    assert normal.levels is not None and pale.levels is not None
    assert normal.levels[0] <= 195 and pale.levels[0] > 220  # the strong-ink level follows the contrast
    assert ink_levels(np.full((300, 300), 250, np.uint8))[0] <= 195  # a blank sheet: no faint ink
    want, got = segment_document(scan, settings, None, None), segment_document(faint, settings, None, None)
    assert not got.failed and len(want.pages[0].fields) >= 20
    boxes = sorted(f.bbox for f in got.pages[0].fields)
    assert len(boxes) == len(want.pages[0].fields)
    for a, b in zip(boxes, sorted(f.bbox for f in want.pages[0].fields), strict=True):
        assert max(abs(u - v) for u, v in zip(a, b, strict=True)) <= 4, (a, b)
    blanks = [sum(s.blank for f in c.pages[0].fields for s in f.slots) for c in (want, got)]
    assert abs(blanks[0] - blanks[1]) <= 2, blanks  # the digits are ink, not blank cells


@pytest.mark.parametrize(("crease", "lying"), [(False, False), (False, True), (True, False)])
def test_a_streak_along_the_scan_is_not_read_as_ink(
    crease: bool, lying: bool, tmp_path: Path, settings: Settings
) -> None:
    """Dust on a scanner's glass draws a thin dark line along the whole scan, through every field it
    meets; a fold leaves a soft shadow (40 % darker at its middle, 15 px wide at 300 dpi). Before, a
    streak joined the fields it crossed into one figure (7 of the sample form's 27 fields were lost),
    and a crease was ink. Now both are taken out (`prepare.remove_streaks`): the fields are those of
    the page without them, at the same places, but for one at most. A scan lying on its side has the
    streak across the page."""
    from digitreader.pipeline.prepare import remove_streaks
    from digitreader.pipeline.process import segment_document

    scan = Path(__file__).resolve().parents[1] / "examples" / "scans" / "scan-0001-00001.jpg"
    form = np.asarray(Image.open(scan).convert("L"))
    dirty = form.copy()
    if crease:  # a fold's shadow down the fields' column
        d = np.arange(form.shape[1], dtype=np.float32)[None, :] - 1302
        dirty = (form * (1 - 0.4 * np.exp(-(d**2) / (2 * (15 / 2.355) ** 2)))).astype(np.uint8)
    else:
        dirty[:, 1301:1304] = 25  # through the fields' column
    if lying:
        form, dirty = np.rot90(form).copy(), np.rot90(dirty).copy()
    clean_path, dirty_path = tmp_path / "clean.png", tmp_path / "streak.png"
    Image.fromarray(form).save(clean_path, dpi=(300, 300))
    Image.fromarray(dirty).save(dirty_path, dpi=(300, 300))
    want = segment_document(clean_path, settings, None, None)
    got = segment_document(dirty_path, settings, None, None)
    assert not got.failed and len(want.pages[0].fields) >= 20
    mine = sorted(f.bbox for f in got.pages[0].fields)
    same = [b for b in sorted(f.bbox for f in want.pages[0].fields) if any(
        max(abs(u - v) for u, v in zip(a, b, strict=True)) <= 4 for a in mine)]  # fmt: skip
    # Where the streak runs a few pixels beside a box's wall on the skewed sheet (here a string field's
    # right wall, 8 px away at 300 dpi), the wall is lost where it crosses the streak: that field may go.
    assert len(same) >= len(want.pages[0].fields) - 1 and len(mine) <= len(want.pages[0].fields)
    page = np.full((200, 300), 255, np.uint8)
    page[50:52, 20:280] = 0  # a line of the form, across the streak
    page[:, 150:152] = 0
    out = remove_streaks(page, 6.0)
    assert (out[:49, 150:152] == 255).all() and (out[50:52, 20:280] == 0).all()  # the line goes on across
    bar = np.full((200, 300), 255, np.uint8)
    bar[:, 100:130] = 0  # 5 mm wide: a black bar of the form, not a streak
    assert np.array_equal(remove_streaks(bar, 6.0), bar)


@pytest.mark.parametrize(("h", "w"), [(3, 4000), (6, 2480), (3508, 2), (1, 1)])
def test_a_sliver_of_a_page_is_prepared_without_an_error(h: int, w: int) -> None:
    """A page a few pixels thin (at 600 or 1200 dpi) was reduced to nothing: an OpenCV assertion, and the
    document failed as an internal error."""
    from digitreader.pipeline.prepare import prepare_page
    from digitreader.types import PageImage

    a = np.full((h, w), 255, np.uint8)
    a[::3, ::9] = 0
    for dpi in (None, 300, 600, 1200):
        prepared = prepare_page(PageImage(1, a, dpi=dpi))
        assert prepared.ink.size > 0 and (prepared.width, prepared.height) == (w, h)


@pytest.mark.parametrize("dither", [True, False])
def test_a_bilevel_scan_is_read_as_the_grey_page(dither: bool, tmp_path: Path, settings: Settings) -> None:
    """A scanner's black-and-white mode writes 1 bit a pixel: dithered, a form's light lines and the
    thin edges of strokes become scattered dots, and so does the paper's faint tone. Read as it
    was, the dots were specks of ink and the light lines broken: 18 of the sample form's 27 fields
    were read as on the grey page. Now a bilevel page is softened back to grey first
    (`prepare.soften_bilevel`): 26, at the same places with the same values. A page thresholded
    instead of dithered (its black in strokes, not dots) is left as it is (25), as softened it read
    worse on generated pages."""
    from digitreader.pipeline.prepare import soften_bilevel
    from digitreader.pipeline.process import segment_document

    scan = Path(__file__).resolve().parents[1] / "examples" / "scans" / "scan-0001-00001.jpg"
    form = Image.open(scan).convert("L")
    one = form.convert("1") if dither else form.point(lambda v: 255 if v > 160 else 0).convert("1")
    path = tmp_path / "bilevel.png"
    one.save(path, dpi=(300, 300))
    (page,) = list(load_pages(path, settings))
    assert set(np.unique(page.gray)) == {0, 255}
    assert (soften_bilevel(page.gray, 300 / 25.4) is not page.gray) == dither
    grey = np.asarray(form)
    assert soften_bilevel(grey, 300 / 25.4) is grey  # a grey scan is left as it is
    from digitreader.pipeline.recognize import Predictor

    predictor = Predictor.load(None, settings)

    def value(f: FieldCut) -> str:
        return _value(f, predictor)

    want, got = segment_document(scan, settings, None, None), segment_document(path, settings, None, None)
    assert not got.failed
    fields = {f.bbox: f for f in got.pages[0].fields}
    same = 0
    for w in want.pages[0].fields:
        near = [b for b in fields if max(abs(u - v) for u, v in zip(b, w.bbox, strict=True)) <= 6]
        if near and value(fields[near[0]]) == value(w):
            same += 1
    assert len(want.pages[0].fields) >= 20 and same >= len(want.pages[0].fields) - 2, (same, len(want.pages[0].fields))


@pytest.mark.parametrize("degrees", [20.0, -32.0])
def test_a_sheet_fed_turned_beyond_15_degrees_is_deskewed(degrees: float, tmp_path: Path, settings: Settings) -> None:
    """A sheet laid crooked on the glass or fed at an angle, turned 20 or 32 degrees. The skew was
    searched within 15 degrees only: such a page was deskewed by 6 or 15 degrees, and not one of
    the sample form's 27 fields was read as on the upright page. Now a coarse look beyond 15 degrees,
    to 45 (`prepare.WIDE_SKEW`), finds the page's own angle where the ink's profile is sharper there
    than anywhere within 15: 27 and 25 fields read as the upright page's."""
    from digitreader.pipeline.prepare import prepare_page

    scan = Path(__file__).resolve().parents[1] / "examples" / "scans" / "scan-0001-00001.jpg"
    form = np.asarray(Image.open(scan).convert("L"))
    h, w = form.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    a = np.radians(abs(degrees))
    nw, nh = int(w * np.cos(a) + h * np.sin(a)) + 1, int(h * np.cos(a) + w * np.sin(a)) + 1
    m[0, 2] += (nw - w) / 2
    m[1, 2] += (nh - h) / 2
    path = tmp_path / "turned.png"
    Image.fromarray(cv2.warpAffine(form, m, (nw, nh), borderValue=255)).save(path, dpi=(300, 300))
    upright, turned = (prepare_page(next(iter(load_pages(p, settings))), settings) for p in (scan, path))
    assert abs(turned.skew_degrees - upright.skew_degrees - degrees) < 0.5, (turned.skew_degrees, upright.skew_degrees)
    want, got, same = _read_alike(scan, path, settings)
    assert len(want) >= 20 and same >= len(want) - 2, (same, len(want))


def _form_in_colour(form: np.ndarray, truth: dict, rgb: tuple[int, int, int]) -> np.ndarray:
    """The grey sample form as if printed in the light colour `rgb` (RGB), its digits written in
    blue-black ink (inside the truth's digit boxes), as `benchmarks/bench_scanner.py` makes it."""
    paper = float(np.percentile(form[::8, ::8], 90))
    t = np.clip(1.0 - form.astype(np.float32) / paper, 0.0, 1.0)[..., None]
    writing = np.zeros(form.shape, bool)
    for f in truth["pages"][0]["fields"]:
        for d in f["digits"]:
            x, y, w, h = d["bbox"]
            writing[max(0, y - 1) : y + h + 1, max(0, x - 1) : x + w + 1] = True
    ink = np.array([25, 30, 90], np.float32)
    colour = np.where(writing[..., None] & (t > 0.2), ink, np.array(rgb, np.float32))
    return np.clip(paper * (1.0 - t) + np.minimum(colour, paper) * t, 0, 255).astype(np.uint8)


def test_a_colour_page_is_grey_by_its_darkest_channel_with_a_floor() -> None:
    """`colour_to_gray`: a page without colour is its luminance (the same pixels as before); on a page
    with colour, a salmon-red line is as dark as its darkest channel, and a yellow highlighter no
    darker than twice its luminance's darkness."""
    from digitreader.pipeline.normalize import colour_to_gray, is_colourful, to_gray

    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (200, 300), dtype=np.uint8)
    bgr = np.stack([grey, grey, grey], axis=2).astype(np.int16)
    noisy = np.minimum(bgr + rng.integers(0, 4, bgr.shape), 255).astype(np.uint8)  # a grey page's colour noise
    assert not is_colourful(noisy)
    assert (colour_to_gray(noisy) == cv2.cvtColor(noisy, cv2.COLOR_BGR2GRAY)).all()
    page = np.full((200, 300, 3), 245, np.uint8)
    page[50:54, :] = (120, 130, 240)  # BGR: a salmon-red line (luminance 162)
    page[100:130, 50:250] = (100, 240, 255)  # a yellow highlight (luminance 228)
    assert is_colourful(page)
    g = to_gray(page)
    assert g[52, 10] == 120 and cv2.cvtColor(page, cv2.COLOR_BGR2GRAY)[52, 10] == 162
    lum = int(cv2.cvtColor(page, cv2.COLOR_BGR2GRAY)[110, 100])
    assert g[110, 100] == 2 * lum - 255 > 195  # lighter than any strong ink
    assert (colour_to_gray(page[..., ::-1].copy(), rgb=True) == g).all()


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_a_form_printed_in_a_light_colour_is_read_as_the_grey_form(
    fmt: str, tmp_path: Path, settings: Settings
) -> None:
    """A form printed in a light colour (a dropout red) and filled in blue-black ink, scanned in colour.
    By luminance alone its lines came out at grey 160-200, paler than ink, half lost where the digits
    touch them: 23 (PNG) and 22 (JPEG) of the sample form's 27 fields were read as on the grey form.
    Now a colour page is grey by its darkest channel (`normalize.colour_to_gray`): 27 and 27."""
    import json

    scan = Path(__file__).resolve().parents[1] / "examples" / "scans" / "scan-0001-00001.jpg"
    truth = json.loads(scan.with_name("scan-0001-00001.truth.json").read_text())
    form = np.asarray(Image.open(scan).convert("L"))
    path = tmp_path / f"red.{fmt}"
    Image.fromarray(_form_in_colour(form, truth, (240, 130, 120))).save(path, dpi=(300, 300), quality=90)
    (page,) = list(load_pages(path, settings))
    lum = np.asarray(Image.open(path).convert("L"))
    assert float(page.gray.mean()) < float(lum.mean()) - 1.0  # the red lines darker than by luminance
    want, got, same = _read_alike(scan, path, settings)
    assert len(want) >= 20 and same >= len(want) - 2, (same, len(want))


def test_a_patch_of_solid_ink_is_not_taken_for_a_sheet_turned_45_degrees(settings: Settings) -> None:
    """A normal-mode fax whose shadowed corner its threshold made solid black: that patch's ink,
    most of the page's, projects sharpest at the coarse look's far edge, 45 degrees, and the page
    was turned so (every field lost, where only the patch's were before). A peak at the look's edge
    is no peak (`prepare._wide_skew`): the page's own skew, under a degree, is kept."""
    from digitreader.pipeline.prepare import prepare_page

    (page,) = list(load_pages(DATA / "fax-shadow.tif", settings))
    assert abs(prepare_page(page, settings).skew_degrees) < 1.0


def test_the_back_of_the_sheet_showing_through_is_not_taken_for_boxes(tmp_path: Path, settings: Settings) -> None:
    """Thin paper shows the back of the sheet (bleed-through): here the next sample page, mirrored and
    softened by the paper, darkening the form by 20 % of its own darkness. The back's boxes, 20-30
    levels under paper, counted as faint box lines and joined the front's boxes into pieces that
    formed no field: 17 of the sample form's 27 fields were read as on the clean form. Now a faint
    pixel counts for the line image only on a thin line (`fields.faint_line_mask`): 23 (the back's
    digits touching the front's are still read with them). A line printed light, 2 or 4 pixels wide,
    still counts; a wide soft band does not."""
    from digitreader.pipeline.fields import faint_line_mask

    scans = Path(__file__).resolve().parents[1] / "examples" / "scans"
    scan = scans / "scan-0001-00001.jpg"
    front = np.asarray(Image.open(scan).convert("L")).astype(np.float32)
    back = np.asarray(Image.open(scans / "scan-0001-00002.jpg").convert("L"))
    back = cv2.resize(back, (front.shape[1], front.shape[0]), interpolation=cv2.INTER_AREA)[:, ::-1]
    soft = cv2.GaussianBlur(back, (0, 0), 2.5).astype(np.float32) / 255.0
    path = tmp_path / "bleed.png"
    Image.fromarray(np.clip(front * (1.0 - 0.2 * (1.0 - soft)), 0, 255).astype(np.uint8)).save(path, dpi=(300, 300))
    line = np.full((40, 60), 255, np.uint8)
    line[19:21] = 215  # a thin line printed light: kept
    line[5:12] = cv2.GaussianBlur(np.full((7, 60), 215, np.uint8), (0, 0), 2.0)[:, :]  # a wide soft band
    line[5:12] = np.clip(255 - (255 - line[5:12].astype(int)) * np.hanning(9)[1:8, None], 0, 255).astype(np.uint8)
    line[30:34] = 215  # a line 4 pixels wide, printed light: kept by its sharp edges
    kept = faint_line_mask(line, 229.0)
    assert kept[19:21].all() and kept[30:34].all() and not kept[5:12, 5:55].any()
    want, got, same = _read_alike(scan, path, settings)
    assert len(want) >= 20 and same >= len(want) - 5, (same, len(want))
