"""Page layouts for sample scans: fixed form types (so templates can describe them) and a cheque.

Positions and sizes are in millimetres from the page's top-left corner. Each layout is a list of
`Item`s; the renderer turns fields into boxes/strings filled with random content and labels.
"""

from __future__ import annotations

from dataclasses import dataclass

A4 = (210.0, 297.0)
CHEQUE = (175.0, 80.0)


@dataclass(frozen=True)
class Item:
    """One thing printed on the page. `kind` is a field style or a decoration."""

    kind: str  # joined | squares | ticks | string | label | line | text | logo | signature | pattern | micr
    x: float
    y: float
    w: float = 0.0  # string fields: width; decorations: width
    h: float = 0.0
    cells: int = 0  # box fields: number of cells
    cell_w: float = 0.0
    cell_h: float = 0.0
    name: str = ""  # field name (ground truth, templates)
    content: str = "digits"  # digits | date | amount | phone | number
    text: str = ""  # printed text for labels/text/logo


def _row(label: str, y: float, field: Item, x_label: float = 18.0) -> list[Item]:
    return [Item("label", x_label, y + field_height(field) * 0.7, text=label), field]


def field_height(it: Item) -> float:
    return it.cell_h if it.kind in ("joined", "squares", "ticks") else it.h


def account_form() -> list[Item]:
    items = [
        Item("text", 18, 22, text="NORTHWIND SAVINGS BANK - ACCOUNT OPENING", h=4.5),
        Item("logo", 165, 8, w=28, h=14, text="NSB"),
        Item("text", 18, 32, text="Please write one digit per box in black or blue ink.", h=3.2),
    ]
    rows = [
        ("Account number", Item("joined", 75, 0, cells=10, cell_w=7.5, cell_h=9.5, name="account", content="digits")),
        ("Sort code", Item("squares", 75, 0, cells=6, cell_w=7.5, cell_h=9.5, name="sort_code", content="digits")),
        ("Date of birth", Item("squares", 75, 0, cells=8, cell_w=7.0, cell_h=9.0, name="birth_date", content="date8")),
        ("Postcode", Item("ticks", 75, 0, cells=5, cell_w=8.0, cell_h=10.0, name="postcode", content="digits")),
        ("Amount", Item("string", 75, 0, w=70, h=13, name="amount", content="amount")),
        ("Phone", Item("string", 75, 0, w=95, h=13, name="phone", content="phone")),
        ("Customer number", Item("joined", 75, 0, cells=8, cell_w=8.0, cell_h=10.0, name="customer", content="digits")),
        ("Date", Item("string", 75, 0, w=62, h=13, name="date", content="date")),
    ]
    y = 45.0
    for label, f in rows:
        f = Item(**{**f.__dict__, "y": y})
        items += _row(label, y, f)
        y += 22.0
    items += [
        Item("label", 18, y + 8, text="Name"),
        Item("line", 75, y + 9, w=110),
        Item("label", 18, y + 24, text="Signature"),
        Item("line", 75, y + 26, w=80),
        Item("signature", 80, y + 14, w=60, h=12),
    ]
    y += 40
    para = (
        "I confirm that the information given on this form is correct and complete. "
        "The bank may contact me at the phone number above about this application."
    )
    items.append(Item("text", 18, y, w=175, text=para, h=3.0))
    return items


def survey_form() -> list[Item]:
    items = [
        Item("text", 18, 22, text="CUSTOMER SURVEY 2024", h=7.0),
        Item("logo", 165, 12, w=26, h=26, text="Q"),
        Item("text", 18, 32, text="Score each question from 00 to 99. Leave a box empty to skip it.", h=3.2),
    ]
    for i in range(12):
        col, row = divmod(i, 6)
        x = 18 + col * 95
        y = 48 + row * 22
        items.append(Item("label", x, y + 7, text=f"Q{i + 1}. Rating"))
        items.append(
            Item("joined", x + 45, y, cells=3, cell_w=8.5, cell_h=10.5, name=f"q{i + 1:02d}", content="digits")
        )
    y = 48 + 6 * 22 + 6
    items += [
        Item("label", 18, y + 7, text="Reference"),
        Item("ticks", 63, y, cells=8, cell_w=8.0, cell_h=10.0, name="reference", content="digits"),
        Item("label", 18, y + 29, text="Total"),
        Item("string", 63, y + 20, w=50, h=13, name="total", content="number"),
        Item("label", 120, y + 29, text="Date"),
        Item("squares", 140, y + 20, cells=6, cell_w=7.5, cell_h=9.5, name="date", content="date6"),
        Item(
            "text", 18, y + 50, w=175, text="Thank you for your time. Return this form in the envelope provided.", h=3.0
        ),
        Item("line", 18, y + 56, w=175),
    ]
    return items


def order_form() -> list[Item]:
    items = [
        Item("text", 18, 20, text="ORDER FORM", h=7.0),
        Item("logo", 150, 10, w=42, h=14, text="ACME"),
        Item("label", 18, 38, text="Item code"),
        Item("label", 80, 38, text="Quantity"),
        Item("label", 125, 38, text="Unit price"),
    ]
    for i in range(8):
        y = 45 + i * 21
        items += [
            Item("squares", 18, y, cells=5, cell_w=7.0, cell_h=9.0, name=f"item{i + 1}_code", content="digits"),
            Item("string", 80, y - 1, w=32, h=12, name=f"item{i + 1}_qty", content="qty"),
            Item("string", 125, y - 1, w=45, h=12, name=f"item{i + 1}_price", content="amount"),
            Item("line", 18, y + 16, w=160),
        ]
    y = 45 + 8 * 21 + 6
    items += [
        Item("label", 18, y + 8, text="Customer number"),
        Item("joined", 80, y, cells=9, cell_w=7.5, cell_h=9.5, name="customer", content="digits"),
        Item("label", 18, y + 30, text="Total"),
        Item("string", 80, y + 21, w=60, h=13, name="total", content="amount"),
        Item("label", 18, y + 52, text="Date"),
        Item("ticks", 80, y + 43, cells=6, cell_w=8.0, cell_h=10.0, name="date", content="date6"),
    ]
    return items


def cheque() -> list[Item]:
    return [
        Item("pattern", 0, 0, w=CHEQUE[0], h=CHEQUE[1]),
        Item("text", 8, 11, text="NORTHWIND SAVINGS BANK", h=4.5),
        Item("text", 8, 16, text="12 Harbour Street, Port Town", h=2.6),
        Item("label", 108, 18, text="Date"),
        Item("squares", 120, 12, cells=8, cell_w=6.2, cell_h=7.5, name="date", content="date8"),
        Item("label", 8, 30, text="Pay"),
        Item("line", 18, 31, w=100),
        Item("label", 8, 42, text="the sum of"),
        Item("line", 30, 43, w=88),
        Item("label", 124, 26, text="Amount"),
        Item("string", 124, 28, w=46, h=12, name="amount", content="amount"),
        Item("signature", 118, 48, w=45, h=11),
        Item("line", 115, 62, w=55),
        Item("label", 130, 66, text="Signature"),
        Item("micr", 10, 74, text="C004512C A0123456789A 0042"),
    ]


FORM_LAYOUTS = {"account": account_form, "survey": survey_form, "order": order_form}


def template_for(layout: str) -> dict[str, object]:
    """A digitreader template (plain data, see docs/templates.md) describing a form layout."""
    items = cheque() if layout == "cheque" else FORM_LAYOUTS[layout]()
    size = CHEQUE if layout == "cheque" else A4
    fields: list[dict[str, object]] = []
    for it in items:
        if it.kind in ("joined", "squares", "ticks"):
            f: dict[str, object] = {
                "name": it.name,
                "kind": "boxes",
                "region": [round(it.x, 2), round(it.y, 2), round(it.cells * it.cell_w, 2), round(it.cell_h, 2)],
                "cells": it.cells,
            }
            if it.content in ("date8", "date6"):
                f["pattern"] = "^\\d{" + ("8" if it.content == "date8" else "6") + "}$"
            fields.append(f)
        elif it.kind == "string":
            f = {"name": it.name, "kind": "string", "region": [it.x, it.y, it.w, it.h]}
            if it.content in ("amount", "qty", "number"):
                f["pattern"] = r"^\d+$"
            fields.append(f)
    return {
        "schema": "digitreader.template/v1",
        "name": layout,
        "page": {"width_mm": size[0], "height_mm": size[1]},
        "fields": fields,
    }
