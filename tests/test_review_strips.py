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
from sqlalchemy.orm import Session

from digitreader.db import Digit, Document, Field, session_scope
from digitreader.db.session import dispose_engines
from digitreader.errors import UsageError
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
        # "left" counts every digit of a rule-only field still to come, not the one the queue shows.
        rule_digits = sum(len([d for d in f.digits if not d.blank and d.crop is not None]) for f in fields)
        assert rule_digits > len(fields)
        assert service.queue_counts(s)["left"] == len(queued) - len(fields) + rule_digits

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
            left = service.queue_counts(s)["left"]
            service.apply_correction(s, mine[0].digit_id, mine[0].label, reviewer="tester")
            assert service.queue_counts(s)["left"] == left - 1  # each digit seen counts down
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


# ------------------------------------------------------------------------ fields read empty

SCAN = ROOT / "examples" / "scans" / "scan-0001-00001.jpg"  # an "order" form


def _order_template(to: Path, extra: list[dict[str, object]], *, string_patterns: bool = True) -> Path:
    """examples/templates/order.yaml with `extra` fields; `string_patterns=False` drops the string fields'
    patterns (a string field read empty has no cell at all, so nothing a reviewer could be shown)."""
    tmpl = yaml.safe_load((ROOT / "examples" / "templates" / "order.yaml").read_text())
    if not string_patterns:
        for f in tmpl["fields"]:
            if f["kind"] == "string":
                f.pop("pattern", None)
    tmpl["fields"] += extra
    to.write_text(yaml.safe_dump(tmpl))
    return to


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """The sample order form read with a template that adds two box fields over blank paper, each with a
    rule that wants a value: `spare` (pattern ^\\d+$) and `spare_code` (length 3). Returns the database."""
    base = tmp_path_factory.mktemp("empty")
    extra: list[dict[str, object]] = [
        {"name": "spare", "kind": "boxes", "region": [180, 100, 21, 9], "cells": 3, "pattern": r"^\d+$"},
        {"name": "spare_code", "kind": "boxes", "region": [180, 130, 21, 9], "cells": 3, "length": 3},
    ]
    settings = Settings(home=base / "home", data_dir=data_dir, workers=1, _env_file=None)  # type: ignore[call-arg]
    process_batch([SCAN], settings, template=_order_template(base / "order.yaml", extra))
    dispose_engines()
    return base / "home" / "digitreader.sqlite"


@pytest.fixture()
def esettings(empty_db: Path, tmp_path: Path, data_dir: Path) -> Settings:
    """A private copy of `empty_db` (tests change it)."""
    import shutil

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(empty_db, home / "digitreader.sqlite")
    dispose_engines()
    return Settings(home=home, data_dir=data_dir, reviewer="tester", _env_file=None)  # type: ignore[call-arg]


def _field(s: Session, name: str) -> Field:
    return s.scalars(select(Field).where(Field.name == name)).one()


def _state(s: Session, field_id: int) -> tuple[object, ...]:
    """Everything a correction may change: the field's digits, the field, its document's status."""
    f = present(s.get(Field, field_id))
    digits = tuple((d.label, d.blank, d.needs_review, d.confidence, d.crop) for d in f.digits)
    return digits, f.value, f.confidence, list(f.flags), f.needs_review, f.page.document.status


def test_a_field_read_empty_with_a_rule_comes_to_the_queue_and_can_be_confirmed_empty(esettings: Settings) -> None:
    """A field whose cells all read blank, flagged by a rule that wants a value, comes to the queue through
    its first cell; `x` confirms it empty and clears it (the rule flag kept as a record), and undo puts it
    back exactly. Before, the queue offered no cell of it and a correction of a blank cell was refused:
    its document stayed `needs_review` forever."""
    with session_scope(esettings) as s:
        spare = _field(s, "spare")
        assert spare.value == "" and spare.flags == ["pattern"] and spare.needs_review
        assert all(d.blank and d.crop is None for d in spare.digits) and len(spare.digits) == 3
        mine = [i for i in service.list_queue(s) if i.field_id == spare.id]
        assert len(mine) == 1  # one cell at a time: the first
        item = mine[0]
        assert item.position == 0 and item.label is None and item.confidence is None and item.top3 == []
        assert item.why == (
            "the field was read empty; its template wants a value matching ^\\d+$: "
            "confirm it is empty (x) or type the digit"
        )
        # The crop is blank paper; the strip shows the field with the cell framed.
        crop = _decode(service.crop_png(s, item.digit_id, 8), cv2.IMREAD_GRAYSCALE)
        assert crop.shape == (224, 224) and int(crop.min()) == 255
        stored = _decode(present(spare.strip))
        strip = _decode(service.strip_png(s, item.digit_id))
        assert strip.shape[:2] == stored.shape[:2]
        assert np.any(np.all(strip == np.array(service.HIGHLIGHT_BGR), axis=2))
        field_id, before = spare.id, _state(s, spare.id)

    with session_scope(esettings) as s:
        res = service.apply_correction(s, item.digit_id, None, reviewer="tester", source="web")
        assert res.accepted and res.old_label is None and res.new_label is None
        assert not res.field_needs_review and res.field_value == ""
    with session_scope(esettings) as s:
        spare = present(s.get(Field, field_id))
        assert spare.flags == ["pattern"] and not spare.needs_review  # the rule's flag stays as a record
        assert all(i.field_id != field_id for i in service.list_queue(s))
        d = present(s.get(Digit, item.digit_id))
        assert (d.label, d.blank, d.crop, d.confidence) == (None, True, None, None)
    with session_scope(esettings) as s:
        assert service.undo(s, reviewer="tester").digit_id == item.digit_id
    with session_scope(esettings) as s:
        assert _state(s, field_id) == before
        assert [i.digit_id for i in service.list_queue(s) if i.field_id == field_id] == [item.digit_id]

    # The whole queue reviewed (each item accepted as shown): the document is done.
    with session_scope(esettings) as s:
        for _ in range(200):
            items = service.list_queue(s)
            if not items:
                break
            service.apply_correction(s, items[0].digit_id, items[0].label, reviewer="tester")
        assert not service.list_queue(s)
        doc = present(s.get(Field, field_id)).page.document
        assert doc.status == "done" and service.queue_counts(s)["documents_left"] == 0


def test_digits_typed_into_a_field_read_empty(esettings: Settings) -> None:
    """A digit typed into a cell of a field read empty is one the cut missed: the cell holds it (no
    confidence, no crop: retraining skips it) and the rule is checked again. While the rule still
    fails, the next cell comes; `x` ends the field. Undo restores the blank cell exactly."""
    from digitreader.export import export_json
    from digitreader.registry import corrected_digits

    with session_scope(esettings) as s:
        spare, code = _field(s, "spare"), _field(s, "spare_code")
        spare_id, code_id = spare.id, code.id
        cells = [d.id for d in code.digits]
        first = next(i for i in service.list_queue(s) if i.field_id == spare_id)
        before = _state(s, spare_id)
        batch = spare.page.document.batch_id
    with session_scope(esettings) as s:
        res = service.apply_correction(s, first.digit_id, 4, reviewer="tester")
        assert not res.accepted and (res.old_label, res.new_label, res.field_value) == (None, 4, "4")
        assert not res.field_needs_review  # "4" matches ^\d+$: clear at once, like any rule flag
    with session_scope(esettings) as s:
        d = present(s.get(Digit, first.digit_id))
        assert (d.label, d.blank, d.confidence, d.crop, d.needs_review) == (4, False, None, None, False)
        assert present(s.get(Field, spare_id)).flags == []
        assert first.digit_id not in corrected_digits(s).digit_ids.tolist()  # no crop to learn from
        out = export_json(s, batch)
        fields = [f for doc in out["documents"] for p in doc["pages"] for f in p["fields"]]
        exported = next(f for f in fields if f["name"] == "spare")
        assert exported["value"] == "4" and exported["digits"][0]["label"] == 4 and exported["digits"][0]["reviewed"]
    with session_scope(esettings) as s:
        service.undo(s, reviewer="tester")
    with session_scope(esettings) as s:
        assert _state(s, spare_id) == before

    # spare_code wants 3 digits: after a typed 7 its next cell comes; x there ends the field.
    with session_scope(esettings) as s:
        assert [i.digit_id for i in service.list_queue(s) if i.field_id == code_id] == [cells[0]]
        left = service.queue_counts(s)["left"]  # each of the field's 3 cells counts until the field ends
        res = service.apply_correction(s, cells[0], 7, reviewer="tester")
        assert res.field_needs_review and res.field_value == "7"
        assert service.queue_counts(s)["left"] == left - 1
        (nxt,) = [i for i in service.list_queue(s) if i.field_id == code_id]
        assert nxt.digit_id == cells[1]
        assert nxt.why == (
            "the field was read empty, 7 typed in so far; its template wants 3 digits: "
            "type this cell's digit, or x where the field ends"
        )
        res = service.apply_correction(s, cells[1], None, reviewer="tester")
        assert not res.field_needs_review and res.field_value == "7"
        assert service.queue_counts(s)["left"] == left - 3  # the x ended the field: its last cell too
        f = present(s.get(Field, code_id))
        assert f.flags == ["length"] and not f.needs_review
        assert all(i.field_id != code_id for i in service.list_queue(s))

    # A blank cell of a field with digits read is still not reviewable.
    with session_scope(esettings) as s:
        mixed = next(f for f in s.scalars(select(Field)) if any(d.crop is None for d in f.digits)
                     and any(d.crop is not None for d in f.digits))  # fmt: skip
        blank = next(d for d in mixed.digits if d.crop is None)
        with pytest.raises(UsageError, match="empty cell"):
            service.apply_correction(s, blank.id, 3, reviewer="tester")


def test_a_damaged_scans_empty_fields_come_to_the_queue(tmp_path: Path, data_dir: Path) -> None:
    """A form read with a template from a JPEG that lost the end of its data: the fields on the lost part
    read empty. Each field with a cell is flagged `damaged_image` (before: only fields with a digit read,
    so an empty one passed silently and the document could be `done`), comes to the queue (an empty one
    through its first cell), and the document is done once the queue is reviewed."""
    from tests.test_decoder_messages import damaged_jpeg

    settings = Settings(home=tmp_path / "home", data_dir=data_dir, workers=1, reviewer="tester",
                        _env_file=None)  # type: ignore[call-arg]  # fmt: skip
    template = _order_template(tmp_path / "order.yaml", [], string_patterns=False)
    rep = process_batch([damaged_jpeg(tmp_path / "damaged.jpg")], settings, template=template)
    with session_scope(settings) as s:
        doc = s.scalars(select(Document).where(Document.batch_id == rep.batch_id)).one()
        assert doc.warnings and doc.status == "needs_review"
        fields = [f for p in doc.pages for f in p.fields]
        empty = [f for f in fields if f.digits and all(d.blank and d.crop is None for d in f.digits)]
        assert len(empty) >= 2, "the lost part of the page should hold fields read empty"
        assert all("damaged_image" in f.flags and f.needs_review for f in fields if f.digits)
        assert all(f.digits for f in fields)  # a string field where nothing was cut: one blank cell covering it
        queued = service.list_queue(s, batch_id=rep.batch_id)
        for f in empty:
            (item,) = [i for i in queued if i.field_id == f.id]
            assert item.position == 0 and "read empty" in item.why and "damaged image data" in item.why
        doc_id, empty_ids = doc.id, [f.id for f in empty]
        for _ in range(300):
            items = service.list_queue(s, batch_id=rep.batch_id)
            if not items:
                break
            service.apply_correction(s, items[0].digit_id, items[0].label, reviewer="tester")
    with session_scope(settings) as s:
        assert present(s.get(Document, doc_id)).status == "done"
        for fid in empty_ids:
            f = present(s.get(Field, fid))
            assert f.value == "" and "damaged_image" in f.flags and not f.needs_review
            assert [len(d.corrections) for d in f.digits] == [1] + [0] * (
                len(f.digits) - 1
            )  # one cell, confirmed empty


def test_a_string_field_read_empty_takes_a_value_typed_digit_by_digit(tmp_path: Path, data_dir: Path) -> None:
    """A string field where nothing was cut (here on the lost part of a damaged scan) has one blank cell
    covering it. A reviewer types its digits one at a time: after each, the next cell comes (the field's
    box), until `x` ends the field. Undo takes a digit back and the cell offered after it goes. Before,
    a digit typed there was the whole value: a cheque amount of one digit."""
    from digitreader.export import export_json
    from tests.test_decoder_messages import damaged_jpeg

    settings = Settings(home=tmp_path / "home", data_dir=data_dir, workers=1, reviewer="tester",
                        _env_file=None)  # type: ignore[call-arg]  # fmt: skip
    template = _order_template(tmp_path / "order.yaml", [], string_patterns=False)
    rep = process_batch([damaged_jpeg(tmp_path / "damaged.jpg")], settings, template=template)

    def offered(s: Session, fid: int) -> list[service.QueueItem]:
        return [i for i in service.list_queue(s, batch_id=rep.batch_id) if i.field_id == fid]

    with session_scope(settings) as s:
        doc = s.scalars(select(Document).where(Document.batch_id == rep.batch_id)).one()
        strings = [f for p in doc.pages for f in p.fields if f.kind == "string" and len(f.digits) == 1
                   and f.digits[0].crop is None]  # fmt: skip
        assert strings, "the lost part of the page should hold a string field with nothing cut"
        f = strings[0]
        fid, fbox = f.id, f.bbox
        assert f.flags == ["damaged_image"] and f.needs_review
        left = service.queue_counts(s, batch_id=rep.batch_id)["left"]
        for typed in (1, 2, 5):
            (item,) = offered(s, fid)
            assert item.bbox == fbox and item.label is None
            res = service.apply_correction(s, item.digit_id, typed, reviewer="tester")
            assert res.field_needs_review
        s.refresh(f)
        assert f.value == "125" and [d.position for d in f.digits] == [0, 1, 2, 3]
        assert service.queue_counts(s, batch_id=rep.batch_id)["left"] == left  # one cell offered all along
        # undo the 5: its cell is offered again, the one after it goes
        service.undo(s, reviewer="tester")
        s.refresh(f)
        assert f.value == "12" and [d.position for d in f.digits] == [0, 1, 2]
        (item,) = offered(s, fid)
        assert item.position == 2
        service.apply_correction(s, item.digit_id, 0, reviewer="tester")
        (item,) = offered(s, fid)
        res = service.apply_correction(s, item.digit_id, None, reviewer="tester")  # x: the field ends
        assert not res.field_needs_review and res.field_value == "120"
        assert not offered(s, fid)
        exported = next(x for d in export_json(s, rep.batch_id)["documents"] for p in d["pages"]
                        for x in p["fields"] if x["name"] == f.name)  # fmt: skip
        assert exported["value"] == "120" and [d["label"] for d in exported["digits"]] == [1, 2, 0, None]
