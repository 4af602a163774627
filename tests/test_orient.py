"""Pages scanned upside down or on their side are read turned upright (`pipeline/orient.py`), with
their boxes still in the coordinates of the page as submitted, their review strips upright, and the
turn stored, exported and carried between workers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from digitreader.cli.commands.status import status_text
from digitreader.cli.commands.submit import _summary
from digitreader.db import Digit, Field, Page, session_scope
from digitreader.db.store import batch_status
from digitreader.export import export_json
from digitreader.pipeline.document import DocumentCut, field_strips
from digitreader.pipeline.load import load_pages
from digitreader.pipeline.orient import Reading, choose
from digitreader.pipeline.prepare import map_box, turn, unturn_matrix
from digitreader.pipeline.process import process_batch
from digitreader.pipeline.segment import segment_page
from digitreader.review.service import strip_png
from digitreader.settings import Settings
from digitreader.synth.generate import turn_page, turned_box
from tests.test_pipeline_e2e import predictor, scans, score  # noqa: F401  (fixtures)


def write_turned(src: Path, folder: Path, rotation: int, settings: Settings) -> Path:
    """`src` (one page) decoded, turned `rotation` degrees clockwise and written losslessly (PNG) into
    `folder`, with its ground truth turned the same way."""
    page = next(iter(load_pages(src, settings)))
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{src.stem}-{rotation}.png"
    truth = json.loads(src.with_name(src.stem + ".truth.json").read_text())
    img, turned = turn_page(page.gray, truth["pages"][0], rotation)
    assert cv2.imwrite(str(out), img)
    out.with_name(out.stem + ".truth.json").write_text(json.dumps({**truth, "pages": [turned]}))
    return out


def single_pages(scans: Path) -> list[Path]:  # noqa: F811
    files = sorted(p for p in scans.iterdir() if p.suffix in (".png", ".jpg", ".bmp"))
    assert len(files) >= 2
    return files[:2]


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_turn_and_its_matrix_agree(rotation: int) -> None:
    """The box of some pixels, turned by `turn`, is `turned_box`; `unturn_matrix` maps it back exactly."""
    rng = np.random.default_rng(rotation)
    for _ in range(20):
        width, height = (int(v) for v in rng.integers(5, 60, 2))
        x, y = int(rng.integers(0, width - 1)), int(rng.integers(0, height - 1))
        w, h = int(rng.integers(1, width - x + 1)), int(rng.integers(1, height - y + 1))
        img = np.zeros((height, width), np.uint8)
        img[y : y + h, x : x + w] = 255
        t = turn(img, rotation)
        ys, xs = np.nonzero(t)
        found = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
        assert list(found) == turned_box((x, y, w, h), rotation, width, height)
        back = map_box(np.asarray(unturn_matrix(rotation, width, height))[:2], found, width, height)
        assert back == (x, y, w, h)
    with pytest.raises(ValueError):
        turn(np.zeros((3, 3), np.uint8), 45)


def test_choose_takes_another_way_up_only_when_it_reads_clearly_better() -> None:
    sure, doubtful, bad = Reading(0.0, -0.01, 24), Reading(0.25, -0.4, 24), Reading(1.0, -np.inf, 0)
    assert choose({0: sure}) == 0
    assert choose({0: doubtful, 180: sure, 90: bad, 270: bad}) == 180
    assert choose({0: bad, 180: bad, 90: doubtful, 270: sure}) == 270
    assert choose({0: doubtful, 180: doubtful}) == 0  # poor handwriting either way: as it lies
    assert choose({0: doubtful, 180: Reading(0.2, -0.3, 24)}) == 0  # not GOOD enough
    # A cheque's dozen digits: one unsure crop fewer counts only with a clearly surer mean.
    assert choose({0: Reading(1 / 12, -0.06, 12), 180: Reading(0.0, -0.001, 12)}) == 180
    assert choose({0: Reading(1 / 12, -0.01, 12), 180: Reading(0.0, -0.005, 12)}) == 0


@pytest.mark.slow
def test_a_page_turned_any_way_is_cut_as_if_upright(settings: Settings, scans: Path) -> None:  # noqa: F811
    """The same page turned each way is cut turned back: the same crops, its boxes the upright page's
    boxes turned (the page as submitted). With DIGITREADER_ROTATE_PAGES=false it is cut as it lies."""
    for src in single_pages(scans):
        page = next(iter(load_pages(src, settings)))
        upright = segment_page(page, settings)
        assert upright.rotation == 0 and len(upright.crops()) >= 8
        for rotation in (90, 180, 270):
            lying = dataclasses.replace(page, gray=turn(page.gray, rotation))
            cut = segment_page(lying, settings)
            assert cut.rotation == (360 - rotation) % 360, (src.name, rotation)
            assert (cut.width, cut.height) == (lying.width, lying.height)
            assert np.array_equal(cut.crops(), upright.crops())
            for fu, fc in zip(upright.fields, cut.fields, strict=True):
                assert fc.bbox == tuple(turned_box(fu.bbox, rotation, page.width, page.height))
                for su, sc in zip(fu.slots, fc.slots, strict=True):
                    assert sc.bbox == tuple(turned_box(su.bbox, rotation, page.width, page.height))
            # The review strips come out upright: the upright page's strips, pixel for pixel.
            for a, b in zip(field_strips(page.gray, upright), field_strips(lying.gray, cut), strict=True):
                assert a is not None and b is not None
                ia = cv2.imdecode(np.frombuffer(a.jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
                ib = cv2.imdecode(np.frombuffer(b.jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
                assert ia is not None and ib is not None
                assert ia.shape == ib.shape and float(np.abs(ia.astype(int) - ib).mean()) < 2.0
        still = dataclasses.replace(page, gray=turn(page.gray, 180))
        off = Settings(_env_file=None, home=settings.home, rotate_pages=False)  # type: ignore[call-arg]
        assert segment_page(still, off).rotation == 0


@pytest.mark.slow
def test_a_batch_of_turned_scans_is_read_and_exported_like_upright_ones(
    settings: Settings,
    scans: Path,  # noqa: F811
    predictor: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Upright and turned copies of the same scans in one batch: every turned page is stored and
    exported with its turn, its fields read the upright copy's values, its boxes match its own
    (turned) ground truth; a flagged digit's review strip is shown upright, its box highlighted."""
    folder = tmp_path / "turned"
    for src in single_pages(scans):
        for rotation in (0, 90, 180, 270):
            write_turned(src, folder, rotation, settings)
    report = process_batch([folder], settings, predictor=predictor)
    assert report.status == "done" and not report.failed and report.total == 8
    assert report.turned == 6 and "pages 8 (6 turned upright)," in _summary(report)
    with session_scope(settings) as s:
        export = export_json(s, report.batch_id)
        st = batch_status(s, report.batch_id)
    assert st["pages"] == 8 and st["pages_turned"] == 6 and "pages: 8 (6 turned upright)," in status_text(st)
    values: dict[str, list[list[str]]] = {}
    for doc in export["documents"]:
        stem, turned = Path(doc["path"]).stem.rsplit("-", 1)
        [page] = doc["pages"]
        assert page["rotation"] == (360 - int(turned)) % 360, doc["path"]
        values.setdefault(stem, []).append(sorted(f["value"] for f in page["fields"]))
    for stem, seen in values.items():
        assert len(seen) == 4 and all(v == seen[0] for v in seen), stem
    q = score(export)  # against each file's own ground truth, boxes in the page as submitted
    assert q["field_found"] >= 0.95 and q["digit_boxes"] >= 0.95 and q["digit_accuracy"] >= 0.9, q
    with session_scope(settings) as s:
        stored = {p.rotation for p in s.query(Page)}
        assert stored == {0, 90, 180, 270}
        # The highlighted digit's strip: the same picture for the upright copy and each turned one.
        pictures: dict[int, np.ndarray] = {}
        first = single_pages(scans)[0].stem
        for rotation in (0, 90, 180, 270):
            digit = (
                s.query(Digit)
                .join(Field)
                .join(Page)
                .filter(Page.rotation == (360 - rotation) % 360, Digit.blank.is_(False), Field.ordinal == 0)
                .filter(Page.document.has(path=str(folder / f"{first}-{rotation}.png")))
                .order_by(Digit.position)
                .first()
            )
            assert digit is not None
            picture = cv2.imdecode(np.frombuffer(strip_png(s, digit.id), np.uint8), cv2.IMREAD_COLOR)
            assert picture is not None
            pictures[rotation] = picture
        for rotation in (90, 180, 270):
            a, b = pictures[0], pictures[rotation]
            assert a.shape == b.shape, rotation
            orange = [np.all(p == p[..., :1], axis=2) == 0 for p in (a, b)]  # the highlight: not grey
            assert orange[0].sum() > 20 and float((orange[0] & orange[1]).sum()) / orange[0].sum() > 0.8


def test_the_turn_travels_between_workers() -> None:
    from digitreader.types import PageCut
    from workers.codec import decode_cut, encode_cut

    cut = DocumentCut("a.png", (PageCut(1, 100, 200, (), rotation=270),), page_count=1)
    [page] = decode_cut(encode_cut(cut)).pages
    assert page.rotation == 270 and (page.width, page.height) == (100, 200)


def test_a_form_upside_down_matches_its_template_once_turned(
    tmp_path: Path, data_dir: Path, settings: Settings
) -> None:
    """As it lies, an upside-down form does not match its template (template_mismatch); turned, it
    does, and its fields are named by it. Another form matches no way up: still template_mismatch."""
    from digitreader.errors import InputError
    from digitreader.pipeline.templates import load_template
    from digitreader.synth import generate

    root = Path(__file__).resolve().parents[1]
    template = load_template(root / "examples" / "templates" / "account.yaml")
    (form,) = generate(tmp_path / "f", pages=1, seed=4, kind="form", layout="account", dpi=150, data_dir=data_dir)
    (page,) = list(load_pages(form, settings))
    upright = segment_page(page, settings, template=template)
    lying = dataclasses.replace(page, gray=turn(page.gray, 180))
    off = Settings(_env_file=None, home=settings.home, rotate_pages=False)  # type: ignore[call-arg]
    with pytest.raises(InputError) as info:
        segment_page(lying, off, template=template)
    assert info.value.code == "template_mismatch"
    cut = segment_page(lying, settings, template=template)
    assert cut.rotation == 180
    assert [f.name for f in cut.fields] == [f.name for f in upright.fields]
    assert np.array_equal(cut.crops(), upright.crops())
    (cheque,) = generate(tmp_path / "c", pages=1, seed=4, kind="cheque", dpi=150, data_dir=data_dir)
    (other,) = list(load_pages(cheque, settings))
    with pytest.raises(InputError) as info:
        segment_page(dataclasses.replace(other, gray=turn(other.gray, 180)), settings, template=template)
    assert info.value.code == "template_mismatch"


def test_synth_scans_pages_turned_with_their_truth(tmp_path: Path, data_dir: Path) -> None:
    """`synth --turned`: the first page of a seed is the page the seed gives upright, turned, and its
    truth's boxes are the upright truth's boxes turned the same way."""
    from digitreader.synth import generate
    from digitreader.synth.generate import load_truth

    (upright,) = generate(tmp_path / "u", pages=1, seed=5, fmt="png", kind="form", data_dir=data_dir)
    (lying,) = generate(tmp_path / "t", pages=1, seed=5, fmt="png", kind="form", data_dir=data_dir, turned=1.0)
    a, b = load_truth(upright)["pages"][0], load_truth(lying)["pages"][0]
    rotation = b["turned"]
    assert rotation in (90, 180, 270) and "turned" not in a  # --turned 1: every page turned; 0: none
    img_a = cv2.imread(str(upright), cv2.IMREAD_GRAYSCALE)
    img_b = cv2.imread(str(lying), cv2.IMREAD_GRAYSCALE)
    assert img_a is not None and img_b is not None
    assert np.array_equal(turn(img_a, rotation), img_b)
    for fa, fb in zip(a["fields"], b["fields"], strict=True):
        assert fb["bbox"] == turned_box(fa["bbox"], rotation, a["width"], a["height"])
        assert [d["label"] for d in fa["digits"]] == [d["label"] for d in fb["digits"]]


def _fake_cut(value: int, crops: int = 12) -> Any:
    """A page cut whose crops are all `value` (a stand-in the fake scorer reads)."""
    from digitreader.types import DigitSlot, FieldCut, PageCut

    slots = tuple(DigitSlot(i, (i, 0, 1, 1), np.full((28, 28), value, np.uint8), False) for i in range(crops))
    return PageCut(1, 100, 100, (FieldCut("f", "boxes", (0, 0, 10, 1), slots),))


def test_upright_cut_tries_the_other_ways_up_only_when_needed_and_survives_their_errors() -> None:
    """The orient stage's control flow with a stand-in scorer (crops of value 1 read surely, 2 not):
    a page reading surely is cut once; one reading badly is cut upside down, then on each side; an
    InputError cutting another way up (not the page as it lies) counts as nothing to read."""
    from digitreader.errors import InputError
    from digitreader.pipeline.orient import upright_cut

    def scorer(crops: np.ndarray) -> np.ndarray:
        return np.where(crops[:, 0, 0] == 1, -0.001, -3.0)

    def run(ways: dict[int, Any]) -> tuple[int, list[int]]:
        calls: list[int] = []

        def cut_turned(rotation: int) -> Any:
            calls.append(rotation)
            way = ways[rotation]
            if isinstance(way, Exception):
                raise way
            return dataclasses.replace(_fake_cut(way), rotation=rotation)

        return upright_cut(scorer, cut_turned).rotation, calls

    assert run({0: 1}) == (0, [0])
    assert run({0: 2, 180: 1, 90: 2, 270: 2}) == (180, [0, 180])
    broken = InputError("cannot", code="unreadable")
    assert run({0: 2, 180: broken, 90: 1, 270: 2}) == (90, [0, 180, 90, 270])
    assert run({0: 2, 180: broken, 90: broken, 270: broken}) == (0, [0, 180, 90, 270])
    with pytest.raises(InputError):  # the page as it lies fails as before
        run({0: broken})
    mismatch = InputError("no match", code="template_mismatch")
    assert run({0: mismatch, 180: 1, 90: 2, 270: 2}) == (180, [0, 180])
    with pytest.raises(InputError) as info:
        run({0: mismatch, 180: 2, 90: broken, 270: 2})
    assert info.value is mismatch


def test_printed_lines_say_which_way_up(settings: Settings, scans: Path) -> None:  # noqa: F811
    """Every sample scan's printed words (labels, a bank's name) say it lies upright, and turned half a
    turn that it lies upside down; a page with boxes and no print says nothing."""
    from digitreader.pipeline.fields import find_fields
    from digitreader.pipeline.orient import PRINT_SAYS, print_reading
    from digitreader.pipeline.prepare import prepare_page

    files = sorted(p for p in scans.iterdir() if p.suffix in (".png", ".jpg", ".tif", ".pdf"))
    assert len(files) >= 5
    for src in files:
        page = next(iter(load_pages(src, settings)))
        says = {}
        for rotation in (0, 180):
            prepared = prepare_page(page, settings, rotation)
            says[rotation] = print_reading(prepared, find_fields(prepared, settings))
        assert says[0] is not None and says[0] >= PRINT_SAYS, (src.name, says)
        assert says[180] is not None and says[180] <= -PRINT_SAYS, (src.name, says)
    # Boxes alone (a row of cells, a long string box): no printed line to read.
    from digitreader.types import PageImage

    gray = np.full((1200, 900), 245, np.uint8)
    for i in range(8):
        cv2.rectangle(gray, (100 + 60 * i, 300), (150 + 60 * i, 370), 40, 3)
    cv2.rectangle(gray, (100, 600), (700, 680), 40, 3)
    blank_form = PageImage(1, gray, dpi=150.0)
    prepared = prepare_page(blank_form, settings, 0)
    assert print_reading(prepared, find_fields(prepared, settings)) is None


def test_the_printed_lines_decide_when_the_digits_cannot() -> None:
    """With a stand-in scorer: a page whose digits read as surely either way up (few crops, as on a
    cheque) is read upside down when its printed lines say so, and as it lies when they say it is
    upright or nothing; their word is not taken against digits that read worse upside down; and
    they are not asked about a page whose full sample of crops reads surely."""
    from digitreader.pipeline.orient import SAMPLE, upright_cut

    def scorer(crops: np.ndarray) -> np.ndarray:
        return np.where(crops[:, 0, 0] == 1, -0.001, -3.0)

    def run(ways: dict[int, int], says: float | None, crops: int = 12) -> tuple[int, list[int], int]:
        calls: list[int] = []
        asked: list[int] = []

        def cut_turned(rotation: int) -> Any:
            calls.append(rotation)
            return dataclasses.replace(_fake_cut(ways[rotation], crops), rotation=rotation)

        def printed() -> float | None:
            asked.append(1)
            return says

        return upright_cut(scorer, cut_turned, printed).rotation, calls, len(asked)

    assert run({0: 1, 180: 1}, -0.6) == (180, [0, 180], 1)
    assert run({0: 1, 180: 1}, 0.6) == (0, [0], 1)
    assert run({0: 1, 180: 1}, None) == (0, [0], 1)
    assert run({0: 1, 180: 1}, -0.05) == (0, [0], 1)  # too weak a word
    assert run({0: 1, 180: 2}, -0.6) == (0, [0, 180], 1)  # the digits read worse that way
    assert run({0: 1, 180: 1}, -0.6, crops=SAMPLE) == (0, [0], 0)  # a full sample read surely: not asked


def test_a_cheque_whose_digits_read_alike_either_way_up_is_turned_by_its_print(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real generated cheque fed upside down, whose digits read as surely either way up (the digits
    alone leave it as it lies): its printed words say it is upside down, and it is cut turned upright,
    the same crops as the cheque turned back by hand."""
    import digitreader.pipeline.segment as segment

    page = next(iter(load_pages(Path(__file__).parent / "data" / "cheque-upside-down.jpg", settings)))
    cut = segment_page(page, settings)
    assert cut.rotation == 180
    upright = dataclasses.replace(page, gray=turn(page.gray, 180))
    assert np.array_equal(cut.crops(), segment_page(upright, settings).crops())
    monkeypatch.setattr(segment, "print_reading", lambda *args: None)  # the digits alone
    assert segment_page(page, settings).rotation == 0
