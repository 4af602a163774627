"""Templates: what a template file may say (bad values are usage errors, exit 2), and which pages it
matches. A template matches the pages of its own form and no other: a found field stands for a
template field only at the template's size and (box fields) cell count, under one shift that keeps
the form on the page, and the page must be the template's page size. Before, a template field matched
any found field of its kind whose box held its registered centre, at any shift: survey pages read
with cheque.yaml were "done", their reference field read as the cheque's date."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from digitreader.errors import InputError, UsageError
from digitreader.pipeline.load import load_pages
from digitreader.pipeline.prepare import map_box, prepare_page
from digitreader.pipeline.templates import Template, apply_template, load_template, parse_template, register
from digitreader.settings import Settings
from digitreader.synth import generate, load_truth
from digitreader.synth.layouts import template_for
from digitreader.types import FieldRegion, PreparedPage

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ("account", "survey", "order", "cheque")
SCAN = ROOT / "examples" / "scans" / "scan-0003-00001.png"


def _template(**changes: Any) -> dict[str, Any]:
    return {**template_for("cheque"), **changes}


# ---------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("value", ["abc", [1], 5, 1.5, 0, -0.5, True, None, float("nan")])
def test_a_bad_min_matched_is_a_usage_error(value: object) -> None:
    """Before: "abc" and [1] raised ValueError/TypeError (an internal error, exit 1); 5 was accepted
    and every page then failed template_mismatch."""
    with pytest.raises(UsageError, match=r"min_matched must be the fraction of the fields .*not "):
        parse_template(_template(min_matched=value))


@pytest.mark.parametrize("value", [0.25, 0.5, 1, 1.0])
def test_a_fraction_is_a_good_min_matched(value: float) -> None:
    assert parse_template(_template(min_matched=value)).min_matched == value


@pytest.mark.parametrize(
    "page",
    [
        {"width_mm": 0, "height_mm": 80},
        {"width_mm": 175, "height_mm": -80},
        {"width_mm": "wide", "height_mm": 80},
        {"width_mm": float("inf"), "height_mm": 80},
        {"width_mm": True, "height_mm": 80},
        {"width_mm": 175},
        [175, 80],
        None,
    ],
)
def test_a_bad_page_size_is_a_usage_error(page: object) -> None:
    """Before: a width of 0 (or infinity, or True) was accepted."""
    with pytest.raises(UsageError, match=r"page: .*width_mm and height_mm"):
        parse_template(_template(page=page))


def test_a_field_of_more_cells_than_fit_is_a_usage_error() -> None:
    """Before: 100000000 cells in 3 mm were accepted, and a page was cut into that many cells."""
    bad = _template(fields=[{"name": "a", "kind": "boxes", "region": [1, 2, 3, 4], "cells": 100_000_000}])
    with pytest.raises(UsageError, match="cells do not fit"):
        parse_template(bad)
    nan = _template(fields=[{"name": "a", "kind": "string", "region": [1, 2, float("nan"), 4]}])
    with pytest.raises(UsageError, match=r"region must be \[x, y, w, h\]"):
        parse_template(nan)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"min_matched": "abc"}, "min_matched"),
        ({"min_matched": 5}, "min_matched"),
        ({"page": {"width_mm": 0, "height_mm": 80}}, "width_mm"),
    ],  # fmt: skip
)
def test_a_bad_template_exits_2_from_the_command_line(
    change: dict[str, Any],
    said: str,
    isolated_env: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from digitreader.cli.main import main

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_template(**change)))
    with pytest.raises(SystemExit) as info:
        main(["submit", str(SCAN), "--template", str(path)])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert f"template {path}: " in err and said in err
    assert "Traceback" not in err and "internal error" not in err


def test_the_shipped_templates_describe_the_sample_layouts() -> None:
    """examples/templates/ are what `template_for` makes of the layouts `synth` draws. Before, cheque.yaml
    still put the date 5 mm higher than the cheque has drawn it since its date moved clear of the top edge."""
    for layout in LAYOUTS:
        assert yaml.safe_load((ROOT / "examples" / "templates" / f"{layout}.yaml").read_text()) == template_for(layout)


# ----------------------------------------------------------------------------------- registration


def _laid(template: Template, ppm: float, dx: float = 0.0, dy: float = 0.0) -> list[FieldRegion]:
    """The template's fields as find_fields would report them on a clean page at `ppm` px/mm."""
    out = []
    for tf in template.fields:
        x, y, w, h = (round(v * ppm) for v in (tf.region[0] + dx, tf.region[1] + dy, *tf.region[2:]))
        n = tf.cells or 0
        cells = tuple((x + round(i * w / n), y, round(w / n), h) for i in range(n))
        out.append(FieldRegion(tf.kind, (x, y, w, h), cells))  # type: ignore[arg-type]
    return out


def test_a_template_field_matches_only_a_found_field_of_its_size_and_cells() -> None:
    """Before, a found field of the right kind matched whatever its size or number of cells."""
    template = load_template(ROOT / "examples" / "templates" / "account.yaml")
    ppm = 150 / 25.4
    found = _laid(template, ppm, dx=3, dy=-4)
    *_, m = register(template, found, ppm)
    assert m == {i: i for i in range(len(found))}
    taller = [FieldRegion(r.kind, (r.bbox[0], r.bbox[1], r.bbox[2], 2 * r.bbox[3]), r.cells) for r in found]
    assert register(template, taller, ppm)[3] == {}
    fewer = [FieldRegion(r.kind, r.bbox, r.cells[: len(r.cells) // 2]) for r in found]
    *_, m = register(template, fewer, ppm)
    assert all(template.fields[i].kind == "string" for i in m)  # its box fields have half their cells


# --------------------------------------------------------------------------------- pages of each layout


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, list[tuple[PreparedPage, dict]]]:
    """Two upright pages of each sample layout, prepared, with their truth."""
    base = tmp_path_factory.mktemp("layouts")
    settings = Settings(data_dir=data_dir, _env_file=None)  # type: ignore[call-arg]
    out: dict[str, list[tuple[PreparedPage, dict]]] = {}
    for seed, layout in enumerate(LAYOUTS, start=60):
        kind = "cheque" if layout == "cheque" else "form"
        files = generate(base / layout, pages=2, seed=seed, kind=kind, dpi=150, data_dir=data_dir,
                         layout=None if kind == "cheque" else layout)  # fmt: skip
        out[layout] = []
        for f in files:
            (page,) = list(load_pages(f, settings))
            out[layout].append((prepare_page(page, settings), load_truth(f)["pages"][0]))
    return out


@pytest.mark.parametrize("name", LAYOUTS)
def test_pages_of_another_layout_fail_template_mismatch(
    name: str, pages: dict[str, list[tuple[PreparedPage, dict]]]
) -> None:
    """Before: account.yaml read survey and order pages, cheque.yaml every form (survey pages "done",
    their reference read as the cheque's date, their total as its amount)."""
    template = load_template(ROOT / "examples" / "templates" / f"{name}.yaml")
    for layout, prepared in pages.items():
        if layout == name:
            continue
        for p, _ in prepared:
            with pytest.raises(InputError, match="does not match template") as info:
                apply_template(p, template)
            assert info.value.code == "template_mismatch", (name, layout)


@pytest.mark.parametrize("name", LAYOUTS)
def test_pages_of_its_own_layout_match_on_their_fields(
    name: str, pages: dict[str, list[tuple[PreparedPage, dict]]]
) -> None:
    template = load_template(ROOT / "examples" / "templates" / f"{name}.yaml")
    for p, truth in pages[name]:
        regions = apply_template(p, template)
        assert [r.name for r in regions] == [f["name"] for f in truth["fields"]]
        for r, tf in zip(regions, truth["fields"], strict=True):
            x, y, w, h = map_box(p.to_original, r.bbox, p.width, p.height)
            tx, ty, tw, th = tf["bbox"]
            assert tx <= x + w / 2 <= tx + tw and ty <= y + h / 2 <= ty + th, (name, r.name)
            if r.kind == "boxes":
                assert len(r.cells) == len(tf["digits"]), (name, r.name)


def test_a_cheque_template_refuses_a_form_by_its_page_size(pages: dict[str, list[tuple[PreparedPage, dict]]]) -> None:
    """An order form has a price field of the cheque amount's size where the cheque's form could lie
    on the page: one of the cheque's two fields, enough to match. Its page is no cheque's."""
    template = load_template(ROOT / "examples" / "templates" / "cheque.yaml")
    p, _ = pages["order"][0]
    with pytest.raises(InputError, match=r"the page is 210 x 297 mm, the template's form 175 x 80 mm"):
        apply_template(p, template)


def test_the_pipeline_refuses_a_survey_read_with_the_cheque_template(
    pages: dict[str, list[tuple[PreparedPage, dict]]], tmp_path: Path, data_dir: Path, settings: Settings
) -> None:
    """The audit's case through segment_page (every way up tried): template_mismatch, not a survey
    read as a cheque."""
    from digitreader.pipeline.segment import segment_page

    (survey,) = generate(tmp_path, pages=1, seed=64, kind="form", layout="survey", dpi=150, data_dir=data_dir)
    (page,) = list(load_pages(survey, settings))
    with pytest.raises(InputError) as info:
        segment_page(page, settings, template=load_template(ROOT / "examples" / "templates" / "cheque.yaml"))
    assert info.value.code == "template_mismatch"


def test_a_cheque_laid_on_an_a4_sheet_matches_where_every_field_is_found(tmp_path: Path, data_dir: Path) -> None:
    """A cheque scanned on a flatbed as a whole A4 sheet: the page is larger than the template's form,
    which it holds; with every field of the template found in place, it is the cheque (a form of
    another kind, larger than a cheque, finds some of a cheque's fields by chance, not all)."""
    import numpy as np
    from PIL import Image

    settings = Settings(data_dir=data_dir, _env_file=None)  # type: ignore[call-arg]
    (cheque,) = generate(tmp_path / "c", pages=1, seed=7, kind="cheque", dpi=300, fmt="png", data_dir=data_dir)
    truth = load_truth(cheque)["pages"][0]
    sheet = Image.new("L", (2480, 3508), 255)
    dx, dy = 180, 260
    sheet.paste(Image.open(cheque).convert("L"), (dx, dy))
    path = tmp_path / "a4.png"
    sheet.save(path, dpi=(300, 300))
    (page,) = list(load_pages(path, settings))
    assert np.count_nonzero(page.gray < 128) > 1000
    p = prepare_page(page, settings)
    regions = apply_template(p, load_template(ROOT / "examples" / "templates" / "cheque.yaml"))
    assert [r.name for r in regions] == [f["name"] for f in truth["fields"]]
    for r, tf in zip(regions, truth["fields"], strict=True):
        x, y, w, h = map_box(p.to_original, r.bbox, p.width, p.height)
        tx, ty, tw, th = tf["bbox"]
        assert tx + dx <= x + w / 2 <= tx + dx + tw and ty + dy <= y + h / 2 <= ty + dy + th, r.name
