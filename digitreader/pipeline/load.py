"""Load stage: a file -> its pages as greyscale uint8 arrays (`PageImage`), one page at a time.

Formats: PNG, JPEG, TIFF (multi-page; 1-, 8-, 16-bit; with or without alpha), BMP (anything Pillow
decodes), and PDF (each page rasterized by pdfium at `settings.pdf_dpi`). EXIF orientation is
honoured; colour becomes grey; transparent areas become paper. The page-size limit
(`settings.max_page_pixels`) is checked from the header (or the PDF page size) *before* any pixel is
decoded, so a decompression bomb costs nothing.

Every failure is an `InputError` naming the file (and page) with one of the codes:
unreadable, truncated, unsupported, encrypted, too_large, empty_file, empty_page.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import logging
import mmap
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from digitreader.errors import InputError
from digitreader.pipeline.normalize import to_gray
from digitreader.pipeline.tiff import ORIENTATION, DamagedStrip, decode_frame
from digitreader.settings import Settings
from digitreader.types import PageImage

log = logging.getLogger(__name__)

PDF_MAGIC = b"%PDF"


def _sniff(path: Path, settings: Settings) -> bytes:
    """Check the file exists, is not empty and not too big; return its first bytes."""
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise InputError("is a folder, not a file", path=path, code="unreadable")
        with path.open("rb") as fh:
            head = fh.read(16)
    except FileNotFoundError as exc:
        raise InputError("no such file", path=path, code="unreadable") from exc
    except PermissionError as exc:
        raise InputError("permission denied", path=path, code="unreadable") from exc
    except OSError as exc:
        raise InputError(f"cannot read the file ({exc.strerror or exc})", path=path, code="unreadable") from exc
    if size == 0:
        raise InputError("the file is empty (0 bytes)", path=path, code="empty_file")
    if size > settings.max_file_bytes:
        raise InputError(
            f"the file is {size:,} bytes, more than the limit of {settings.max_file_bytes:,}",
            path=path,
            code="too_large",
            hint="raise DIGITREADER_MAX_FILE_BYTES if this file is genuine",
        )
    return head


def _supported_kind(head: bytes) -> str | None:
    """The supported image format a file's first bytes announce (PNG, JPEG, TIFF, BMP), or None."""
    from digitreader.pipeline.png import SIGNATURE

    if head.startswith(SIGNATURE):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if head.startswith(b"BM") and len(head) >= 10 and head[6:10] == bytes(4):  # its reserved bytes: zero
        return "BMP"
    return None


def _describe(head: bytes) -> str:
    if head.startswith((b"PK\x03\x04",)):
        return "a ZIP archive (e.g. a Word or OpenDocument file)"
    if head.startswith(b"GIF8"):
        return "a GIF image"
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "an unknown binary format"


def count_pages(path: str | Path, settings: Settings) -> int:
    """Number of pages in a document, without decoding pixels."""
    p = Path(path)
    head = _sniff(p, settings)
    if head.startswith(PDF_MAGIC):
        doc = _open_pdf(p)
        try:
            return len(doc)
        finally:
            doc.close()
    with _open_image(p, head) as im:
        return _frame_count(p, im)


def load_pages(
    path: str | Path, settings: Settings, *, max_reduction: int = 1, pages: tuple[int, int] | None = None
) -> Iterator[PageImage]:
    """Yield the pages of a document as `PageImage`s (greyscale uint8, dark ink on light paper).

    `pages` (first, last), numbered from 1, both included: only those pages (a long PDF or TIFF is
    segmented in parts on several cores); the pages before `first` are not decoded.

    `max_reduction` (1, 2, 4 or 8): the caller accepts a page reduced by up to this factor, never
    below segmentation's working resolution (`prepare.WORK_DPI`). Only JPEG uses it, decoding at the
    reduced size directly (libjpeg's DCT scaling: several times faster than a full decode, and the
    same pixels as a full decode followed by an area reduction). `PageImage.reduction` says what
    was done; `width`/`height` stay those of the page as submitted.
    """
    p = Path(path)
    head = _sniff(p, settings)
    span = range(pages[0] - 1, pages[1]) if pages is not None else None
    if head.startswith(PDF_MAGIC):
        yield from _pdf_pages(p, settings, span)
    else:
        yield from _image_pages(p, head, settings, max_reduction, span)


# ----------------------------------------------------------------------------------------------
# raster images


def _open_image(path: Path, head: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise InputError(f"the image is too large to decode safely ({exc})", path=path, code="too_large") from exc
    except UnidentifiedImageError as exc:
        kind = _supported_kind(head)
        if kind is not None:  # before, "not a supported image (the content looks like an unknown binary format)"
            raise InputError(
                f"a {kind} file that cannot be opened: cut short or damaged before its first page",
                path=path,
                code="truncated",
            ) from exc
        raise InputError(
            f"not a supported image or PDF (the content looks like {_describe(head)})",
            path=path,
            code="unsupported",
            hint="supported: PNG, JPEG, TIFF, BMP, PDF",
        ) from exc
    except (EOFError, SyntaxError) as exc:
        raise InputError(f"the file is cut short ({exc})", path=path, code="truncated") from exc
    except OSError as exc:
        raise InputError(f"cannot read the image ({exc})", path=path, code="unreadable") from exc


def _check_size(w: int, h: int, settings: Settings, path: Path, page: int) -> None:
    if w <= 0 or h <= 0:
        raise InputError(f"the page has no pixels ({w}x{h})", path=path, page=page, code="empty_page")
    if w * h > settings.max_page_pixels:
        raise InputError(
            f"the page is {w}x{h} = {w * h:,} pixels, more than the limit of {settings.max_page_pixels:,}",
            path=path,
            page=page,
            code="too_large",
            hint="raise DIGITREADER_MAX_PAGE_PIXELS if this scan is genuine",
        )


def _to_array(im: Image.Image) -> np.ndarray:
    """Pillow image (any mode) -> numpy array that `to_gray` understands (grey, BGR or BGRA)."""
    mode = im.mode
    if mode in ("L", "RGB") and "transparency" in im.info:  # a PNG's tRNS key colour: see-through
        a = np.asarray(im.convert("RGBA"))
        return a[..., [2, 1, 0, 3]]
    if mode in ("1", "L", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return np.asarray(im)
    if mode == "I":
        a = np.asarray(im)
        return np.clip(a, 0, 65535).astype(np.uint16) if a.max(initial=0) > 255 else a.astype(np.uint8)
    if mode in ("LA", "PA", "RGBA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        a = np.asarray(im.convert("RGBA"))
        return a[..., [2, 1, 0, 3]]
    a = np.asarray(im if mode == "RGB" else im.convert("RGB"))
    return a[..., ::-1]


# EXIF orientation -> (transpose first?, rotate k quarter turns counter-clockwise, flip left-right after)
_ORIENT = {
    2: (False, 0, True),
    3: (False, 2, False),
    4: (False, 2, True),
    5: (True, 0, False),
    6: (False, 3, False),
    7: (True, 2, False),
    8: (False, 1, False),
}


def oriented(arr: np.ndarray, orient: int) -> np.ndarray:
    """The pixels as stored, turned as the EXIF/TIFF orientation `orient` says (1-8; others: as stored)."""
    if orient not in _ORIENT:
        return arr
    transpose, k, flip = _ORIENT[orient]
    if transpose:
        arr = np.swapaxes(arr, 0, 1)
    arr = np.rot90(arr, k)
    return arr[:, ::-1] if flip else arr


_REDUCED = {2: "IMREAD_REDUCED_GRAYSCALE_2", 4: "IMREAD_REDUCED_GRAYSCALE_4", 8: "IMREAD_REDUCED_GRAYSCALE_8"}


def _jpeg_reduction(im: Image.Image, max_reduction: int) -> int:
    """The largest power of two <= max_reduction that keeps the page at the working resolution."""
    from digitreader.pipeline.prepare import px_per_mm, work_factor

    if max_reduction <= 1 or im.format != "JPEG" or im.mode not in ("L", "RGB"):
        return 1
    limit = min(max_reduction, work_factor(px_per_mm(im.width, im.height, _dpi(im))))
    r = 1
    while r * 2 <= limit and r * 2 in _REDUCED:
        r *= 2
    return r


def _fast_decode(path: Path, im: Image.Image, reduction: int = 1) -> np.ndarray | None:
    """Decode a complete single-frame PNG/JPEG/BMP with OpenCV (several times faster than Pillow).

    Returns None when the file does not end properly (Pillow then reports the exact problem).
    """
    import cv2

    fmt = im.format
    if fmt not in ("PNG", "JPEG", "BMP") or getattr(im, "n_frames", 1) != 1:
        return None
    if im.mode not in ("L", "RGB", "1", "P", "RGBA", "LA", "I;16", "I;16B", "I"):
        return None
    if im.mode in ("L", "RGB") and "transparency" in im.info:
        return None  # a tRNS key colour, which these decoders drop: Pillow's path makes it paper
    data = path.read_bytes()
    if fmt == "PNG" and b"IEND" not in data[-32:]:
        return None
    if fmt == "JPEG" and b"\xff\xd9" not in data[-16:]:
        return None
    flags = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
    if im.mode in ("L", "1") and fmt != "BMP":
        flags = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION
    if im.mode == "RGB" and fmt == "JPEG":
        # In colour (`to_gray`: a form printed in a light colour), reduced as allowed: about 10 ms more
        # than the grey alone on a 300-dpi A4 page, 19 where it holds colour (a thumbnail to judge the
        # colour first costs a whole decode's entropy decoding).
        flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        if reduction > 1:
            flags = getattr(cv2, f"IMREAD_REDUCED_COLOR_{reduction}") | cv2.IMREAD_IGNORE_ORIENTATION
    elif reduction > 1:
        flags = getattr(cv2, _REDUCED[reduction]) | cv2.IMREAD_IGNORE_ORIENTATION
    arr = None
    if fmt == "PNG" and im.mode in ("L", "RGB") and reduction == 1:
        from digitreader.pipeline.png import decode_png

        arr = decode_png(data)  # 8-bit grey/RGB: libdeflate + C unfiltering, the same pixels faster
    if arr is None:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    want = (-(-im.height // reduction), -(-im.width // reduction))
    if arr is None or arr.shape[:2] != want:
        return None
    orient = 1
    try:
        # PNG: only an eXIf chunk before the image data (getexif() would decode the whole image).
        if fmt == "JPEG" or "exif" in im.info:
            exif = im.getexif() if fmt == "JPEG" else Image.Exif()
            if fmt != "JPEG":
                exif.load(im.info["exif"])
            orient = int(exif.get(0x0112, 1))
    except Exception:  # a broken EXIF block is not a broken image
        orient = 1
    return oriented(arr, orient)


def _image_pages(
    path: Path, head: bytes, settings: Settings, max_reduction: int = 1, span: range | None = None
) -> Iterator[PageImage]:
    im = _open_image(path, head)
    with im:
        n = _frame_count(path, im)
        indices = range(n) if span is None else range(max(0, span.start), min(n, span.stop))
        if n == 1 and 0 in indices:
            _check_size(im.width, im.height, settings, path, 1)
            r = _jpeg_reduction(im, max_reduction)
            fast = _fast_decode(path, im, r)
            if fast is None and r > 1:
                r, fast = 1, _fast_decode(path, im)
            if fast is not None:
                gray = to_gray(fast)
                size = None
                if r > 1:  # the page as submitted, after the EXIF orientation (a quarter turn swaps)
                    unturned = gray.shape == (-(-im.height // r), -(-im.width // r))
                    size = (im.width, im.height) if unturned else (im.height, im.width)
                yield square_pixels(
                    PageImage(
                        number=1,
                        gray=np.ascontiguousarray(gray),
                        dpi=_dpi(im),
                        source=str(path),
                        reduction=r,
                        full_size=size,
                    ),
                    _dpi_ratio(im),
                )
                return
        yield from _frames(path, im, indices, settings)


#: What Pillow raises on a TIFF page directory it cannot make sense of: cut short, its tags pointing
#: past the end of the file ("Missing dimensions" is a TypeError), or damaged.
_DIRECTORY_ERRORS = (EOFError, OSError, TypeError, SyntaxError, KeyError, ValueError, struct.error)


def _frame_count(path: Path, im: Image.Image) -> int:
    """The pages of an image file. Pillow counts a TIFF's pages by walking its chain of page
    directories; in a file cut short or damaged there, the walk failed with whatever it met (a
    TypeError, "internal error") or ended early without a word (a 3-page file read as 1 page, "done").
    Either is now the document's "truncated" error."""
    try:
        with warnings.catch_warnings():  # Pillow warns of each directory it cannot read; the error says it
            warnings.simplefilter("ignore", UserWarning)
            n = int(getattr(im, "n_frames", 1))
    except _DIRECTORY_ERRORS as exc:
        message = f"a page's directory is cut short or damaged (Pillow: {exc})"
        raise InputError(message, path=path, code="truncated") from exc
    broken = _tiff_chain_break(path) if im.format == "TIFF" else None
    if broken is not None:
        raise InputError(f"the file is cut short or damaged: {broken}", path=path, code="truncated")
    return n


def _tiff_chain_break(path: Path, limit: int = 100_000) -> str | None:
    """Where a classic TIFF's chain of page directories leaves the file (a directory, or the link to
    the next one, past its end), or None when it ends within it. Only the directories' heads and
    links are read. BigTIFF and anything odd (a loop, a bad header) are left to Pillow."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            order = {b"II": "<", b"MM": ">"}.get(head[:2])
            if order is None or len(head) < 8 or struct.unpack(order + "H", head[2:4])[0] != 42:
                return None
            offset = struct.unpack(order + "I", head[4:8])[0]
            seen: set[int] = set()
            while offset and len(seen) < limit and offset not in seen:
                seen.add(offset)
                page = len(seen)
                if offset + 2 > size:
                    return f"page {page}'s directory lies past its end (at byte {offset:,} of {size:,})"
                fh.seek(offset)
                entries = struct.unpack(order + "H", fh.read(2))[0]
                link = offset + 2 + 12 * entries
                if link + 4 > size:
                    return f"page {page}'s directory ends past its end (at byte {link + 4:,} of {size:,})"
                fh.seek(link)
                offset = struct.unpack(order + "I", fh.read(4))[0]
    except OSError:
        return None  # unreadable: opening it has already said so, or decoding will
    return None


def _tiff_bytes(path: Path, stack: contextlib.ExitStack) -> mmap.mmap | None:
    """The file mapped into memory (a multi-page TIFF is not read whole), or None when it cannot be."""
    try:
        fh = stack.enter_context(path.open("rb"))
        return stack.enter_context(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
    except (OSError, ValueError):
        return None


def _frames(path: Path, im: Image.Image, indices: range, settings: Settings) -> Iterator[PageImage]:
    """The frames `indices` (from 0) of a multi-page (or not fast-decoded) image, decoded by Pillow;
    TIFF frames that `tiff.decode_frame` handles (8-bit strips, Deflate or none) without it."""
    with contextlib.ExitStack() as stack:
        data = _tiff_bytes(path, stack) if im.format == "TIFF" else None  # mapped once for every page
        for index in indices:
            number = index + 1
            try:
                if index:
                    im.seek(index)
            except _DIRECTORY_ERRORS as exc:
                raise InputError(f"cannot reach this page ({exc})", path=path, page=number, code="truncated") from exc
            _check_size(im.width, im.height, settings, path, number)
            try:
                arr = decode_frame(data, im) if data is not None else None
            except DamagedStrip as exc:
                message = f"the image data is damaged: {exc}"
                raise InputError(message, path=path, page=number, code="unreadable") from exc
            if arr is None:
                arr = _pillow_frame(path, im, number, data)
            else:
                if arr.ndim == 3:
                    arr = arr[..., ::-1]  # RGB -> BGR, as _to_array gives it
                arr = oriented(arr, tiff_orientation(im))  # as a viewer shows the page, like Pillow's
            gray = to_gray(arr)
            if gray.size == 0:
                raise InputError("the page has no pixels", path=path, page=number, code="empty_page")
            dpi = _dpi(im)
            log.debug("%s page %d: %dx%d mode %s dpi %s", path, number, gray.shape[1], gray.shape[0], im.mode, dpi)
            page = PageImage(number=number, gray=np.ascontiguousarray(gray), dpi=dpi, source=str(path))
            yield square_pixels(page, _dpi_ratio(im))


def _pillow_frame(path: Path, im: Image.Image, number: int, data: bytes | mmap.mmap | None = None) -> np.ndarray:
    """The current frame decoded by Pillow, turned by its EXIF/TIFF orientation (every page: a viewer
    turns each), with Pillow's failures as the document's specific errors. `data`: the TIFF's bytes."""
    if im.format == "TIFF" and tiff_orientation(im) in (5, 6, 7, 8):
        # Pillow 13 maps an uncompressed one-strip page from the file with its *turned* size: sheared
        # garbage. Decoded from a copy in memory (no mapping), the page comes out whole.
        copy = Image.open(io.BytesIO(bytes(data) if data is not None else path.read_bytes()))
        copy.seek(number - 1)
        im = copy
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
            return _to_array(ImageOps.exif_transpose(im))
    except Image.DecompressionBombError as exc:
        raise InputError(f"too large to decode ({exc})", path=path, page=number, code="too_large") from exc
    except (EOFError, SyntaxError) as exc:
        raise InputError(f"the image data is cut short ({exc})", path=path, page=number, code="truncated") from exc
    except OSError as exc:
        code = "truncated" if "truncated" in str(exc) or "broken" in str(exc) else "unreadable"
        raise InputError(f"cannot decode the image ({exc})", path=path, page=number, code=code) from exc
    except (ValueError, MemoryError) as exc:
        raise InputError(f"cannot decode the image ({exc})", path=path, page=number, code="unreadable") from exc


def tiff_orientation(im: Image.Image) -> int:
    """The TIFF page's Orientation tag (1: as stored, the default)."""
    try:
        return int(im.tag_v2.get(ORIENTATION, 1))  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return 1


def _dpi(im: Image.Image) -> float | None:
    """The horizontal resolution the file states (of the page as a viewer shows it), or None when it
    states none (or 1, a placeholder)."""
    dpi = im.info.get("dpi")
    if not dpi or float(dpi[0]) <= 1:
        return None
    if len(dpi) > 1 and float(dpi[1]) > 1 and dpi[1] != dpi[0] and _quarter_turned(im):
        return float(dpi[1])  # the stored columns are the page's rows
    return float(dpi[0])


def _quarter_turned(im: Image.Image) -> bool:
    """Whether the file's orientation (TIFF Orientation, EXIF) shows its stored rows as columns."""
    try:
        if im.format == "TIFF":
            return tiff_orientation(im) in (5, 6, 7, 8)
        if im.format == "JPEG" or "exif" in im.info:
            return int(im.getexif().get(0x0112, 1)) in (5, 6, 7, 8)
    except Exception:  # a broken EXIF block: read as stored, as `_fast_decode` does
        return False
    return False


#: Pixels this close to square (x and y resolutions within 2 %) are taken as square.
SQUARE_TOLERANCE = 0.02


def _dpi_ratio(im: Image.Image) -> float:
    """The file's horizontal over its vertical resolution, of the page as a viewer shows it: 204/98
    for a fax in normal mode; 1.0 when it states no such pair, or an implausible one."""
    dpi: Any = im.info.get("dpi")
    try:
        x, y = float(dpi[0]), float(dpi[1])
    except (TypeError, ValueError, IndexError):
        return 1.0
    if x <= 1 or y <= 1 or x == y or not 0.2 <= x / y <= 5:
        return 1.0
    return y / x if _quarter_turned(im) else x / y


def square_pixels(page: PageImage, ratio: float) -> PageImage:
    """The page with square pixels: a file whose pixels are taller than wide (a fax in normal mode,
    204 x 98 dpi) has its rows resampled to the horizontal resolution, and the reverse; `dpi` is
    then the horizontal one, and `y_scale` maps rows back to the page as submitted. Read as stored,
    every field of a normal-mode fax was half as tall as its width says: few were found, and those
    read as garbage, some surely."""
    if abs(ratio - 1.0) <= SQUARE_TOLERANCE:
        return page
    from digitreader.pipeline.prepare import px_per_mm, soften_bilevel

    h, w = page.gray.shape
    rows = max(1, int(round(h * ratio)))
    # A bilevel page (a fax is one) is softened first, as the prepare stage does a square one: resampled,
    # its black and white would no longer be told from grey there.
    ppm = px_per_mm(w * page.reduction, rows * page.reduction, page.dpi) / page.reduction
    gray = soften_bilevel(page.gray, ppm, ppm / ratio)
    gray = cv2.resize(gray, (w, rows), interpolation=cv2.INTER_LINEAR if ratio > 1 else cv2.INTER_AREA)
    return dataclasses.replace(
        page, gray=np.ascontiguousarray(gray), full_size=(page.width, page.height), y_scale=h / rows
    )


# ----------------------------------------------------------------------------------------------
# PDF


def _open_pdf(path: Path):
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        msg = str(exc).lower()
        if "password" in msg or "security" in msg:
            raise InputError(
                "the PDF is encrypted (password protected)",
                path=path,
                code="encrypted",
                hint="remove the password and submit it again",
            ) from exc
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 2048))
            tail = fh.read()
        code = "truncated" if b"%%EOF" not in tail else "unreadable"
        raise InputError(f"cannot open the PDF ({exc})", path=path, code=code) from exc


def _pdf_pages(path: Path, settings: Settings, span: range | None = None) -> Iterator[PageImage]:
    import pypdfium2 as pdfium

    doc = _open_pdf(path)
    try:
        n = len(doc)
        if n == 0:
            raise InputError("the PDF has no pages", path=path, code="empty_file")
        dpi = float(settings.pdf_dpi)
        for index in range(n) if span is None else range(max(0, span.start), min(n, span.stop)):
            number = index + 1
            try:
                page = doc[index]
                w_pt, h_pt = page.get_size()
                box = page.get_mediabox()
                if abs(box[2] - box[0]) < 1 or abs(box[3] - box[1]) < 1:
                    # pdfium substitutes a Letter page for a zero-size MediaBox; the page really has no area.
                    w_pt = h_pt = 0.0
            except pdfium.PdfiumError as exc:
                raise InputError(f"cannot read this page ({exc})", path=path, page=number, code="unreadable") from exc
            w, h = int(round(w_pt / 72.0 * dpi)), int(round(h_pt / 72.0 * dpi))
            _check_size(w, h, settings, path, number)
            page_dpi = dpi
            try:
                try:
                    arr = _scanned_image(page, w, h)
                except pdfium.PdfiumError:  # the image will not decode alone: the page is rendered
                    arr = None
                if arr is not None:
                    page_dpi = arr.shape[1] / (w_pt / 72.0)
                else:
                    arr = page.render(scale=dpi / 72.0, grayscale=True).to_numpy()
            except pdfium.PdfiumError as exc:
                raise InputError(f"cannot render this page ({exc})", path=path, page=number, code="unreadable") from exc
            finally:
                page.close()
            gray = to_gray(arr if arr.ndim == 2 or arr.shape[2] != 1 else arr[..., 0])
            if gray.size == 0:
                raise InputError("the page has no pixels", path=path, page=number, code="empty_page")
            yield PageImage(number=number, gray=np.ascontiguousarray(gray), dpi=page_dpi, source=str(path))
    finally:
        doc.close()


#: pdfium's colour spaces whose images `_scanned_image` takes, decoded by pdfium to grey or BGR:
#: DeviceGray, DeviceRGB, CalGray, CalRGB, ICCBased, Indexed (not CMYK, Lab, Separation, DeviceN).
_SCAN_COLOURSPACES = (1, 2, 4, 5, 7, 10)


def _scanned_image(page: Any, w: int, h: int) -> np.ndarray | None:
    """A scanner's PDF page: one opaque image that fills the page upright at the size the page would
    be rendered at (`w` x `h`, within a pixel). Its own pixels, decoded by pdfium (any filter: JPEG,
    Flate, CCITT, JBIG2), without rasterizing the page, which resamples them and is about five times
    slower for a 300-dpi A4 page. Grey (h, w) or BGR (h, w, 3); None: render the page instead.
    """
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    if page.get_rotation() % 360:
        return None
    objects = list(itertools.islice(page.get_objects(max_depth=1), 2))  # one is all it may have
    if len(objects) != 1 or not isinstance(objects[0], pdfium.PdfImage):
        return None
    image = objects[0]
    if pdfium_c.FPDFPageObj_HasTransparency(image.raw):  # a soft mask, alpha or a blend mode
        return None
    meta = image.get_metadata()
    if meta.colorspace not in _SCAN_COLOURSPACES or abs(meta.width - w) > 1 or abs(meta.height - h) > 1:
        return None
    x0, y0, x1, y1 = page.get_cropbox()
    a, b, c, d, e, f = image.get_matrix().get()
    if max(abs(b), abs(c), abs(a - (x1 - x0)), abs(d - (y1 - y0)), abs(e - x0), abs(f - y0)) > 0.5:
        return None  # not the whole page, upright (a turned or mirrored image is rendered)
    bitmap = image.get_bitmap(render=False)
    arr = bitmap.to_numpy()
    if bitmap.format == pdfium_c.FPDFBitmap_Gray:
        arr = arr.reshape(arr.shape[0], arr.shape[1])
    elif bitmap.format in (pdfium_c.FPDFBitmap_BGR, pdfium_c.FPDFBitmap_BGRx):
        arr = arr[..., :3]
    else:
        return None
    return arr if arr.shape[:2] == (meta.height, meta.width) else None
