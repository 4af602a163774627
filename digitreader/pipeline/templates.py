"""Form templates: a YAML description of a known form type, and registration of a page to it.

A template names the fields of a form and says where they are (millimetres from the top-left
corner of the form), their kind, number of cells, and the expected length or pattern of their
value. `apply_template` finds the page's box structure (`fields.find_fields`), registers the
template to it (scale and shift, after deskew) from the fields that agree, and returns the
template's fields, named, in page coordinates: a field the page shows is cut on its detected
cells; one it does not show clearly (a faint box) is cut where the registered template puts it.
A found field agrees with a template field only when it is like it (kind, size at the page's
scale, number of cells) and lies where the one shift of the page puts it, a shift that keeps the
form on the page. A page smaller than the template's, larger with a template field not found on it,
or where too few template fields are found, raises `InputError(code="template_mismatch")`: it is
another form type.

See docs/templates.md for the format and examples/templates/ for examples.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import yaml

from digitreader.errors import InputError, UsageError
from digitreader.pipeline.fields import find_fields
from digitreader.types import BBox, FieldRegion, PreparedPage

log = logging.getLogger(__name__)

SCHEMA = "digitreader.template/v1"

#: A found field is taken for a template field only when its width and height are the template's (at
#: the page's scale) within this fraction, plus `SIZE_SLACK_MM` (box lines, blur).
SIZE_TOL = 0.2
SIZE_SLACK_MM = 1.5
#: Of the template's form, at most this fraction of its width (of its height) may lie off the page.
OFF_PAGE = 0.15
#: Each side of the scanned page is at least the template's page size over this factor; a page larger
#: than the template's by more than it (a cheque on an A4 sheet) must show every template field.
PAGE_RATIO = 1.25
#: The narrowest cell a box field may have, in mm.
MIN_CELL_MM = 1.0


@dataclass(frozen=True)
class TemplateField:
    name: str
    kind: str  # boxes | string
    region: tuple[float, float, float, float]  # x, y, w, h in mm (outer box)
    cells: int | None = None  # boxes: number of cells
    length: int | None = None  # expected number of digits
    pattern: str | None = None  # regex the value must match


@dataclass(frozen=True)
class Template:
    name: str
    width_mm: float
    height_mm: float
    fields: tuple[TemplateField, ...]
    min_matched: float = 0.5  # fraction of fields that must be found on the page
    source: str = ""


def _bad(path: Path | str, msg: str) -> UsageError:
    return UsageError(f"template {path}: {msg}", hint="see docs/templates.md for the format")


def _number(v: Any) -> float | None:
    """`v` as a finite number, or None (a string, a list, a boolean, NaN or infinity is not one)."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def parse_template(data: Any, source: str = "<template>") -> Template:
    """Validate a template given as plain data (what YAML gives)."""
    if not isinstance(data, dict):
        raise _bad(source, "the top level must be a mapping")
    if data.get("schema", SCHEMA) != SCHEMA:
        raise _bad(source, f"schema must be {SCHEMA!r}, not {data.get('schema')!r}")
    page = data.get("page")
    if not isinstance(page, dict) or "width_mm" not in page or "height_mm" not in page:
        raise _bad(source, "page: needs width_mm and height_mm (the form's size in mm)")
    width, height = _number(page["width_mm"]), _number(page["height_mm"])
    if width is None or height is None or width <= 0 or height <= 0:
        raise _bad(
            source,
            f"page: width_mm and height_mm must be positive numbers (the form's size in mm), "
            f"not {page['width_mm']!r} and {page['height_mm']!r}",
        )
    raw_fields = data.get("fields")
    if not isinstance(raw_fields, list) or not raw_fields:
        raise _bad(source, "fields: needs a non-empty list")
    out: list[TemplateField] = []
    names: set[str] = set()
    for i, f in enumerate(raw_fields, start=1):
        where = f"field {i}"
        if not isinstance(f, dict):
            raise _bad(source, f"{where}: must be a mapping")
        name = str(f.get("name") or "")
        if not name or name in names:
            raise _bad(source, f"{where}: needs a unique name")
        names.add(name)
        kind = f.get("kind")
        if kind not in ("boxes", "string"):
            raise _bad(source, f"{name}: kind must be 'boxes' or 'string'")
        region = f.get("region")
        box = [_number(v) for v in region] if isinstance(region, list) else []
        if len(box) != 4 or any(v is None for v in box):
            raise _bad(source, f"{name}: region must be [x, y, w, h] in mm (numbers)")
        x, y, w, h = cast(list[float], box)
        if w <= 0 or h <= 0:
            raise _bad(source, f"{name}: region width and height must be positive")
        cells = f.get("cells")
        if kind == "boxes" and not (isinstance(cells, int) and not isinstance(cells, bool) and cells >= 1):
            raise _bad(source, f"{name}: a boxes field needs cells (a positive integer)")
        if kind == "boxes" and w / cast(int, cells) < MIN_CELL_MM:
            raise _bad(
                source, f"{name}: {cells} cells do not fit in {w:g} mm (a cell is at least {MIN_CELL_MM:g} mm wide)"
            )
        pattern = f.get("pattern")
        if pattern is not None:
            try:
                re.compile(str(pattern))
            except re.error as exc:
                raise _bad(source, f"{name}: pattern is not a valid regular expression ({exc})") from exc
        length = f.get("length")
        if length is not None and not (isinstance(length, int) and not isinstance(length, bool) and length >= 0):
            raise _bad(source, f"{name}: length must be a non-negative integer")
        out.append(
            TemplateField(
                name=name,
                kind=kind,
                region=(x, y, w, h),
                cells=int(cast(int, cells)) if kind == "boxes" else None,  # checked above for boxes
                length=length,
                pattern=str(pattern) if pattern is not None else None,
            )
        )
    raw_min = data.get("min_matched", 0.5)
    min_matched = _number(raw_min)
    if min_matched is None or not 0 < min_matched <= 1:
        raise _bad(
            source,
            f"min_matched must be the fraction of the fields that must be found, over 0 and at most 1 "
            f"(0.5: half of them), not {raw_min!r}",
        )
    return Template(str(data.get("name") or Path(source).stem), width, height, tuple(out), min_matched, source)


def load_template(path: str | Path) -> Template:
    """Read and validate a YAML template; `UsageError` (exit code 2) says what is wrong."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise _bad(p, "no such file") from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise _bad(p, f"cannot read it ({exc})") from exc
    return parse_template(data, str(p))


# ----------------------------------------------------------------------------------------------
# registration


@dataclass(frozen=True)
class PageFrame:
    """Where the scanned page lies on the prepared page: its centre and its sides (prepared px)."""

    cx: float
    cy: float
    width: float  # the side that lies along x (the page's height when it was turned a quarter)
    height: float


def page_frame(prepared: PreparedPage) -> PageFrame:
    """The page as submitted, seen on the prepared page (after the turn, reduction and deskew)."""
    lin, off = prepared.to_original[:, :2], prepared.to_original[:, 2]
    inv = np.linalg.inv(lin)
    cx, cy = inv @ (np.array([prepared.width / 2, prepared.height / 2]) - off)
    a, b = inv @ np.array([prepared.width, 0.0]), inv @ np.array([0.0, prepared.height])
    if abs(a[0]) < abs(a[1]):  # turned a quarter: the page's width lies along y
        a, b = b, a
    return PageFrame(float(cx), float(cy), float(np.hypot(*a)), float(np.hypot(*b)))


def _centre(b: BBox | tuple[float, float, float, float]) -> tuple[float, float]:
    return b[0] + b[2] / 2, b[1] + b[3] / 2


def _inside(pt: tuple[float, float], b: BBox) -> bool:
    return b[0] <= pt[0] <= b[0] + b[2] and b[1] <= pt[1] <= b[1] + b[3]


def _near(found: float, want: float, s: float) -> bool:
    """A found length (px) is the template's `want` (mm) at scale `s` (px per mm)."""
    return abs(found - s * want) <= SIZE_TOL * s * want + SIZE_SLACK_MM * s


def _compatible(tf: TemplateField, r: FieldRegion, s: float) -> bool:
    """Whether found field `r` can be template field `tf` at scale `s`: the same kind, the same size,
    and for a box field about as many cells."""
    if tf.kind != r.kind or not (_near(r.bbox[2], tf.region[2], s) and _near(r.bbox[3], tf.region[3], s)):
        return False
    return tf.cells is None or abs(len(r.cells) - tf.cells) <= tf.cells // 8


def _on_page(template: Template, page: PageFrame | None, s: float, tx: float, ty: float) -> bool:
    """Whether the template's form, laid on the page by (s, tx, ty), lies on it: no more than
    `OFF_PAGE` of its width or height off the page's edges (a scan cut short, shifted on the glass)."""
    if page is None:
        return True
    w, h = s * template.width_mm, s * template.height_mm
    off_x = abs(tx + w / 2 - page.cx) + w / 2 - page.width / 2
    off_y = abs(ty + h / 2 - page.cy) + h / 2 - page.height / 2
    return off_x <= OFF_PAGE * w and off_y <= OFF_PAGE * h


def _match(template: Template, found: list[FieldRegion], s: float, tx: float, ty: float) -> dict[int, int]:
    """Template field index -> found field index, for fields whose registered centre lies in a found
    field of their kind, size and cell count."""
    out: dict[int, int] = {}
    taken: set[int] = set()
    for i, tf in enumerate(template.fields):
        cx, cy = _centre(tf.region)
        pt = (s * cx + tx, s * cy + ty)
        for j, r in enumerate(found):
            if j not in taken and _compatible(tf, r, s) and _inside(pt, r.bbox):
                out[i] = j
                taken.add(j)
                break
    return out


def register(
    template: Template, found: list[FieldRegion], ppm: float, page: PageFrame | None = None
) -> tuple[float, float, float, dict[int, int]]:
    """Scale and shift (mm -> prepared px) that best lay the template on the found fields.

    Each pairing of a template field with a found field like it proposes a shift at the nominal scale
    `ppm`; one that puts the form off the `page` is not considered. The proposal that matches most
    fields wins, and a least-squares fit on its pairs refines scale and shift."""
    best: tuple[int, float, float, float, dict[int, int]] = (0, ppm, 0.0, 0.0, {})
    for tf in template.fields:
        cx, cy = _centre(tf.region)
        for r in found:
            if not _compatible(tf, r, ppm):
                continue
            fx, fy = _centre(r.bbox)
            tx, ty = fx - ppm * cx, fy - ppm * cy
            if not _on_page(template, page, ppm, tx, ty):
                continue
            m = _match(template, found, ppm, tx, ty)
            if len(m) > best[0]:
                best = (len(m), ppm, tx, ty, m)
    _, s, tx, ty, m = best
    if len(m) >= 2:
        # Least squares on the matched centres: x' = s x + tx, y' = s y + ty.
        src = np.array([_centre(template.fields[i].region) for i in m])
        dst = np.array([_centre(found[j].bbox) for j in m.values()])
        a = np.zeros((2 * len(m), 3))
        a[0::2, 0], a[0::2, 1] = src[:, 0], 1.0
        a[1::2, 0], a[1::2, 2] = src[:, 1], 1.0
        b = dst.reshape(-1)
        (s2, tx2, ty2), *_ = np.linalg.lstsq(a, b, rcond=None)
        s2, tx2, ty2 = float(s2), float(tx2), float(ty2)
        if 0.8 * ppm <= s2 <= 1.2 * ppm and _on_page(template, page, s2, tx2, ty2):
            m2 = _match(template, found, s2, tx2, ty2)
            if len(m2) >= len(m):
                s, tx, ty, m = s2, tx2, ty2, m2
    return s, tx, ty, m


def _even_cells(box: BBox, n: int, line: int) -> tuple[BBox, ...]:
    x, y, w, h = box
    out = []
    for i in range(n):
        a = x + int(round(i * w / n)) + line
        b = x + int(round((i + 1) * w / n)) - line
        out.append((a, y + line, max(1, b - a), max(1, h - 2 * line)))
    return tuple(out)


def _mismatch(template: Template, why: str) -> InputError:
    return InputError(
        f"the page does not match template {template.name!r}: {why}",
        code="template_mismatch",
        hint="check that this is the right form type, or submit without a template",
    )


def apply_template(prepared: PreparedPage, template: Template) -> list[FieldRegion]:
    """The template's fields on this page (prepared coordinates), named; raises template_mismatch."""
    ppm = (prepared.dpi or 150.0) / 25.4
    found = find_fields(prepared)
    page = page_frame(prepared)
    s, tx, ty, m = register(template, found, ppm, page)
    pw, ph = page.width / s, page.height / s
    smaller = pw / template.width_mm < 1 / PAGE_RATIO or ph / template.height_mm < 1 / PAGE_RATIO
    larger = pw / template.width_mm > PAGE_RATIO or ph / template.height_mm > PAGE_RATIO
    # A larger sheet holding the form (a cheque laid on an A4 flatbed) is the form only where every
    # field of the template is found, in place and at its size: a page of another, larger form matches
    # some fields of a small template by chance, all of them hardly ever.
    if smaller or (larger and len(m) < len(template.fields)):
        raise _mismatch(
            template,
            f"the page is {pw:.0f} x {ph:.0f} mm, the template's form "
            f"{template.width_mm:g} x {template.height_mm:g} mm"
            + (f", and only {len(m)} of its {len(template.fields)} fields were found on it" if larger else ""),
        )
    need = max(1, int(np.ceil(template.min_matched * len(template.fields))))
    if len(m) < need:
        raise _mismatch(
            template,
            f"{len(m)} of {len(template.fields)} fields found where the template puts them, at their size "
            f"(need {need})",
        )
    line = max(1, int(round(0.3 * s)))
    out: list[FieldRegion] = []
    for i, tf in enumerate(template.fields):
        x, y, w, h = tf.region
        pred = (int(round(s * x + tx)), int(round(s * y + ty)), int(round(s * w)), int(round(s * h)))
        if i in m:
            r = found[m[i]]
            cells = r.cells
            if tf.kind == "boxes" and tf.cells and len(cells) != tf.cells:
                cells = _even_cells(r.bbox, tf.cells, line)
            out.append(FieldRegion(tf.kind, r.bbox, cells, tf.name, tf.length, tf.pattern))  # type: ignore[arg-type]
        else:
            log.info("template field %s not found on the page: cut where the template puts it", tf.name)
            cells = _even_cells(pred, tf.cells or 1, line)
            out.append(FieldRegion(tf.kind, pred, cells, tf.name, tf.length, tf.pattern))  # type: ignore[arg-type]
    return out
