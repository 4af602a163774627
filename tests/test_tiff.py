"""The TIFF fast path (libdeflate, strips read from the file) against Pillow on TIFFs written here
tag by tag, and its fallbacks to Pillow for what it does not handle."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitreader.errors import InputError
from digitreader.pipeline import tiff
from digitreader.pipeline.load import load_pages
from digitreader.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

SHORT, LONG, RATIONAL = 3, 4, 5


def _ifd(entries: dict[int, tuple[int, list[int]]], at: int) -> tuple[bytes, bytes]:
    """An IFD at offset `at` (entries: tag -> (type, values)), and its out-of-line values after it."""
    n = len(entries)
    extra_at = at + 2 + 12 * n + 4
    head, extra = struct.pack("<H", n), b""
    for tag in sorted(entries):
        kind, values = entries[tag]
        if kind == RATIONAL:
            payload = b"".join(struct.pack("<II", v, 1) for v in values)
        else:
            payload = b"".join(struct.pack("<H" if kind == SHORT else "<I", v) for v in values)
        if len(payload) <= 4:
            head += struct.pack("<HHI", tag, kind, len(values)) + payload.ljust(4, b"\0")
        else:
            head += struct.pack("<HHII", tag, kind, len(values), extra_at + len(extra))
            extra += payload + b"\0" * (len(payload) % 2)
    return head, extra


def write_tiff(
    pages: list[np.ndarray],
    *,
    compression: int = 8,
    predictor: int = 1,
    rows: int = 7,
    white_is_zero: bool = False,
    orientation: int | None = None,
) -> bytes:
    """A little-endian TIFF of 8-bit grey (h, w) or RGB (h, w, 3) pages in strips of `rows` rows."""
    out = bytearray(b"II*\0\0\0\0\0")
    first_ifd_slot = 4
    for img in pages:
        h, w = img.shape[:2]
        spp = 1 if img.ndim == 2 else img.shape[2]
        stored = (255 - img if white_is_zero else img).astype(np.int16).reshape(h, w * spp)
        if predictor == 2:
            stored = stored.copy()
            stored[:, spp:] = stored[:, spp:] - stored[:, :-spp]
        raw = (stored % 256).astype(np.uint8)
        offsets, counts = [], []
        for y in range(0, h, rows):
            data = raw[y : y + rows].tobytes()
            data = zlib.compress(data) if compression in tiff.DEFLATE else data
            offsets.append(len(out))
            counts.append(len(data))
            out += data + b"\0" * (len(data) % 2)
        entries: dict[int, tuple[int, list[int]]] = {
            256: (LONG, [w]),
            257: (LONG, [h]),
            258: (SHORT, [8] * spp),
            259: (SHORT, [compression]),
            262: (SHORT, [2 if spp == 3 else (0 if white_is_zero else 1)]),
            273: (LONG, offsets),
            277: (SHORT, [spp]),
            278: (LONG, [rows]),
            279: (LONG, counts),
            282: (RATIONAL, [300]),
            283: (RATIONAL, [300]),
            284: (SHORT, [1]),
            296: (SHORT, [2]),
        }
        if predictor != 1:
            entries[317] = (SHORT, [predictor])
        if orientation is not None:
            entries[274] = (SHORT, [orientation])
        at = len(out)
        struct.pack_into("<I", out, first_ifd_slot, at)
        head, extra = _ifd(entries, at)
        first_ifd_slot = at + len(head)
        out += head + b"\0\0\0\0" + extra
    return bytes(out)


@pytest.fixture(scope="module")
def page() -> np.ndarray:
    rng = np.random.default_rng(5)
    img = np.full((45, 37), 230, np.uint8)
    img[10:30, 5:9] = 20
    return np.clip(img.astype(np.int16) + rng.integers(-25, 26, img.shape), 0, 255).astype(np.uint8)


def _fast(data: bytes, index: int = 0) -> np.ndarray | None:
    im = Image.open(io.BytesIO(data))
    im.seek(index)
    return tiff.decode_frame(data, im)


@pytest.mark.parametrize("compression", [1, 8, 32946])
@pytest.mark.parametrize("predictor", [1, 2])
@pytest.mark.parametrize("rows", [1, 7, 45, 64])
def test_grey_strips_decode_as_pillow_does(page: np.ndarray, compression: int, predictor: int, rows: int) -> None:
    data = write_tiff([page], compression=compression, predictor=predictor, rows=rows)
    if compression == 1 and predictor == 2:  # a predictor on raw strips: readers differ, Pillow decides
        assert _fast(data) is None
        return
    ref = np.asarray(Image.open(io.BytesIO(data)))
    assert np.array_equal(ref, page)  # a valid TIFF: Pillow reads the page back
    out = _fast(data)
    assert out is not None and out.dtype == np.uint8 and np.array_equal(out, page)


def test_white_is_zero_and_rgb(page: np.ndarray) -> None:
    out = _fast(write_tiff([page], white_is_zero=True, predictor=2))
    assert out is not None and np.array_equal(out, page)
    rgb = np.stack([page, 255 - page, np.roll(page, 3, axis=1)], axis=2)
    out = _fast(write_tiff([rgb], predictor=2))
    assert out is not None and np.array_equal(out, rgb)


def test_multi_page_files_through_the_loader(tmp_path: Path, page: np.ndarray) -> None:
    pages = [page, 255 - page, np.flipud(page)]
    path = tmp_path / "three.tif"
    path.write_bytes(write_tiff(pages, predictor=2))
    assert all(_fast(path.read_bytes(), i) is not None for i in range(3))  # the fast path, page by page
    got = list(load_pages(path, Settings()))
    assert [p.number for p in got] == [1, 2, 3]
    for p, want in zip(got, pages, strict=True):
        assert np.array_equal(p.gray, want) and p.dpi == 300


def test_what_it_does_not_handle_is_left_to_pillow(tmp_path: Path, page: np.ndarray) -> None:
    # LZW (Pillow writes it with libtiff): None here; the loader's Pillow path then gives the page. A
    # strip whose zlib header is damaged: DamagedStrip, an error.
    lzw = tmp_path / "lzw.tif"
    Image.fromarray(page).save(lzw, compression="tiff_lzw")
    assert _fast(lzw.read_bytes()) is None
    assert np.array_equal(next(iter(load_pages(lzw, Settings()))).gray, page)

    good = write_tiff([page], rows=45)
    start = good.index(zlib.compress(page.tobytes())[:8])
    broken = bytearray(good)
    broken[start : start + 2] = b"\xff\xff"  # the strip's zlib header
    with pytest.raises(tiff.DamagedStrip):
        _fast(bytes(broken))
    (tmp_path / "broken.tif").write_bytes(bytes(broken))
    with pytest.raises(InputError):
        list(load_pages(tmp_path / "broken.tif", Settings()))


#: EXIF/TIFF orientation -> how the page as stored is made from the page as a viewer shows it.
STORED = {
    1: lambda v: v,
    2: lambda v: v[:, ::-1],
    3: lambda v: v[::-1, ::-1],
    4: lambda v: v[::-1],
    5: lambda v: v.T,
    6: lambda v: np.rot90(v, 1),
    7: lambda v: np.rot90(v, 2).T,
    8: lambda v: np.rot90(v, -1),
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_turned_page_is_read_as_a_viewer_shows_it(tmp_path: Path, page: np.ndarray, orientation: int) -> None:
    """Every Orientation, on the fast path (Deflate, uncompressed) and on Pillow's (LZW; an uncompressed
    page in one strip, which Pillow 13 decoded as sheared garbage for 5-8: it mapped the file with the
    turned size), and on every page of a multi-page file (before, only the first was turned)."""
    view = page
    stored = np.ascontiguousarray(STORED[orientation](view))
    files = {
        "deflate": write_tiff([stored], orientation=orientation),
        "raw": write_tiff([stored], orientation=orientation, compression=1, rows=stored.shape[0]),
        "raw_strips": write_tiff([stored], orientation=orientation, compression=1, rows=7),
        "two_pages": write_tiff([page, stored], orientation=orientation, compression=1, rows=64),
    }
    lzw = io.BytesIO()
    Image.fromarray(stored).save(lzw, format="TIFF", compression="tiff_lzw", tiffinfo={274: orientation})
    files["lzw"] = lzw.getvalue()
    for name, data in files.items():
        path = tmp_path / f"{name}.tif"
        path.write_bytes(data)
        got = list(load_pages(path, Settings()))[-1]
        assert got.gray.shape == view.shape and np.array_equal(got.gray, view), name


def test_a_strip_damaged_past_its_header_fails_its_page(tmp_path: Path, page: np.ndarray) -> None:
    """Corrupt Deflate data past the zlib header: Pillow's libtiff inflates it without an error (a band
    of garbage), zlib does not; the page fails with a clear error instead of being read wrong. A
    stream only cut short, or without its checksum, is left to Pillow as before."""
    good = write_tiff([page], rows=45)
    stream = zlib.compress(page.tobytes())
    start = good.index(stream[:8])
    broken = bytearray(good)
    middle = start + len(stream) // 2
    broken[middle : middle + 16] = bytes(16)
    path = tmp_path / "damaged.tif"
    path.write_bytes(bytes(broken))
    with Image.open(path) as im:
        im.load()  # what the loader used to fall back to: no complaint
    with pytest.raises(tiff.DamagedStrip):
        _fast(bytes(broken))
    with pytest.raises(InputError) as err:
        list(load_pages(path, Settings()))
    assert err.value.code == "unreadable" and "(page 1)" in str(err.value) and "damaged" in str(err.value)
    tiff._check_stream(stream[:-4], 0)  # no checksum
    tiff._check_stream(stream[: len(stream) // 2], 0)  # cut short
    with pytest.raises(tiff.DamagedStrip, match="strip 3"):
        tiff._check_stream(bytes(broken[start : start + len(stream)]), 2)


def _blank_sheet_tiff(to: Path, blank_at: Sequence[int], count: int) -> Path:
    """A multi-page TIFF of the sample form with blank white sheets at the 1-based `blank_at`."""
    form = Image.open(ROOT / "examples" / "scans" / "scan-0003-00001.png").convert("L")
    sheets = [Image.new("L", form.size, 255) if n in blank_at else form for n in range(1, count + 1)]
    sheets[0].save(to, save_all=True, append_images=sheets[1:], compression="tiff_deflate")
    return to


def test_a_blank_sheet_inside_a_multi_page_document_is_a_page_with_no_field(tmp_path: Path) -> None:
    """The back of a form scanned duplex: before, the whole document failed `blank_page`."""
    from digitreader.pipeline.document import join_parts, segment_document
    from workers.codec import decode_cut, encode_cut

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    cut = segment_document(_blank_sheet_tiff(tmp_path / "duplex.tif", (2,), 3), settings)
    assert not cut.failed, cut.error_message
    assert [(p.number, p.blank, bool(p.fields)) for p in cut.pages] == [
        (1, False, True),
        (2, True, False),
        (3, False, True),
    ]
    assert cut.pages[1].fields == () and len(cut.strips) == 3 and decode_cut(encode_cut(cut)).pages[1].blank
    # Blank sheets only: the document fails, as one blank page does.
    only = segment_document(_blank_sheet_tiff(tmp_path / "blank.tif", (1, 2), 2), settings)
    assert only.error_code == "blank_page" and only.pages == ()
    # Read in parts (a long document): judged once joined.
    parts = [segment_document(tmp_path / "blank.tif", settings, pages=(n, n)) for n in (1, 2)]
    assert not any(p.failed for p in parts) and join_parts(parts).error_code == "blank_page"
    mixed = [segment_document(tmp_path / "duplex.tif", settings, pages=(n, n)) for n in (1, 2)]
    assert [p.number for p in join_parts(mixed).pages] == [1, 2]
