"""Compact bytes for a segmented document (`DocumentCut`), the payload from the page pool to the
inference pool.

Layout: b"DRC1" + zlib( u32 header length | JSON header | crops ), where the header holds every
page, field and slot (boxes, positions, blank flags, names, template rules, timings) and `crops`
is the (N, 28, 28) uint8 array of the non-blank slots in `PageCut.crops()` order, followed by the
fields' strips of the page (JPEG bytes; their lengths and page boxes are in the header, per page
per field, null where a field has none; a header without "strips" decodes to no strips). Blank slots
carry no pixels (their crop is all zeros by contract). JSON + raw bytes, never pickle: a message
from the broker must not be able to run code in a worker.

A page of ~50 digits is ~40 KB of raw crops and ~8-15 KB compressed (MNIST-form crops are
mostly zeros); docs/benchmarks.md "## Distributed" compares this with passing crops through the
database.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
import zlib
from typing import Any

import numpy as np

from digitreader.pipeline.document import DocumentCut, FieldStrip
from digitreader.types import DigitSlot, FieldCut, PageCut

log = logging.getLogger(__name__)

MAGIC = b"DRC1"
_EMPTY = np.zeros((28, 28), np.uint8)


class CodecError(ValueError):
    """The payload is not a document cut written by `encode_cut` (corrupt or foreign message)."""


def encode_cut(cut: DocumentCut, level: int = 1) -> bytes:
    """`cut` as compact bytes: a successful segmentation, or a failed one (its error and page count;
    the cut of a part of a long document travels between page workers either way)."""
    pages: list[dict[str, Any]] = []
    crops: list[np.ndarray] = []
    for p in cut.pages:
        fields = []
        for f in p.fields:
            slots = []
            for s in f.slots:
                slots.append([s.position, list(map(int, s.bbox)), bool(s.blank)])
                if not s.blank:
                    crops.append(np.ascontiguousarray(s.crop, dtype=np.uint8))
            fields.append({"name": f.name, "kind": f.kind, "bbox": list(map(int, f.bbox)), "slots": slots,
                           "length": f.length, "pattern": f.pattern})  # fmt: skip
        pages.append({"number": p.number, "width": p.width, "height": p.height, "skew": float(p.skew_degrees),
                      "rotation": int(p.rotation), "timings": {k: float(v) for k, v in p.timings.items()},
                      "fields": fields, **({"blank": True} if p.blank else {})})  # fmt: skip
    strips: list[list[Any]] = []
    strip_bytes: list[bytes] = []
    for page_strips in cut.strips:
        row: list[Any] = []
        for st in page_strips:
            if st is None:
                row.append(None)
            else:
                row.append([len(st.jpeg), *map(int, st.box)])
                strip_bytes.append(st.jpeg)
        strips.append(row)
    header = json.dumps(
        {
            "path": cut.path,
            "pages": pages,
            "page_count": cut.page_count,
            "seconds": cut.seconds,
            "timings": {k: float(v) for k, v in cut.timings.items()},
            "crops": len(crops),
            "strips": strips,
            **({"error": [cut.error_code, cut.error_message, cut.traceback]} if cut.failed else {}),
            **({"warnings": list(cut.warnings)} if cut.warnings else {}),
        },
        separators=(",", ":"),
    ).encode()
    pixels = np.stack(crops).tobytes() if crops else b""
    return MAGIC + zlib.compress(struct.pack("<I", len(header)) + header + pixels + b"".join(strip_bytes), level)


def decode_cut(blob: bytes) -> DocumentCut:
    """The `DocumentCut` that `encode_cut` wrote. Raises `CodecError` for anything else."""
    if not blob.startswith(MAGIC):
        raise CodecError("not a digitreader document cut (bad magic)")
    try:
        raw = zlib.decompress(blob[len(MAGIC) :])
        (n,) = struct.unpack_from("<I", raw)
        head = json.loads(raw[4 : 4 + n])
        count = int(head["crops"])
        crops = np.frombuffer(raw, np.uint8, count * 784, 4 + n).reshape(count, 28, 28)
    except (zlib.error, struct.error, ValueError, KeyError, TypeError) as exc:
        raise CodecError(f"corrupt document cut: {exc}") from exc
    row = 0
    pages: list[PageCut] = []
    for p in head["pages"]:
        fields: list[FieldCut] = []
        for f in p["fields"]:
            slots: list[DigitSlot] = []
            for position, bbox, blank in f["slots"]:
                if blank:
                    crop = _EMPTY.copy()
                else:
                    crop, row = crops[row].copy(), row + 1
                slots.append(DigitSlot(position=int(position), bbox=tuple(bbox), crop=crop, blank=bool(blank)))
            fields.append(FieldCut(name=f["name"], kind=f["kind"], bbox=tuple(f["bbox"]), slots=tuple(slots),
                                   length=f["length"], pattern=f["pattern"]))  # fmt: skip
        pages.append(PageCut(number=p["number"], width=p["width"], height=p["height"], fields=tuple(fields),
                             skew_degrees=p["skew"], timings=dict(p["timings"]),
                             rotation=int(p.get("rotation", 0)), blank=bool(p.get("blank", False))))  # fmt: skip
    if row != count:
        raise CodecError(f"corrupt document cut: {count} crops, {row} used")
    code, message, trace = head.get("error") or (None, None, None)
    return DocumentCut(path=head["path"], pages=tuple(pages), page_count=head["page_count"],
                       seconds=float(head["seconds"]), timings=dict(head["timings"]),
                       strips=_decode_strips(head.get("strips") or [], raw, 4 + n + count * 784),
                       error_code=code, error_message=message, traceback=trace,
                       warnings=tuple(str(w) for w in head.get("warnings") or ()))  # fmt: skip


def _decode_strips(spec: list[Any], raw: bytes, at: int) -> tuple[tuple[FieldStrip | None, ...], ...]:
    out: list[tuple[FieldStrip | None, ...]] = []
    try:
        for page in spec:
            row: list[FieldStrip | None] = []
            for item in page:
                if item is None:
                    row.append(None)
                    continue
                size, x, y, w, h = (int(v) for v in item)
                if size < 0 or at + size > len(raw):
                    raise CodecError("corrupt document cut: a field strip runs past the end")
                row.append(FieldStrip(raw[at : at + size], (x, y, w, h)))
                at += size
            out.append(tuple(row))
    except (ValueError, TypeError) as exc:
        raise CodecError(f"corrupt document cut: {exc}") from exc
    if at != len(raw):
        raise CodecError(f"corrupt document cut: {len(raw) - at} bytes left over")
    return tuple(out)


def to_text(blob: bytes) -> str:
    """Bytes -> ASCII for a JSON task message (Celery's JSON serializer carries no bytes)."""
    return base64.b64encode(blob).decode("ascii")


def from_text(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise CodecError(f"corrupt document cut: {exc}") from exc
