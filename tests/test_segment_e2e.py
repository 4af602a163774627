"""End to end: generated scans (skew, noise, touching lines, blanks) -> segment_page -> ground truth."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from digitreader.errors import InputError, UsageError
from digitreader.pipeline.load import load_pages
from digitreader.pipeline.segment import segment_page
from digitreader.pipeline.templates import load_template, parse_template
from digitreader.settings import Settings
from digitreader.synth import generate, load_truth
from digitreader.synth.layouts import template_for
from digitreader.synth.score import score_page, summary

ROOT = Path(__file__).resolve().parents[1]


def _score(files: list[Path], settings: Settings) -> tuple[Counter[str], list]:
    total: Counter[str] = Counter()
    cuts = []
    for f in files:
        truth = load_truth(f)
        for page, tp in zip(load_pages(f, settings), truth["pages"], strict=True):
            cut = segment_page(page, settings)
            assert (cut.width, cut.height) == (tp["width"], tp["height"])
            assert abs(cut.skew_degrees - tp["skew_degrees"]) < 0.4
            total += score_page(tp, cut)
            cuts.append(cut)
    return total, cuts


@pytest.mark.slow
def test_scanned_forms_and_cheques_against_truth(tmp_path: Path, data_dir: Path) -> None:
    s = Settings(pdf_dpi=200, _env_file=None)  # type: ignore[call-arg]
    files = generate(tmp_path, pages=4, seed=21, kind="mixed", fmt="mixed", dpi=200, style="scan", data_dir=data_dir)
    total, cuts = _score(files, s)
    sm = summary(total)
    assert total["positions"] > 100 and total["blanks"] > 3
    assert sm["merged_fields"] == 0
    assert sm["fields_found_pct"] >= 95.0, sm
    assert sm["positions_in_order_pct"] >= 95.0, sm
    assert sm["blanks_called_blank_pct"] >= 90.0, sm
    assert sm["extra_fields"] == 0, sm
    for cut in cuts:
        assert [f.name for f in cut.fields] == [f"field-{i:02d}" for i in range(1, len(cut.fields) + 1)]
        for f in cut.fields:
            for slot in f.slots:
                assert slot.crop.shape == (28, 28)
                assert slot.blank == (not slot.crop.any())
                x, y, w, h = slot.bbox
                assert x >= 0 and y >= 0 and x + w <= cut.width and y + h <= cut.height


@pytest.mark.slow
def test_rough_scans_still_mostly_right(tmp_path: Path, data_dir: Path, settings: Settings) -> None:
    files = generate(tmp_path, pages=2, seed=8, kind="form", fmt="jpeg", dpi=200, style="rough", data_dir=data_dir)
    total, _ = _score(files, settings)
    sm = summary(total)
    assert sm["merged_fields"] == 0
    assert sm["positions_in_order_pct"] >= 90.0, sm


def test_template_names_fields_and_refuses_other_forms(tmp_path: Path, data_dir: Path, settings: Settings) -> None:
    template = load_template(ROOT / "examples" / "templates" / "account.yaml")
    (form,) = generate(tmp_path / "f", pages=1, seed=4, kind="form", layout="account", dpi=150, data_dir=data_dir)
    (page,) = list(load_pages(form, settings))
    cut = segment_page(page, settings, template=template)
    truth = load_truth(form)["pages"][0]
    assert [f.name for f in cut.fields] == [f["name"] for f in truth["fields"]]
    total = score_page(truth, cut)
    assert total["merged_fields"] == 0 and total["in_order"] >= 0.95 * total["positions"]
    (cheque,) = generate(tmp_path / "c", pages=1, seed=4, kind="cheque", dpi=150, data_dir=data_dir)
    (page,) = list(load_pages(cheque, settings))
    with pytest.raises(InputError) as info:
        segment_page(page, settings, template=template)
    assert info.value.code == "template_mismatch"


def test_bad_templates_are_usage_errors(tmp_path: Path) -> None:
    good = template_for("cheque")
    assert parse_template(good).fields
    bad = dict(good, fields=[{"name": "x", "kind": "boxes", "region": [0, 0, 10, 10]}])  # no cells
    with pytest.raises(UsageError, match="cells"):
        parse_template(bad)
    p = tmp_path / "t.yaml"
    p.write_text("fields: [unclosed")
    with pytest.raises(UsageError):
        load_template(p)


@pytest.mark.slow
def test_reduced_jpeg_decode_gives_the_same_cut(tmp_path: Path, data_dir: Path, settings: Settings) -> None:
    """A 300-dpi JPEG decoded at half size (load_pages(max_reduction=2)) is cut like the full decode:
    the same fields and digit positions, boxes in the page as submitted within a few pixels."""
    files = generate(tmp_path, pages=2, seed=31, kind="mixed", fmt="jpeg", dpi=300, style="scan", data_dir=data_dir)
    for f in files:
        truth = load_truth(f)
        (full,) = list(load_pages(f, settings))
        (half,) = list(load_pages(f, settings, max_reduction=2))
        assert half.reduction == 2 and (half.width, half.height) == (full.width, full.height)
        a, b = segment_page(full, settings), segment_page(half, settings)
        assert (b.width, b.height) == (truth["pages"][0]["width"], truth["pages"][0]["height"])
        assert summary(score_page(truth["pages"][0], b))["positions_in_order_pct"] >= 97.0
        assert [len(x.slots) for x in a.fields] == [len(x.slots) for x in b.fields]
        for fa, fb in zip(a.fields, b.fields, strict=True):
            for sa, sb in zip(fa.slots, fb.slots, strict=True):
                assert max(abs(p - q) for p, q in zip(sa.bbox, sb.bbox, strict=True)) <= 6, (sa.bbox, sb.bbox)
