"""Field strips of the page (cut at segmentation, stored with the field, highlighted by the review
page), their transport to the inference workers, and review of fields flagged only by a template rule.
Real generated pages through the real pipeline and database."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from sqlalchemy import select

from digitreader.db import Digit, Document, Field, session_scope
from digitreader.db.session import dispose_engines
from digitreader.pipeline.document import STRIP_HEIGHT, DocumentCut, segment_document
from digitreader.pipeline.process import process_batch
from digitreader.review import service
from digitreader.settings import Settings
from tests.test_review import present, processed, rsettings  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]


def _decode(data: bytes, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    assert img is not None
    return img


def test_every_field_has_a_strip_of_its_page_region(rsettings: Settings) -> None:  # noqa: F811
    with session_scope(rsettings) as s:
        fields = s.scalars(select(Field)).all()
        assert fields
        for f in fields:
            assert f.strip is not None and f.strip_box is not None, f.name
            sx, sy, sw, sh = f.strip_box
            # the strip covers the field's box with a margin
            assert sx <= f.x and sy <= f.y and sx + sw >= f.x + f.w and sy + sh >= f.y + f.h
            img = _decode(f.strip)
            assert img.ndim == 2 and img.shape[0] <= STRIP_HEIGHT
            assert len(f.strip) < 12_000  # a small JPEG
            # it shows that region of the page as submitted
            page = cv2.imread(f.page.document.path, cv2.IMREAD_GRAYSCALE)
            assert page is not None
            region = cv2.resize(page[sy : sy + sh, sx : sx + sw], (img.shape[1], img.shape[0]),
                                interpolation=cv2.INTER_AREA)  # fmt: skip
            assert float(np.mean(np.abs(region.astype(np.int16) - img))) < 6.0, f.name


def test_strip_png_highlights_the_digit_at_its_mapped_box(
    rsettings: Settings,  # noqa: F811
    processed: tuple[Path, int],  # noqa: F811
) -> None:
    with session_scope(rsettings) as s:
        items = service.list_queue(s, batch_id=processed[1])[:5]
        assert items
        for item in items:
            d = s.get(Digit, item.digit_id)
            assert d is not None
            f = d.field
            assert f.strip is not None and f.strip_box is not None
            stored = _decode(f.strip)
            png = service.strip_png(s, d.id)
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            assert service.png_size(png) == (stored.shape[1], stored.shape[0])
            img = _decode(png)
            # the digit's page box mapped into the strip, computed here independently
            sx, sy, sw, sh = f.strip_box
            fx, fy = stored.shape[1] / sw, stored.shape[0] / sh
            x0, y0 = round((d.x - sx) * fx), round((d.y - sy) * fy)
            x1, y1 = round((d.x + d.w - sx) * fx) - 1, round((d.y + d.h - sy) * fy) - 1
            orange = np.array(service.HIGHLIGHT_BGR)
            for px, py in ((x0, (y0 + y1) // 2), (x1, (y0 + y1) // 2), ((x0 + x1) // 2, y0), ((x0 + x1) // 2, y1)):
                assert np.array_equal(img[py, px], orange), (px, py, img[py, px])
            # inside the box (away from the frame) the page shows through: grey, not orange
            centre = img[(y0 + y1) // 2 - 0, x0 + 4]
            assert centre[0] == centre[1] == centre[2]


def test_strip_png_falls_back_to_crops_without_a_stored_strip(
    rsettings: Settings,  # noqa: F811
    processed: tuple[Path, int],  # noqa: F811
) -> None:
    with session_scope(rsettings) as s:
        item = service.list_queue(s, batch_id=processed[1])[0]
        f = s.get(Field, item.field_id)
        assert f is not None
        f.strip = None  # a field stored before migration 0003
        s.flush()
        strip = service.strip_png(s, item.digit_id)
        n = len(f.digits)
        assert service.png_size(strip) == (n * (28 * 3 + 4) + 4, 28 * 3 + 8)
        f.strip, f.strip_box = b"not a jpeg", [0, 0, 10, 10]  # undecodable: the same fallback
        s.flush()
        assert service.png_size(service.strip_png(s, item.digit_id)) == (n * (28 * 3 + 4) + 4, 28 * 3 + 8)


def test_codec_carries_the_strips(processed: tuple[Path, int], rsettings: Settings) -> None:  # noqa: F811
    from workers.codec import CodecError, decode_cut, encode_cut

    with session_scope(rsettings) as s:
        path = s.scalars(select(Document.path).order_by(Document.id)).first()
    assert path is not None
    cut = segment_document(path, rsettings)
    assert not cut.failed and len(cut.strips) == len(cut.pages)
    assert [len(st) for st in cut.strips] == [len(p.fields) for p in cut.pages]
    back = decode_cut(encode_cut(cut))
    assert back.strips == cut.strips
    # an older message (no strips) still decodes, to a cut without strips
    old = DocumentCut(cut.path, cut.pages, None, None, cut.page_count, cut.seconds, cut.timings)
    assert decode_cut(encode_cut(old)).strips == ()
    blob = encode_cut(cut)
    import zlib

    raw = zlib.decompress(blob[4:])
    with pytest.raises(CodecError):
        decode_cut(b"DRC1" + zlib.compress(raw[:-10]))


@pytest.fixture(scope="module")
def rule_db(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Settings:
    """An account form read with a template whose length rules the page breaks on purpose: every
    string field must have one digit fewer than the form holds."""
    from digitreader.synth import generate

    base = tmp_path_factory.mktemp("rules")
    (form,) = generate(base / "scans", pages=1, seed=4, kind="form", layout="account", style="clean",
                       data_dir=data_dir)  # fmt: skip
    tmpl = yaml.safe_load((ROOT / "examples" / "templates" / "account.yaml").read_text())
    for f in tmpl["fields"]:
        f.pop("pattern", None)
        f["length"] = 2
    (base / "rules.yaml").write_text(yaml.safe_dump(tmpl))
    settings = Settings(home=base / "home", data_dir=data_dir, workers=1, reviewer="tester",
                        _env_file=None)  # type: ignore[call-arg]  # fmt: skip
    process_batch([form], settings, template=base / "rules.yaml")
    dispose_engines()
    return settings


def _rule_only_fields(s: object) -> list[Field]:
    fields = s.scalars(select(Field).where(Field.needs_review.is_(True))).all()  # type: ignore[attr-defined]
    return [f for f in fields if set(f.flags) == {"length"} and not any(d.needs_review for d in f.digits)]


def test_rule_only_fields_are_reviewable(rule_db: Settings) -> None:
    with session_scope(rule_db) as s:
        fields = _rule_only_fields(s)
        assert len(fields) >= 2, "the template's length rules should flag fields whose digits are all sure"
        queued = {i.digit_id: i for i in service.list_queue(s)}
        for f in fields:
            mine = [i for i in queued.values() if i.field_id == f.id]
            assert len(mine) == 1, f.name  # one digit of the field at a time: its least sure one
            assert mine[0].why == (
                f"the field should hold 2 digits, {len(f.value)} read: each digit of the field comes here once"
            )
            read = [d for d in f.digits if not d.blank]
            assert mine[0].confidence == min(present(d.confidence) for d in read)
        assert service.queue_counts(s)["left"] == len(queued)

        # The value can satisfy the rule after a correction: cleared at once.
        first = fields[0]
        read = [d for d in first.digits if not d.blank]
        to_blank = [d for d in read][: len(read) - 2]
        for d in to_blank:
            service.apply_correction(s, d.id, None, reviewer="tester")
        s.refresh(first)
        assert len(first.value) == 2 and not first.needs_review and "length" not in first.flags
        assert all(i.field_id != first.id for i in service.list_queue(s))

        # Otherwise: each accepted digit brings the next one; once all were seen the field is clear,
        # the rule flag kept as a record.
        second = fields[1]
        seen = 0
        while True:
            mine = [i for i in service.list_queue(s) if i.field_id == second.id]
            if not mine:
                break
            assert len(mine) == 1
            service.apply_correction(s, mine[0].digit_id, mine[0].label, reviewer="tester")
            seen += 1
        s.refresh(second)
        assert seen == len([d for d in second.digits if not d.blank]) and seen != 2
        assert not second.needs_review and second.flags == ["length"]
        # undo puts the field back in review
        service.undo(s, reviewer="tester")
        s.refresh(second)
        assert second.needs_review and [i.field_id for i in service.list_queue(s)].count(second.id) == 1


def test_a_rule_only_field_stays_in_the_queue_beside_flagged_digits_elsewhere(rule_db: Settings) -> None:
    """A low-confidence digit in another field (any other field of the database) does not hide a field
    flagged only by its rule from the queue (before: the rule-only fields came back only once no digit
    anywhere was flagged)."""
    with session_scope(rule_db) as s:
        fields = _rule_only_fields(s)
        assert fields
        target = fields[0]
        other = s.scalars(select(Field).where(Field.id != target.id, Field.kind == "boxes")).first()
        assert other is not None
        unsure = next(d for d in other.digits if not d.blank)
        unsure.needs_review, other.needs_review = True, True
        s.flush()
        queued = service.list_queue(s)
        assert unsure.id in {i.digit_id for i in queued}
        assert next(i for i in queued if i.digit_id == unsure.id).why == "the model is unsure of it"
        assert [i.field_id for i in queued].count(target.id) == 1
        s.rollback()
