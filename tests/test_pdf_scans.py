"""PDF pages that are one scanned image: read from the image itself (`load._scanned_image`), not by
rasterizing the page; any other page is rendered at DIGITREADER_PDF_DPI as before."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pypdfium2 as pdfium
import pytest
from PIL import Image

from digitreader.pipeline.load import _scanned_image, load_pages
from digitreader.pipeline.normalize import colour_to_gray, to_gray
from digitreader.settings import Settings


@pytest.fixture(scope="module")
def scan() -> np.ndarray:
    """A grey 'scan' with noise and a dark bar, odd sizes."""
    rng = np.random.default_rng(11)
    img = np.clip(225 + rng.integers(-20, 21, (331, 247)), 0, 255).astype(np.uint8)
    img[40:200, 30:45] = 15
    return img


def make_pdf(
    images: list[np.ndarray], *, dpi: float = 300, rotate: int = 0, shift: float = 0.0, second: bool = False
) -> bytes:
    """One page per image, each image stored losslessly (Flate) and placed over the whole page at
    `dpi` (moved right by `shift` points; with `second`, a small second image on the page too)."""
    pdf = pdfium.PdfDocument.new()
    for img in images:
        h, w = img.shape[:2]
        width, height = w / dpi * 72, h / dpi * 72
        page = pdf.new_page(width, height)
        obj = pdfium.PdfImage.new(pdf)
        obj.set_bitmap(pdfium.PdfBitmap.from_pil(Image.fromarray(img)))
        obj.set_matrix(pdfium.PdfMatrix().scale(width, height).translate(shift, 0))
        page.insert_obj(obj)
        if second:
            logo = pdfium.PdfImage.new(pdf)
            logo.set_bitmap(pdfium.PdfBitmap.from_pil(Image.fromarray(np.zeros((8, 8), np.uint8))))
            logo.set_matrix(pdfium.PdfMatrix().scale(10, 10).translate(5, 5))
            page.insert_obj(logo)
        if rotate:
            page.set_rotation(rotate)
        page.gen_content()
    buf = io.BytesIO()
    pdf.save(buf)
    return buf.getvalue()


def _fast(data: bytes, dpi: float = 300) -> np.ndarray | None:
    doc = pdfium.PdfDocument(data)
    page = doc[0]
    w_pt, h_pt = page.get_size()
    return _scanned_image(page, int(round(w_pt / 72 * dpi)), int(round(h_pt / 72 * dpi)))


def test_a_scanned_page_is_its_image(tmp_path: Path, scan: np.ndarray) -> None:
    rgb = np.stack([scan, 255 - scan, scan // 2], axis=2)
    data = make_pdf([scan, rgb])  # pdfium stores the grey page as an indexed (palette) image
    out = _fast(data)
    assert out is not None and np.array_equal(to_gray(out), scan)  # the stored pixels, not a resampling
    path = tmp_path / "scan.pdf"
    path.write_bytes(data)
    pages = list(load_pages(path, Settings(pdf_dpi=300, _env_file=None)))  # type: ignore[call-arg]
    assert [p.number for p in pages] == [1, 2]
    assert np.array_equal(pages[0].gray, scan) and pages[0].dpi is not None and abs(pages[0].dpi - 300) < 0.01
    assert (pages[0].width, pages[0].height) == (247, 331)
    assert _fast(make_pdf([rgb])) is not None  # an RGB page takes the image path too
    # A page with colour is grey by its darkest channel (`normalize.colour_to_gray`), not by luminance.
    assert np.array_equal(pages[1].gray, colour_to_gray(np.ascontiguousarray(rgb[..., ::-1])))
    assert not np.array_equal(pages[1].gray, cv2.cvtColor(rgb[..., ::-1], cv2.COLOR_BGR2GRAY))


def test_a_pillow_jpeg_pdf_takes_the_image_path(scan: np.ndarray) -> None:
    # How many scanners and Pillow write a page: the JPEG stream as it is (DCTDecode).
    buf = io.BytesIO()
    Image.fromarray(scan).save(buf, "PDF", resolution=300)
    out = _fast(buf.getvalue())
    assert out is not None and out.shape == scan.shape  # DeviceGray: grey already
    (image,) = pdfium.PdfDocument(buf.getvalue())[0].get_objects()
    assert image.get_filters() == ["DCTDecode"]
    stream = np.frombuffer(bytes(image.get_data(decode_simple=False)), np.uint8)
    decoded = cv2.imdecode(stream, cv2.IMREAD_GRAYSCALE)
    assert decoded is not None and np.array_equal(out, decoded)  # the JPEG, decoded once


@pytest.mark.parametrize(
    "kind",
    ["other resolution", "turned page", "two objects", "moved image"],
)
def test_other_pages_are_rendered(tmp_path: Path, scan: np.ndarray, kind: str) -> None:
    data = {
        "other resolution": lambda: make_pdf([scan], dpi=150),  # rendered at 300 dpi: twice the size
        "turned page": lambda: make_pdf([scan], rotate=90),
        "two objects": lambda: make_pdf([scan], second=True),
        "moved image": lambda: make_pdf([scan], shift=20),
    }[kind]()
    assert _fast(data) is None
    path = tmp_path / "page.pdf"
    path.write_bytes(data)
    (page,) = list(load_pages(path, Settings(pdf_dpi=300, _env_file=None)))  # type: ignore[call-arg]
    assert page.dpi == 300
    if kind == "other resolution":
        assert abs(page.gray.shape[0] - 2 * scan.shape[0]) <= 1
    if kind == "turned page":
        assert abs(page.gray.shape[0] - scan.shape[1]) <= 1 and abs(page.gray.shape[1] - scan.shape[0]) <= 1
