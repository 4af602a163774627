"""Form templates: a YAML description of a known form type, and registration of a page to it.

A template names the fields of a form and says where they are (millimetres from the top-left
corner of the form), their kind, number of cells, and the expected length or pattern of their
value. `apply_template` finds the page's box structure (`fields.find_fields`), registers the
template to it (scale and shift, after deskew) from the fields that agree, and returns the
template's fields, named, in page coordinates: a field the page shows is cut on its detected
cells; one it does not show clearly (a faint box) is cut where the registered template puts it.
A page where too few template fields are found raises `InputError(code="template_mismatch")`.

See docs/templates.md for the format and examples/templates/ for examples.
"""

from __future__ import annotations

import logging
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


def parse_template(data: Any, source: str = "<template>") -> Template:
    """Validate a template given as plain data (what YAML gives)."""
    if not isinstance(data, dict):
        raise _bad(source, "the top level must be a mapping")
    if data.get("schema", SCHEMA) != SCHEMA:
        raise _bad(source, f"schema must be {SCHEMA!r}, not {data.get('schema')!r}")
    page = data.get("page") or {}
    try:
        width, height = float(page["width_mm"]), float(page["height_mm"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(source, "page: needs width_mm and height_mm (numbers)") from exc
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
        if not (isinstance(region, list) and len(region) == 4 and all(isinstance(v, int | float) for v in region)):
            raise _bad(source, f"{name}: region must be [x, y, w, h] in mm")
        if region[2] <= 0 or region[3] <= 0:
            raise _bad(source, f"{name}: region width and height must be positive")
        cells = f.get("cells")
        if kind == "boxes" and not (isinstance(cells, int) and cells >= 1):
            raise _bad(source, f"{name}: a boxes field needs cells (a positive integer)")
        pattern = f.get("pattern")
        if pattern is not None:
            try:
                re.compile(str(pattern))
            except re.error as exc:
                raise _bad(source, f"{name}: pattern is not a valid regular expression ({exc})") from exc
        length = f.get("length")
        if length is not None and not (isinstance(length, int) and length >= 0):
            raise _bad(source, f"{name}: length must be a non-negative integer")
        out.append(
            TemplateField(
                name=name,
                kind=kind,
                region=(float(region[0]), float(region[1]), float(region[2]), float(region[3])),
                cells=int(cast(int, cells)) if kind == "boxes" else None,  # checked above for boxes
                length=length,
                pattern=str(pattern) if pattern is not None else None,
            )
        )
    min_matched = float(data.get("min_matched", 0.5))
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


def _centre(b: BBox | tuple[float, float, float, float]) -> tuple[float, float]:
    return b[0] + b[2] / 2, b[1] + b[3] / 2


def _inside(pt: tuple[float, float], b: BBox) -> bool:
    return b[0] <= pt[0] <= b[0] + b[2] and b[1] <= pt[1] <= b[1] + b[3]


def _compatible(tf: TemplateField, r: FieldRegion) -> bool:
    return tf.kind == r.kind


def _match(template: Template, found: list[FieldRegion], s: float, tx: float, ty: float) -> dict[int, int]:
    """Template field index -> found field index, for fields whose registered centre lies in a found one."""
    out: dict[int, int] = {}
    taken: set[int] = set()
    for i, tf in enumerate(template.fields):
        cx, cy = _centre(tf.region)
        pt = (s * cx + tx, s * cy + ty)
        for j, r in enumerate(found):
            if j not in taken and _compatible(tf, r) and _inside(pt, r.bbox):
                out[i] = j
                taken.add(j)
                break
    return out


def register(template: Template, found: list[FieldRegion], ppm: float) -> tuple[float, float, float, dict[int, int]]:
    """Scale and shift (mm -> prepared px) that best lay the template on the found fields."""
    best: tuple[int, float, float, float, dict[int, int]] = (0, ppm, 0.0, 0.0, {})
    for tf in template.fields:
        cx, cy = _centre(tf.region)
        for r in found:
            if not _compatible(tf, r):
                continue
            fx, fy = _centre(r.bbox)
            tx, ty = fx - ppm * cx, fy - ppm * cy
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
        if 0.8 * ppm <= s2 <= 1.2 * ppm:
            m2 = _match(template, found, float(s2), float(tx2), float(ty2))
            if len(m2) >= len(m):
                s, tx, ty, m = float(s2), float(tx2), float(ty2), m2
    return s, tx, ty, m


def _even_cells(box: BBox, n: int, line: int) -> tuple[BBox, ...]:
    x, y, w, h = box
    out = []
    for i in range(n):
        a = x + int(round(i * w / n)) + line
        b = x + int(round((i + 1) * w / n)) - line
        out.append((a, y + line, max(1, b - a), max(1, h - 2 * line)))
    return tuple(out)


def apply_template(prepared: PreparedPage, template: Template) -> list[FieldRegion]:
    """The template's fields on this page (prepared coordinates), named; raises template_mismatch."""
    ppm = (prepared.dpi or 150.0) / 25.4
    found = find_fields(prepared)
    s, tx, ty, m = register(template, found, ppm)
    need = max(1, int(np.ceil(template.min_matched * len(template.fields))))
    if len(m) < need:
        raise InputError(
            f"the page does not match template {template.name!r}: {len(m)} of {len(template.fields)} fields "
            f"found where the template puts them (need {need})",
            code="template_mismatch",
            hint="check that this is the right form type, or submit without a template",
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
