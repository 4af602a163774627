"""Sheets stage: a scan holding several sheets, each turned its own way, read sheet by sheet.

Clerks lay two or three cheques on a flatbed's glass and scan them as one page; each lies at its own
angle. The prepare stage deskews a page by one angle (its ink's sharpest profile: mostly the sheet
with the most ink), and a sheet left a few degrees turned loses its fields: a row of boxes 4 degrees
off climbs a cell's height along a date field.

Here the prepared page's ink is looked at in 1-mm blocks, joined across gaps narrower than
`SHEET_GAP_MM`; a piece at least `SHEET_MIN_MM` on both sides is a sheet. Where there are two or more,
each sheet's own skew is measured on its ink alone (`prepare.estimate_skew`); a sheet still turned by
`SHEET_TURN` degrees or more is cut out of the prepared page (the other sheets' ink whitened), turned
straight and binarized as a page of its own (`sheet_page`), and the fields stage looks for its fields
there. Its fields then replace the ones found on it on the whole page, unless it finds fewer.

One sheet (nearly every page: a form, a cheque scanned alone) costs a block reduction and a
labelling, about a millisecond; two sheets at the same angle, a skew measure each as well. Sheets
closer than `SHEET_GAP_MM` are one piece, read at the page's angle as before.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np

from digitreader.pipeline.prepare import (
    MAX_SKEW,
    binarize,
    estimate_skew,
    ink_levels,
    profile_scores,
    straightening,
)
from digitreader.types import PreparedPage

#: Ink closer than this (mm) is one sheet's: a cheque's text blocks and fields are nearer each other.
SHEET_GAP_MM = 12.0
#: A sheet spans at least this much (mm) each way: a cheque is 175 x 80, a business form larger.
SHEET_MIN_MM = (60.0, 30.0)
#: A sheet's edge: this far (mm) beyond its blocks of strong ink.
SHEET_EDGE_MM = 3
#: A sheet is looked at alone in a box this much (mm) wider each way than its edge.
SHEET_MARGIN_MM = 10
#: A sheet turned this much (degrees) from the page's deskew is straightened on its own.
SHEET_TURN = 1.0
#: The quick look at whether a sheet is turned (`_looks_turned`) takes this many of its ink points.
SHEET_LOOK_POINTS = 2000


@dataclass(frozen=True)
class Sheet:
    """One sheet found on a prepared page: its box (prepared-page pixels), its blocks (`block` pixels
    each way; true where the sheet's ink, joined, lies) and its skew left after the page's deskew
    (degrees, counter-clockwise as seen on screen, as `estimate_skew`; 0.0 where it looks straight)."""

    box: tuple[int, int, int, int]  # x, y, w, h: whole blocks, clipped to the page
    blocks: np.ndarray  # bool
    block: int
    turn: float

    def holds(self, x: float, y: float) -> bool:
        """Whether the prepared-page point (x, y) lies on this sheet."""
        bx, by, bw, bh = self.box
        if not (bx <= x < bx + bw and by <= y < by + bh):
            return False
        return bool(self.blocks[int(y - by) // self.block, int(x - bx) // self.block])

    def mask(self) -> np.ndarray:
        """The sheet's blocks as a mask of its box's pixels (bool)."""
        full = np.repeat(np.repeat(self.blocks, self.block, axis=0), self.block, axis=1)
        return full[: self.box[3], : self.box[2]]


def find_sheets(prepared: PreparedPage) -> list[Sheet]:
    """The sheets of a prepared page with their own skew, when there are two or more; [] otherwise."""
    ppm = (prepared.dpi or 150.0) / 25.4
    k = max(1, int(round(ppm / 2)))
    f = 2 * k  # 1-mm blocks, of every k-th pixel each way: a thin line missed only narrows a sheet
    h, w = prepared.ink.shape
    hb, wb = h // f, w // f
    if hb < 2 or wb < 2:
        return []
    # Halving is OpenCV's fast area reduction (0.2 ms a page; 1.8 for all the pixels by another factor).
    sample = np.ascontiguousarray(prepared.ink[: hb * f : k, : wb * f : k])
    small = cv2.resize(sample, (wb, hb), interpolation=cv2.INTER_AREA)
    _, blocks = cv2.threshold(small, 0, 1, cv2.THRESH_BINARY)
    gap = max(1, int(round(SHEET_GAP_MM * ppm / f)))
    joined = cv2.morphologyEx(blocks, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (gap, gap)))
    # Outlines, not labelled pieces: OpenCV's labelling with statistics costs 0.4 ms here.
    outlines, _ = cv2.findContours(joined, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    min_w, min_h = (int(v * ppm / f) for v in SHEET_MIN_MM)
    big = []
    for c in outlines:
        _, _, cw, ch = cv2.boundingRect(c)
        if max(cw, ch) >= min_w and min(cw, ch) >= min_h:
            big.append(c)
    if len(big) < 2:
        return []
    # A sheet is its outline filled, and a little beyond: a faint box wall at its edge.
    edge = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * SHEET_EDGE_MM + 1, 2 * SHEET_EDGE_MM + 1))
    sheets = []
    for c in big:
        part = np.zeros_like(joined)
        cv2.drawContours(part, [c], 0, 1, thickness=cv2.FILLED)
        part = cv2.dilate(part, edge)
        # Its box, wider still: the sheet is looked at alone in it (a faint last cell of a date field
        # and the thin 1 in it were cut off by a box 3 mm beyond its strong ink).
        sx, sy, sw, sh = cv2.boundingRect(part)
        sx, sy = max(0, sx - SHEET_MARGIN_MM), max(0, sy - SHEET_MARGIN_MM)
        sw, sh = min(wb, sx + sw + 2 * SHEET_MARGIN_MM) - sx, min(hb, sy + sh + 2 * SHEET_MARGIN_MM) - sy
        x0, y0 = sx * f, sy * f
        box = (x0, y0, min(w, (sx + sw) * f) - x0, min(h, (sy + sh) * f) - y0)
        sheets.append(Sheet(box, part[sy : sy + sh, sx : sx + sw].view(bool), f, 0.0))
    for i, sheet in enumerate(sheets):
        if _looks_turned(sample, k, sheet):
            sheets[i] = dataclasses.replace(sheet, turn=estimate_skew(_alone(prepared, sheet, sheets), ppm))
    sheets.sort(key=lambda s: (s.box[1], s.box[0]))
    return sheets


def _looks_turned(sample: np.ndarray, k: int, sheet: Sheet) -> bool:
    """A quick look before the skew is measured: whether `SHEET_LOOK_POINTS` of the sheet's ink points
    (in `sample`, every `k`-th pixel of the page's ink) project sharpest `SHEET_TURN` degrees or more
    from straight (every degree within `MAX_SKEW`: a sheet 0.5 degrees off may look turned, and is
    then measured). Most pages' blocks of ink (a form's header,
    its rows of fields) are straight and stop here."""
    x0, y0, w, h = (v // k for v in sheet.box)
    pts = cv2.findNonZero(sample[y0 : y0 + h, x0 : x0 + w])
    if pts is None:
        return False
    # Every n-th point (they come row by row): a random draw costs more than the look.
    pts = pts.reshape(-1, 2)[:: max(1, len(pts) // SHEET_LOOK_POINTS)]
    per_block = sheet.block // k
    pts = pts[sheet.blocks[pts[:, 1] // per_block, pts[:, 0] // per_block]]
    if len(pts) < 50:
        return False
    xc = pts[:, 0].astype(np.float32) - w / 2
    yc = pts[:, 1].astype(np.float32) - h / 2
    angles = np.arange(-MAX_SKEW, MAX_SKEW + 1e-9, 1.0)
    scores = profile_scores(xc, yc, angles, int(math.hypot(h, w)) + 4)
    return abs(float(angles[int(np.argmax(scores))])) >= SHEET_TURN


def _others(sheet: Sheet, sheets: list[Sheet]) -> np.ndarray:
    """Where the other sheets reach into the sheet's box and it does not (bool, the box's size): what is
    whitened when the sheet is looked at alone (its own faint edges are kept)."""
    x0, y0, w, h = sheet.box
    own = sheet.mask()
    out = np.zeros((h, w), bool)
    for other in sheets:
        if other is sheet:
            continue
        ox, oy, ow, oh = other.box
        ax, ay = max(x0, ox), max(y0, oy)
        bx, by = min(x0 + w, ox + ow), min(y0 + h, oy + oh)
        if ax < bx and ay < by:
            theirs = other.mask()[ay - oy : by - oy, ax - ox : bx - ox]
            out[ay - y0 : by - y0, ax - x0 : bx - x0] |= theirs & ~own[ay - y0 : by - y0, ax - x0 : bx - x0]
    return out


def _alone(prepared: PreparedPage, sheet: Sheet, sheets: list[Sheet]) -> np.ndarray:
    """The prepared page's grey levels in the sheet's box, the other sheets whitened (`_others`)."""
    x0, y0, w, h = sheet.box
    gray = prepared.gray[y0 : y0 + h, x0 : x0 + w].copy()
    gray[_others(sheet, sheets)] = 255
    return gray


def sheet_page(prepared: PreparedPage, sheet: Sheet, sheets: list[Sheet]) -> PreparedPage:
    """The sheet alone (the other sheets whitened where they reach into its box), turned straight by
    its own skew and binarized with the page's ink levels: a prepared page whose `to_original` maps back
    to the page as submitted. It is turned from the page before its deskew where the prepared page
    keeps it (`PreparedPage.unskewed`): one interpolation, as the page's own (turning the deskewed page
    again blurred a cheque's thin strokes: a 1 read as 0)."""
    x0, y0, w, h = sheet.box
    m, (nw, nh) = straightening(w, h, sheet.turn)
    turn = np.vstack([m, [0.0, 0.0, 1.0]])  # the sheet's box -> its own straightened page
    shift = np.array([[1.0, 0.0, float(x0)], [0.0, 1.0, float(y0)], [0.0, 0.0, 1.0]])  # box -> prepared page
    if prepared.unskewed is not None and prepared.deskew is not None:
        deskew = np.vstack([prepared.deskew, [0.0, 0.0, 1.0]])
        src, warp = prepared.unskewed, turn @ np.linalg.inv(shift) @ deskew
    else:
        src, warp = prepared.gray[y0 : y0 + h, x0 : x0 + w], turn
    flat = cv2.warpAffine(
        src, warp[:2], (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=255
    )
    others = _others(sheet, sheets)
    if others.any():
        gone = cv2.warpAffine(others.view(np.uint8), m, (nw, nh), flags=cv2.INTER_NEAREST)
        flat[gone > 0] = 255
    to_original = np.vstack([prepared.to_original, [0.0, 0.0, 1.0]]) @ shift @ np.linalg.inv(turn)
    levels = ink_levels(flat)
    return PreparedPage(
        number=prepared.number,
        gray=flat,
        ink=binarize(flat, levels),
        to_original=to_original[:2],
        width=prepared.width,
        height=prepared.height,
        skew_degrees=prepared.skew_degrees + sheet.turn,
        dpi=prepared.dpi,
        levels=levels,
    )
