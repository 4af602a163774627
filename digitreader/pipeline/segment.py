"""Segment: one call per page, prepare -> fields (or a template) -> cut. Returns a `PageCut`."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from digitreader.errors import InputError
from digitreader.pipeline.cut import cut_field
from digitreader.pipeline.fields import find_fields
from digitreader.pipeline.orient import print_reading, upright_cut
from digitreader.pipeline.prepare import prepare_page
from digitreader.pipeline.sheets import SHEET_TURN, find_sheets, sheet_page
from digitreader.pipeline.split import DigitScorer, default_scorer, splitter_model
from digitreader.settings import Settings, get_settings
from digitreader.types import FieldRegion, PageCut, PageImage, PreparedPage

if TYPE_CHECKING:
    from pathlib import Path

    from digitreader.pipeline.templates import Template

log = logging.getLogger(__name__)

#: A page with less ink than this fraction is blank; with more, it is all black (a failed scan).
BLANK_INK = 0.0005
BLACK_INK = 0.85


def check_page(page: PageImage, prepared: PreparedPage) -> None:
    """Refuse pages with no ink at all, or that are almost entirely ink."""
    g = page.gray[::4, ::4]
    if g.size and np.count_nonzero(g < 64) / g.size > BLACK_INK:
        raise InputError(
            "the page is all black (a failed scan or a negative?)",
            path=page.source or None,
            page=page.number,
            code="all_black",
        )
    ink = prepared.ink[::2, ::2]
    if ink.size == 0 or float(np.count_nonzero(ink)) / ink.size < BLANK_INK:
        raise InputError(
            "the page is blank (no ink found)", path=page.source or None, page=page.number, code="blank_page"
        )


def segment_page(
    page: PageImage,
    settings: Settings | None = None,
    template: Template | None = None,
    model_path: str | Path | None = None,
    prepared: PreparedPage | None = None,
    regions: Sequence[FieldRegion] | None = None,
) -> PageCut:
    """Find and cut every digit of a page. Boxes are in the coordinates of the page as submitted.

    `model_path`: the model that will read the digits (None: DIGITREADER_MODEL_PATH, else the shipped
    one); string fields are split with the splitter's model (`split.splitter_model`: its own by default,
    this one with DIGITREADER_SPLITTER=reader).

    With a `template` (see `templates.load_template`), the page is registered to it and its fields
    are named and cut where the template says; otherwise fields are found and named by position
    ("field-01", ... top-to-bottom, left-to-right).

    `prepared`: the page already prepared by `prepare_page`, and `regions`: the fields already found
    on it (`find_fields`), for a caller that also needs them (e.g. `training.pagecrops`); None
    prepares the page, and finds its fields (or applies the template), here.

    A page scanned upside down or sideways is cut turned upright where its digits say so (`orient.py`;
    `PageCut.rotation`), unless DIGITREADER_ROTATE_PAGES is false or the caller passed `prepared`.
    """
    scorer = default_scorer(splitter_model(settings, model_path))
    as_it_lies: list[tuple[PreparedPage, Sequence[FieldRegion]]] = []  # kept by the first cut, for `printed`

    def cut_turned(rotation: int) -> PageCut:
        return _cut_page(page, settings, template, scorer, rotation, prepared, regions, as_it_lies)

    def printed() -> float | None:
        return print_reading(*as_it_lies[0]) if as_it_lies else None

    rotate = settings.rotate_pages if settings is not None else get_settings().rotate_pages
    if not rotate or scorer is None or prepared is not None or regions is not None:
        return cut_turned(0)
    t0 = time.perf_counter()
    cut = upright_cut(scorer, cut_turned, printed)
    as_it_lies.clear()
    spent = time.perf_counter() - t0 - sum(cut.timings.values())
    if cut.rotation:
        log.info("%s page %d: read turned %d degrees clockwise", page.source or "page", page.number, cut.rotation)
    return dataclasses.replace(cut, timings={**cut.timings, "orient": spent})


def fields_on_sheets(
    prepared: PreparedPage, regions: Sequence[FieldRegion], settings: Settings | None = None
) -> list[tuple[PreparedPage, FieldRegion]] | None:
    """The page's fields with the prepared page each is to be cut from, where the page holds sheets
    turned their own way (`sheets.py`): a sheet straightened on its own gives its own fields, unless
    it finds fewer than the page did on it. None where nothing changed (one sheet, or every sheet
    straight with the page). Ordered sheet by sheet (top to bottom), each in the fields stage's order;
    fields on no sheet come first."""
    sheets = find_sheets(prepared)
    if not any(abs(s.turn) >= SHEET_TURN for s in sheets):
        return None

    def centre(r: FieldRegion) -> tuple[float, float]:
        x, y, w, h = r.bbox
        return x + w / 2, y + h / 2

    groups: list[list[tuple[PreparedPage, FieldRegion]]] = [[] for _ in range(len(sheets) + 1)]
    for r in regions:
        on = next((k for k, s in enumerate(sheets) if s.holds(*centre(r))), len(sheets))
        groups[on].append((prepared, r))
    changed = False
    for k, sheet in enumerate(sheets):
        if abs(sheet.turn) < SHEET_TURN:
            continue
        alone = sheet_page(prepared, sheet, sheets)
        own = find_fields(alone, settings)
        log.debug(
            "page %d: a sheet turned %.2f degrees: %d fields alone, %d with the page",
            prepared.number,
            sheet.turn,
            len(own),
            len(groups[k]),
        )
        if len(own) >= len(groups[k]):
            groups[k] = [(alone, r) for r in own]
            changed = True
    if not changed:
        return None
    return groups[-1] + [pair for g in groups[:-1] for pair in g]


def _cut_page(
    page: PageImage,
    settings: Settings | None,
    template: Template | None,
    scorer: DigitScorer | None,
    rotation: int = 0,
    prepared: PreparedPage | None = None,
    regions: Sequence[FieldRegion] | None = None,
    keep: list[tuple[PreparedPage, Sequence[FieldRegion]]] | None = None,
) -> PageCut:
    """The page turned `rotation` degrees clockwise, prepared, its fields found (or the template
    applied) and cut. `keep`: the prepared page and its fields are appended to it (turned 0 only)."""
    timings: dict[str, float] = {}
    on_sheets: list[tuple[PreparedPage, FieldRegion]] | None = None
    t0 = time.perf_counter()
    if prepared is None:
        prepared = prepare_page(page, settings, rotation)
    t1 = time.perf_counter()
    timings["prepare"] = t1 - t0
    check_page(page, prepared)
    if regions is None and template is not None:
        from digitreader.pipeline.templates import apply_template

        regions = apply_template(prepared, template)
    elif regions is None:
        regions = find_fields(prepared, settings)
        on_sheets = fields_on_sheets(prepared, regions, settings)
    t2 = time.perf_counter()
    timings["fields"] = t2 - t1
    if keep is not None and rotation == 0:
        keep.append((prepared, regions))
    if on_sheets is None:
        on_sheets = [(prepared, r) for r in regions]
    fields = tuple(
        cut_field(where, r, name=r.name or f"field-{i:02d}", scorer=scorer)
        for i, (where, r) in enumerate(on_sheets, start=1)
    )
    timings["cut"] = time.perf_counter() - t2
    log.debug(
        "page %d (turned %d): %d fields, %d digits, %.0f ms",
        page.number,
        rotation,
        len(fields),
        sum(len(f.slots) for f in fields),
        1000 * sum(timings.values()),
    )
    return PageCut(
        number=page.number,
        width=page.width,
        height=page.height,
        fields=fields,
        skew_degrees=prepared.skew_degrees,
        timings=timings,
        rotation=rotation,
    )
