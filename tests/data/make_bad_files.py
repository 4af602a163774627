"""How the small fault files in tests/data/ were made (run once; the outputs are committed).

    .venv/bin/python tests/data/make_bad_files.py            # all but encrypted.pdf
    PYTHONPATH=/path/to/pypdf .venv/bin/python tests/data/make_bad_files.py --encrypted

pypdf is only needed to write encrypted.pdf (it is not a dependency of digitreader).
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _page(value: int) -> Image.Image:
    # A small "page" (A4 at 50 dpi), uniform with a gentle light gradient like a real blank scan.
    h, w = 585, 413
    ramp = np.linspace(0, 6, w, dtype=np.float32)[None, :]
    arr = np.clip(value - ramp + np.zeros((h, 1), np.float32), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def main() -> None:
    (HERE / "empty.png").write_bytes(b"")
    (HERE / "not_an_image.png").write_text("This is a text file that someone named .png\n")
    # A real PNG/JPEG of a small form-like image, then cut short.
    img = _page(240)
    arr = np.asarray(img).copy()
    arr[100:110, 50:350] = 20
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    (HERE / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    (HERE / "truncated.jpg").write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * 0.6)])
    # Decompression bomb: a valid PNG header declaring 60000 x 60000 pixels, no image data worth decoding.
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    bomb = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    (HERE / "bomb.png").write_bytes(bomb)
    _page(245).save(HERE / "blank.png", dpi=(50, 50))
    Image.fromarray(np.full((585, 413), 8, np.uint8)).save(HERE / "all_black.png", dpi=(50, 50))
    # A PDF whose only page has a zero-size MediaBox.
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 0 0] >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for i, o in enumerate(objs, start=1):
        offsets.append(out.tell())
        out.write(f"{i} 0 obj\n".encode() + o + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode())
    for off in offsets:
        out.write(f"{off:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    (HERE / "empty_page.pdf").write_bytes(out.getvalue())
    # A PDF cut short: header and a few objects, no cross-reference table, no %%EOF.
    (HERE / "truncated.pdf").write_bytes(out.getvalue()[: len(out.getvalue()) // 3])
    if "--encrypted" in sys.argv:
        from pypdf import PdfWriter

        w = PdfWriter()
        w.add_blank_page(width=595, height=842)
        w.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
        with (HERE / "encrypted.pdf").open("wb") as fh:
            w.write(fh)


if __name__ == "__main__":
    main()
