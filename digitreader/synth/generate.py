"""Render realistic scanned pages from MNIST test digits, with ground truth ("digitreader.truth/v1").

`generate(out_dir, pages=..., seed=...)` is the library entry point; `render_page` renders one page.
Everything is drawn at the target dpi in millimetre layouts (`layouts.py`), then put through a
simulated scanner: skew, slight scale change and shift, uneven light, blur, noise, dust, and the
file format's own artifacts (JPEG quality, 1-bit TIFF).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from digitreader.synth.layouts import A4, CHEQUE, FORM_LAYOUTS, Item, cheque
from digitreader.synth.mnist import DigitSource, MnistTestDigits

log = logging.getLogger(__name__)

KINDS = ("form", "cheque", "mixed")
FORMATS = ("png", "jpeg", "tiff", "pdf", "bmp", "mixed")
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "pdf": ".pdf", "bmp": ".bmp"}
SEPARATORS = "/-.,= "


@dataclass(frozen=True)
class Style:
    """How hard the simulated scan is. Ranges are sampled per page."""

    skew: float = 5.0  # max |degrees|
    scale: float = 0.02  # max relative scale change
    shift_mm: float = 3.0
    blur: tuple[float, float] = (0.0, 0.9)  # Gaussian sigma range, in pixels at 300 dpi
    noise: tuple[float, float] = (1.0, 5.0)  # grey-level sigma
    light: tuple[float, float] = (0.0, 0.25)  # depth of uneven illumination
    dust: int = 40  # max specks per page
    jpeg_quality: tuple[int, int] = (70, 92)
    faint_ink: float = 0.1  # probability a digit is faint pencil
    faint_box: float = 0.2  # probability a field's box is faint
    touch_line: float = 0.1  # probability a digit touches/crosses its box lines
    touch_digit: float = 0.15  # probability two neighbouring digits of a string touch
    blank: float = 0.12  # probability a cell is left empty


STYLES: dict[str, Style] = {
    "clean": Style(
        skew=0.0,
        scale=0.0,
        shift_mm=0.0,
        blur=(0.0, 0.0),
        noise=(0.0, 0.0),
        light=(0.0, 0.0),
        dust=0,
        jpeg_quality=(95, 95),
        faint_ink=0.0,
        faint_box=0.0,
        touch_line=0.0,
        touch_digit=0.0,
    ),
    "scan": Style(),
    "rough": Style(
        skew=5.0,
        scale=0.04,
        shift_mm=5.0,
        blur=(0.4, 1.3),
        noise=(3.0, 9.0),
        light=(0.1, 0.4),
        dust=150,
        jpeg_quality=(50, 75),
        faint_ink=0.25,
        faint_box=0.4,
        touch_line=0.25,
        touch_digit=0.3,
    ),
}


@dataclass
class Canvas:
    img: np.ndarray  # uint8 grey, paper ~245
    dpi: float
    rng: np.random.Generator
    source: DigitSource
    style: Style
    fields: list[dict[str, Any]] = field(default_factory=list)

    def px(self, mm: float) -> int:
        return int(round(mm * self.dpi / 25.4))

    def darken(self, x: int, y: int, ink: np.ndarray, tone: float) -> None:
        """Lay ink (0..1 float, ink high) at (x, y) with the given darkness (0..1), clipped to the page."""
        h, w = ink.shape
        H, W = self.img.shape
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 <= x0 or y1 <= y0:
            return
        sub = ink[y0 - y : y1 - y, x0 - x : x1 - x]
        region = self.img[y0:y1, x0:x1]
        dark = region.astype(np.float32) * (1.0 - tone * sub)
        np.minimum(region, dark.astype(np.uint8), out=region)

    def hline(self, x0: int, x1: int, y: int, t: int, tone: float) -> None:
        y0 = y - t // 2
        region = self.img[max(y0, 0) : y0 + t, max(x0, 0) : x1]
        np.minimum(region, np.uint8(tone), out=region)

    def vline(self, x: int, y0: int, y1: int, t: int, tone: float) -> None:
        x0 = x - t // 2
        region = self.img[max(y0, 0) : y1, max(x0, 0) : x0 + t]
        np.minimum(region, np.uint8(tone), out=region)


# ----------------------------------------------------------------------------------------------
# content


def _content(kind: str, n: int, rng: np.random.Generator) -> str:
    """A string of digits and separators for a field. For box fields, ' ' = blank cell."""
    r = rng.integers
    if kind == "date":
        sep = "/-."[int(r(3))]
        year = f"{int(r(1950, 2030))}" if rng.random() < 0.6 else f"{int(r(0, 100)):02d}"
        return f"{int(r(1, 29)):02d}{sep}{int(r(1, 13)):02d}{sep}{year}"
    if kind == "amount":
        whole = int(r(1, 10 ** int(r(1, 6))))
        s = f"{whole:,}" if whole >= 1000 and rng.random() < 0.5 else str(whole)
        if rng.random() < 0.3:
            s = s.replace(",", ".")
            return s + ("," + f"{int(r(100)):02d}" if rng.random() < 0.7 else "")
        tail = "." + f"{int(r(100)):02d}" if rng.random() < 0.7 else ""
        trail = "=" if rng.random() < 0.15 else ""
        return s + tail + trail
    if kind == "phone":
        if rng.random() < 0.5:
            return " ".join(f"{int(r(100)):02d}" for _ in range(5))
        return f"{int(r(100, 1000))}-{int(r(1000, 10000))}"
    if kind == "qty":
        return str(int(r(1, 10 ** int(r(1, 4)))))
    if kind == "number":
        return str(int(r(0, 10 ** int(r(2, 6)))))
    digits = "".join(str(int(r(10))) for _ in range(n))
    if kind == "date8":
        digits = f"{int(r(1, 29)):02d}{int(r(1, 13)):02d}{int(r(1950, 2030))}"
    elif kind == "date6":
        digits = f"{int(r(1, 29)):02d}{int(r(1, 13)):02d}{int(r(100)):02d}"
    return digits


def _digit_ink(canvas: Canvas, label: int, height: int) -> np.ndarray:
    """A digit image scaled to `height` px, float 0..1 ink-high, tightly cropped to its ink."""
    img = canvas.source(label, canvas.rng)
    g = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    ys, xs = np.nonzero(g > 40)
    if ys.size == 0:
        g = np.zeros((28, 28), np.uint8)
        cv2.line(g, (14, 4), (14, 24), 255, 2)
        ys, xs = np.nonzero(g)
    crop = g[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    scale = height / crop.shape[0]
    w = max(2, int(round(crop.shape[1] * scale)))
    out = cv2.resize(crop, (w, max(2, height)), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    return out


def _ink_tone(canvas: Canvas) -> float:
    if canvas.rng.random() < canvas.style.faint_ink:
        return float(canvas.rng.uniform(0.3, 0.5))  # faint pencil
    return float(canvas.rng.uniform(0.7, 0.95))


def _ink_bbox(ink: np.ndarray, x: int, y: int) -> list[int]:
    ys, xs = np.nonzero(ink > 0.25)
    if ys.size == 0:
        return [x, y, ink.shape[1], ink.shape[0]]
    return [int(x + xs.min()), int(y + ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


# ----------------------------------------------------------------------------------------------
# fields


def _box_cells(canvas: Canvas, it: Item) -> tuple[list[tuple[int, int, int, int]], list[int]]:
    """Draw a box field; return each cell's inner box (x, y, w, h) and its outer bbox."""
    c, rng = canvas, canvas.rng
    faint = rng.random() < c.style.faint_box
    tone = float(rng.uniform(140, 185)) if faint else float(rng.uniform(10, 80))
    t = max(2, int(round(rng.uniform(0.2, 0.45) * c.dpi / 25.4)))
    x, y = c.px(it.x), c.px(it.y)
    cw, ch = it.cell_w * c.dpi / 25.4, c.px(it.cell_h)
    cells: list[tuple[int, int, int, int]] = []
    half = (t + 1) // 2
    if it.kind == "joined":
        x1 = int(round(x + it.cells * cw))
        c.hline(x, x1 + t // 2 + 1, y, t, tone)
        c.hline(x, x1 + t // 2 + 1, y + ch, t, tone)
        for i in range(it.cells + 1):
            c.vline(int(round(x + i * cw)), y - t // 2, y + ch + t // 2 + 1, t, tone)
        for i in range(it.cells):
            a, b = int(round(x + i * cw)), int(round(x + (i + 1) * cw))
            cells.append((a + half, y + half, b - a - 2 * half, ch - 2 * half))
        outer = [x - t // 2, y - t // 2, x1 - x + t, ch + t]
    elif it.kind == "squares":
        gap = int(round(cw * float(rng.uniform(0.15, 0.28))))
        side = int(round(cw)) - gap
        for i in range(it.cells):
            a = int(round(x + i * cw))
            c.hline(a, a + side + t // 2 + 1, y, t, tone)
            c.hline(a, a + side + t // 2 + 1, y + ch, t, tone)
            c.vline(a, y - t // 2, y + ch + t // 2 + 1, t, tone)
            c.vline(a + side, y - t // 2, y + ch + t // 2 + 1, t, tone)
            cells.append((a + half, y + half, side - 2 * half, ch - 2 * half))
        last = int(round(x + (it.cells - 1) * cw)) + side
        outer = [x - t // 2, y - t // 2, last - x + t, ch + t]
    else:  # ticks: a base line with short ticks; the cell is the space above the line
        x1 = int(round(x + it.cells * cw))
        base = y + ch
        tick = int(round(ch * rng.uniform(0.25, 0.4)))
        c.hline(x, x1 + t // 2 + 1, base, t, tone)
        for i in range(it.cells + 1):
            c.vline(int(round(x + i * cw)), base - tick, base + t // 2 + 1, t, tone)
        for i in range(it.cells):
            a, b = int(round(x + i * cw)), int(round(x + (i + 1) * cw))
            cells.append((a + half, y, b - a - 2 * half, ch - half))
        outer = [x - t // 2, y, x1 - x + t, ch + t]
    return cells, outer


def _fill_boxes(canvas: Canvas, it: Item) -> dict[str, Any]:
    c, rng = canvas, canvas.rng
    cells, outer = _box_cells(c, it)
    text = _content(it.content, it.cells, rng)
    if it.content == "digits" and rng.random() < 0.3:  # shorter value: trailing cells left empty
        keep = int(rng.integers(max(1, it.cells // 2), it.cells + 1))
        text = text[:keep] + " " * (it.cells - keep)
    digits: list[dict[str, Any]] = []
    ink_boxes: list[list[int]] = []
    for pos, (cx, cy, cw, ch) in enumerate(cells):
        ch_ = text[pos] if pos < len(text) else " "
        if ch_ == " " or rng.random() < c.style.blank:
            digits.append({"position": pos, "bbox": [cx, cy, cw, ch], "label": None})
            continue
        label = int(ch_)
        h = int(round(ch * rng.uniform(0.55, 0.8)))
        ink = _digit_ink(c, label, h)
        if ink.shape[1] > cw * 0.85:
            ink = cv2.resize(ink, (int(cw * 0.85), ink.shape[0]), interpolation=cv2.INTER_AREA)
        dx = (cw - ink.shape[1]) / 2 + rng.uniform(-0.12, 0.12) * cw
        dy = (ch - h) / 2 + rng.uniform(-0.1, 0.1) * ch
        if rng.random() < c.style.touch_line:
            side = int(rng.integers(3))
            if side == 0:  # through the bottom line
                dy = ch - h + rng.uniform(0.05, 0.18) * ch
            elif side == 1:  # through the top line
                dy = -rng.uniform(0.05, 0.15) * ch
            else:  # touching a wall
                dx = (
                    (cw - ink.shape[1]) + rng.uniform(0.0, 0.08) * cw
                    if rng.random() < 0.5
                    else -rng.uniform(0, 0.08) * cw
                )
        px0, py0 = int(round(cx + dx)), int(round(cy + dy))
        c.darken(px0, py0, ink, _ink_tone(c))
        ink_boxes.append(_ink_bbox(ink, px0, py0))
        digits.append({"position": pos, "bbox": [cx, cy, cw, ch], "label": label})
    value = "".join(str(d["label"]) for d in digits if d["label"] is not None)
    return {"name": it.name, "kind": "boxes", "style": it.kind, "bbox": outer, "value": value, "digits": digits}


def _separator(canvas: Canvas, ch: str, h: int, stroke: int) -> np.ndarray:
    """A handwritten-looking separator, float ink-high, height `h` (digit height)."""
    rng = canvas.rng
    w = max(3, int(h * (0.6 if ch == "/" else 0.45 if ch in "-=" else 0.2)))
    img = np.zeros((h, w), np.uint8)
    if ch == "/":
        cv2.line(img, (int(w * 0.95), int(h * 0.15)), (int(w * 0.05), int(h * 0.85)), 255, stroke, cv2.LINE_AA)
    elif ch == "-":
        y = int(h * rng.uniform(0.45, 0.6))
        cv2.line(img, (int(w * 0.1), y), (int(w * 0.9), y), 255, stroke, cv2.LINE_AA)
    elif ch == "=":
        for f in (0.42, 0.62):
            cv2.line(img, (int(w * 0.1), int(h * f)), (int(w * 0.9), int(h * f)), 255, stroke, cv2.LINE_AA)
    elif ch == ".":
        cv2.circle(img, (w // 2, int(h * 0.88)), max(1, stroke * 2 // 3), 255, -1, cv2.LINE_AA)
    elif ch == ",":
        cv2.line(img, (w // 2 + 1, int(h * 0.82)), (w // 2 - 2, int(h * 0.99)), 255, stroke, cv2.LINE_AA)
    return img.astype(np.float32) / 255.0


def _fill_string(canvas: Canvas, it: Item) -> dict[str, Any]:
    c, rng = canvas, canvas.rng
    faint = rng.random() < c.style.faint_box
    tone = float(rng.uniform(140, 185)) if faint else float(rng.uniform(10, 80))
    t = max(2, int(round(rng.uniform(0.2, 0.45) * c.dpi / 25.4)))
    x, y, w, h = c.px(it.x), c.px(it.y), c.px(it.w), c.px(it.h)
    c.hline(x, x + w + t // 2 + 1, y, t, tone)
    c.hline(x, x + w + t // 2 + 1, y + h, t, tone)
    c.vline(x, y - t // 2, y + h + t // 2 + 1, t, tone)
    c.vline(x + w, y - t // 2, y + h + t // 2 + 1, t, tone)
    text = _content(it.content, 0, rng)
    dh = int(round(h * rng.uniform(0.55, 0.72)))
    stroke = max(2, int(round(dh * 0.09)))
    glyphs: list[tuple[str, np.ndarray]] = []
    for ch in text:
        if ch == " ":
            glyphs.append((ch, np.zeros((dh, max(2, dh // 3)), np.float32)))
        elif ch.isdigit():
            glyphs.append((ch, _digit_ink(c, int(ch), int(round(dh * rng.uniform(0.9, 1.05))))))
        else:
            glyphs.append((ch, _separator(c, ch, dh, stroke)))
    gaps = [int(round(dh * rng.uniform(0.08, 0.25))) for _ in glyphs]
    for i in range(len(glyphs) - 1):
        if glyphs[i][0].isdigit() and glyphs[i + 1][0].isdigit() and rng.random() < c.style.touch_digit:
            gaps[i] = -int(round(dh * rng.uniform(0.0, 0.04)))
    total = sum(g.shape[1] for _, g in glyphs) + sum(gaps[:-1])
    room = w - 2 * t - int(0.1 * h)
    if total > room:  # too long for the box: squeeze
        f = room / total
        glyphs = [(ch, cv2.resize(g, (max(2, int(g.shape[1] * f)), g.shape[0]))) for ch, g in glyphs]
        gaps = [int(g * f) for g in gaps]
        total = room
    left = x + t + int(rng.uniform(0.05, 0.6) * max(0, room - total)) + int(0.05 * h)
    tone_ink = _ink_tone(c)
    digits: list[dict[str, Any]] = []
    cursor = left
    for (ch, g), gap in zip(glyphs, gaps, strict=True):
        top = y + (h - dh) // 2 + int(rng.uniform(-0.06, 0.06) * h) + (dh - g.shape[0]) // 2
        if ch.isdigit():
            c.darken(cursor, top, g, tone_ink)
            ys, xs = np.nonzero(g > 0.25)
            pts = np.stack([xs + cursor, ys + top], 1)[:: max(1, len(xs) // 400)]
            digits.append({"position": len(digits), "bbox": _ink_bbox(g, cursor, top), "label": int(ch), "_ink": pts})
        elif ch != " ":
            c.darken(cursor, top, g, tone_ink)
        cursor += g.shape[1] + gap
    value = "".join(str(d["label"]) for d in digits)
    outer = [x - t // 2, y - t // 2, w + t, h + t]
    return {
        "name": it.name,
        "kind": "string",
        "style": "string",
        "bbox": outer,
        "value": value,
        "text": text,
        "digits": digits,
    }


# ----------------------------------------------------------------------------------------------
# decorations


def _put_text(
    canvas: Canvas, text: str, x_mm: float, y_mm: float, height_mm: float, width_mm: float = 0.0, tone: float = 30.0
) -> None:
    c = canvas
    font = cv2.FONT_HERSHEY_SIMPLEX
    px_h = height_mm * c.dpi / 25.4
    scale = px_h / 22.0
    thick = max(1, int(round(scale * 1.6)))
    lines = [text]
    if width_mm:
        lines, cur = [], ""
        for word in text.split():
            cand = (cur + " " + word).strip()
            (tw, _), _ = cv2.getTextSize(cand, font, scale, thick)
            if tw > c.px(width_mm) and cur:
                lines.append(cur)
                cur = word
            else:
                cur = cand
        lines.append(cur)
    for i, line in enumerate(lines):
        cv2.putText(c.img, line, (c.px(x_mm), c.px(y_mm) + int(i * px_h * 1.7)), font, scale, tone, thick, cv2.LINE_AA)


def _decorate(canvas: Canvas, it: Item) -> None:
    c, rng = canvas, canvas.rng
    if it.kind == "label":
        _put_text(c, it.text, it.x, it.y, 3.2)
    elif it.kind == "text":
        _put_text(c, it.text, it.x, it.y, it.h or 3.2, it.w)
    elif it.kind == "line":
        c.hline(c.px(it.x), c.px(it.x + it.w), c.px(it.y), max(1, c.px(0.25)), 40.0)
    elif it.kind == "logo":
        x, y, w, h = c.px(it.x), c.px(it.y), c.px(it.w), c.px(it.h)
        if it.text == "Q":
            cv2.circle(c.img, (x + w // 2, y + h // 2), w // 2, 40.0, max(2, c.px(1.5)), cv2.LINE_AA)
            _put_text(c, "Q", it.x + it.w * 0.3, it.y + it.h * 0.7, it.h * 0.5)
        else:
            cv2.rectangle(c.img, (x, y), (x + w, y + h), 35.0, -1)
            scale = h * 0.6 / 22.0
            cv2.putText(
                c.img,
                it.text,
                (x + w // 8, y + int(h * 0.78)),
                cv2.FONT_HERSHEY_DUPLEX,
                scale,
                240.0,
                max(1, int(scale * 2)),
                cv2.LINE_AA,
            )
    elif it.kind == "signature":
        x, y, w, h = c.px(it.x), c.px(it.y), c.px(it.w), c.px(it.h)
        n = 200
        tt = np.linspace(0, 1, n)
        f = rng.uniform(2, 5, 3)
        ph = rng.uniform(0, 2 * math.pi, 3)
        xs = x + tt * w + 0.08 * w * np.sin(2 * math.pi * f[0] * tt + ph[0])
        ys = y + h / 2 + 0.4 * h * np.sin(2 * math.pi * f[1] * tt + ph[1]) * np.cos(2 * math.pi * f[2] * tt + ph[2])
        pts = np.stack([xs, ys], 1).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(c.img, [pts], False, int(rng.uniform(30, 90)), max(2, c.px(0.35)), cv2.LINE_AA)
    elif it.kind == "pattern":
        H, W = c.img.shape
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        period = c.px(3.0)
        wave = np.sin((xx + 0.6 * period * np.sin(yy / (period * 1.3))) / period * 2 * math.pi)
        wave2 = np.sin((yy + 0.5 * period * np.sin(xx / (period * 2.1))) / (period * 1.7) * 2 * math.pi)
        pat = np.maximum(wave, wave2) > 0.9
        paper = float(np.median(c.img[::50, ::50]))
        c.img[pat] = np.minimum(c.img[pat], np.uint8(paper - rng.uniform(10, 22)))
        _put_text(c, "NORTHWIND", 40, 55, 14.0, tone=228.0)
    elif it.kind == "micr":
        _put_text(c, it.text, it.x, it.y, 3.5, tone=25.0)


# ----------------------------------------------------------------------------------------------
# page and scanner


def render_page(
    kind: str,
    dpi: float,
    rng: np.random.Generator,
    digit_source: DigitSource,
    style: Style,
    layout: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Render one page. Returns (grey uint8 page as scanned, truth dict for that page without 'number')."""
    if kind == "cheque":
        size_mm, items, layout_name = CHEQUE, cheque(), "cheque"
    else:
        layout_name = layout or list(FORM_LAYOUTS)[int(rng.integers(len(FORM_LAYOUTS)))]
        size_mm, items = A4, FORM_LAYOUTS[layout_name]()
    W, H = int(round(size_mm[0] * dpi / 25.4)), int(round(size_mm[1] * dpi / 25.4))
    paper = float(rng.uniform(236, 250))
    canvas = Canvas(np.full((H, W), int(paper), np.uint8), dpi, rng, digit_source, style)
    fields: list[dict[str, Any]] = []
    for it in items:
        if it.kind in ("joined", "squares", "ticks"):
            fields.append(_fill_boxes(canvas, it))
        elif it.kind == "string":
            fields.append(_fill_string(canvas, it))
        else:
            _decorate(canvas, it)
    img, skew, matrix = _scan(canvas, paper)
    for f in fields:
        f["bbox"] = _map_box(matrix, f["bbox"], W, H)
        for d in f["digits"]:
            pts = d.pop("_ink", None)
            # A written digit's box is the tight box of its ink as scanned; a cell's is its rotated box.
            d["bbox"] = (
                _map_points(matrix, pts, W, H) if pts is not None and len(pts) else _map_box(matrix, d["bbox"], W, H)
            )
    truth = {
        "width": W,
        "height": H,
        "dpi": dpi,
        "skew_degrees": round(skew, 3),
        "layout": layout_name,
        "fields": fields,
    }
    return img, truth


def _map_points(m: np.ndarray, pts: np.ndarray, W: int, H: int) -> list[int]:
    p = np.hstack([pts.astype(np.float64), np.ones((len(pts), 1))]) @ m.T
    x0, y0 = max(0, int(math.floor(p[:, 0].min()))), max(0, int(math.floor(p[:, 1].min())))
    x1, y1 = min(W, int(math.ceil(p[:, 0].max())) + 1), min(H, int(math.ceil(p[:, 1].max())) + 1)
    return [x0, y0, max(0, x1 - x0), max(0, y1 - y0)]


def _map_box(m: np.ndarray, box: list[int], W: int, H: int) -> list[int]:
    x, y, w, h = box
    pts = np.array([[x, y, 1], [x + w, y, 1], [x, y + h, 1], [x + w, y + h, 1]], np.float64) @ m.T
    x0, y0 = max(0, int(math.floor(pts[:, 0].min()))), max(0, int(math.floor(pts[:, 1].min())))
    x1, y1 = min(W, int(math.ceil(pts[:, 0].max()))), min(H, int(math.ceil(pts[:, 1].max())))
    return [x0, y0, max(0, x1 - x0), max(0, y1 - y0)]


def _scan(canvas: Canvas, paper: float) -> tuple[np.ndarray, float, np.ndarray]:
    """Simulated scanner: affine (skew, scale, shift), light, blur, noise, dust. Returns uint8 page."""
    s, rng, img = canvas.style, canvas.rng, canvas.img
    H, W = img.shape
    skew = float(rng.uniform(-s.skew, s.skew)) if s.skew else 0.0
    scale = 1.0 + float(rng.uniform(-s.scale, s.scale)) if s.scale else 1.0
    m: np.ndarray = cv2.getRotationMatrix2D((W / 2, H / 2), skew, scale)
    if s.shift_mm:
        m[:, 2] += rng.uniform(-1, 1, 2) * canvas.px(s.shift_mm)
    if skew or scale != 1.0 or s.shift_mm:
        img = cv2.warpAffine(
            img, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=int(paper)
        )
    depth = float(rng.uniform(*s.light))
    if depth > 0:
        small = rng.uniform(0, 1, (4, 3)).astype(np.float32)
        ramp = np.linspace(0, 1, 3, dtype=np.float32)[None, :] * float(rng.uniform(0, 1))
        shade = np.clip(small * 0.5 + ramp.repeat(4, 0) * 0.5, 0, 1)
        gain = cv2.resize((1.0 - depth * shade) * 255.0, (W, H), interpolation=cv2.INTER_CUBIC)
        img = cv2.multiply(img, np.clip(gain, 0, 255).astype(np.uint8), scale=1 / 255.0)
    sigma = float(rng.uniform(*s.blur)) * canvas.dpi / 300.0
    if sigma > 0.2:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img = np.ascontiguousarray(img)
    for _ in range(int(rng.integers(0, s.dust + 1)) if s.dust else 0):
        cv2.circle(
            img, (int(rng.integers(W)), int(rng.integers(H))), int(rng.integers(1, 3)), int(rng.uniform(60, 180)), -1
        )
    out = img
    ns = float(rng.uniform(*s.noise))
    if ns > 0:
        noise = np.empty((H, W), np.int16)
        cv2.setRNGSeed(int(rng.integers(2**31 - 1)))  # OpenCV's own generator: seed it from ours
        cv2.randn(noise, 0, ns)  # type: ignore[call-overload]  # stubs: mean/stddev as arrays only; scalars are valid
        out = np.clip(out.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return out, skew, m


# ----------------------------------------------------------------------------------------------
# files


def write_pages(
    path: Path,
    pages: list[np.ndarray],
    fmt: str,
    dpi: float,
    rng: np.random.Generator,
    style: Style,
    variant: str = "8bit",
) -> None:
    """Write pages in a format. TIFF variants: 8bit, 1bit, 16bit, alpha; several pages = multi-page."""
    dpi_t = (dpi, dpi)
    if fmt == "png":
        Image.fromarray(pages[0]).save(path, dpi=dpi_t, compress_level=1)
    elif fmt == "bmp":
        Image.fromarray(pages[0]).save(path, dpi=dpi_t)
    elif fmt == "jpeg":
        q = int(rng.integers(style.jpeg_quality[0], style.jpeg_quality[1] + 1))
        Image.fromarray(pages[0]).save(path, quality=q, dpi=dpi_t)
    elif fmt == "pdf":
        ims = [Image.fromarray(p) for p in pages]
        ims[0].save(path, save_all=True, append_images=ims[1:], resolution=dpi, quality=90)
    elif fmt == "tiff":
        ims = [_tiff_image(p, variant) for p in pages]
        comp = "group4" if variant == "1bit" else "tiff_deflate"
        ims[0].save(path, save_all=True, append_images=ims[1:], dpi=dpi_t, compression=comp)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def _tiff_image(page: np.ndarray, variant: str) -> Image.Image:
    if variant == "1bit":
        return Image.fromarray(page).point(lambda v: 255 if v > 160 else 0).convert("1")
    if variant == "16bit":
        return Image.fromarray(page.astype(np.uint16) * 257)
    if variant == "alpha":
        return Image.fromarray(np.dstack([page, page, page, np.full_like(page, 255)]), "RGBA")
    return Image.fromarray(page)


def generate(
    out_dir: Path | str,
    *,
    pages: int = 10,
    seed: int = 0,
    kind: str = "mixed",
    fmt: str = "png",
    dpi: float = 300,
    style: str | Style = "scan",
    per_file: int = 1,
    digit_source: DigitSource | None = None,
    data_dir: Path | str | None = None,
    layout: str | None = None,
    tiff_variant: str = "8bit",
    on_page: Callable[[int], None] | None = None,
    turned: float = 0.0,
) -> list[Path]:
    """Generate `pages` pages into `out_dir` (files + NAME.truth.json); returns the files written.

    `digit_source(label, rng)` supplies digit images (ink high); default: MNIST test digits from
    `data_dir`. `per_file` > 1 puts several pages in one file for TIFF and PDF; `tiff_variant` is
    8bit, 1bit (Group 4, like a fax), 16bit or alpha (with `fmt="mixed"` it is drawn at random).
    `turned`: the share of pages scanned upside down (half of them) or on a side (a quarter each way),
    their truth's boxes in the page as written and its "turned" the degrees clockwise the page was
    turned (0 elsewhere); 0 draws nothing more from the seed's random stream, so the same seed gives
    the same pages as before this option.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    st = STYLES[style] if isinstance(style, str) else style
    if digit_source is None:
        if data_dir is None:
            from digitreader.errors import DatasetError

            raise DatasetError("no MNIST data folder given", hint="set DIGITREADER_DATA_DIR or pass --data-dir")
        digit_source = MnistTestDigits(data_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written: list[Path] = []
    done = 0
    index = 0
    while done < pages:
        index += 1
        f = fmt if fmt != "mixed" else ("png", "jpeg", "tiff", "pdf", "bmp")[int(rng.integers(5))]
        n = min(per_file if f in ("tiff", "pdf") else 1, pages - done)
        variant = "8bit"
        if f == "tiff":
            variant = ("8bit", "1bit", "16bit", "alpha")[int(rng.integers(4))] if fmt == "mixed" else tiff_variant
        imgs, truths = [], []
        for p in range(n):
            k = kind if kind != "mixed" else ("form" if rng.random() < 0.7 else "cheque")
            img, truth = render_page(k, dpi, rng, digit_source, st, layout)
            if turned > 0:
                rotation = int(rng.choice((90, 180, 180, 270))) if rng.random() < turned else 0
                img, truth = turn_page(img, truth, rotation)
            truths.append({"number": p + 1, **truth})
            imgs.append(img)
        name = f"scan-{seed:04d}-{index:05d}"
        path = out / (name + EXTENSIONS[f])
        write_pages(path, imgs, f, dpi, rng, st, variant)
        doc = {"schema": "digitreader.truth/v1", "file": path.name, "format": f, "variant": variant, "pages": truths}
        (out / f"{name}.truth.json").write_text(json.dumps(doc, indent=1))
        written.append(path)
        done += n
        if on_page:
            for _ in range(n):
                on_page(1)
        log.debug("wrote %s (%d page(s))", path, n)
    return written


def turned_box(box: Sequence[int], rotation: int, width: int, height: int) -> list[int]:
    """A box (x, y, w, h) of a `width` x `height` image -> the same pixels' box once the image is turned
    `rotation` degrees clockwise (0, 90, 180 or 270)."""
    x, y, w, h = (int(v) for v in box)
    if rotation == 90:
        return [height - y - h, x, h, w]
    if rotation == 180:
        return [width - x - w, height - y - h, w, h]
    if rotation == 270:
        return [y, width - x - w, h, w]
    return [x, y, w, h]


def turn_page(img: np.ndarray, truth: dict[str, Any], rotation: int) -> tuple[np.ndarray, dict[str, Any]]:
    """A page and its truth as scanned turned `rotation` degrees clockwise: a page upside down (180) or
    on its side. The truth's boxes follow the pixels; its "turned" says how the page was turned."""
    out = {**truth, "turned": rotation}
    if rotation == 0:
        return img, out
    w, h = int(truth["width"]), int(truth["height"])
    if rotation in (90, 270):
        out["width"], out["height"] = h, w
    out["fields"] = [
        {
            **f,
            "bbox": turned_box(f["bbox"], rotation, w, h),
            "digits": [{**d, "bbox": turned_box(d["bbox"], rotation, w, h)} for d in f["digits"]],
        }
        for f in truth["fields"]
    ]
    return np.ascontiguousarray(np.rot90(img, k=-(rotation // 90))), out


def load_truth(path: Path | str) -> dict[str, Any]:
    """Read the truth JSON next to a generated file (or the JSON itself)."""
    p = Path(path)
    if not p.name.endswith(".truth.json"):
        p = p.with_name(p.name.rsplit(".", 1)[0] + ".truth.json")
    return json.loads(p.read_text())
