"""Score segmentation against generated ground truth (used by tests and benchmarks/bench_segment.py).

A found box matches a true box when its centre lies inside the true box. Counts per page:

- fields: true fields, found (a found field's centre inside it), merged (one found field whose box
  holds the centres of two or more true fields), extra found fields matching no true field;
- positions: true digit positions (cells incl. blanks, and string digits), found = exactly one slot
  of the matched field has its centre inside, in order = found and after every earlier found one;
- blanks: true blank cells, called blank; digits wrongly called blank;
- extra_digits: non-blank slots of matched fields matching no true digit (separators, specks).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from digitreader.types import PageCut

Box = tuple[int, int, int, int] | list[int]


def centre_in(box: Box, outer: Box) -> bool:
    """Whether the centre of `box` lies inside `outer` (both x, y, w, h)."""
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    return outer[0] <= cx <= outer[0] + outer[2] and outer[1] <= cy <= outer[1] + outer[3]


def matches(a: Box, b: Box) -> bool:
    """The matching rule, both ways: the centre of one box lies inside the other. (A tick-mark comb
    field's true box is the line of ticks; the found field also holds the digits written above.)"""
    return centre_in(a, b) or centre_in(b, a)


def best_match(truth: Box, candidates: Sequence[Any], key: Callable[[Any], Box], used: set[int]) -> int | None:
    """Index of the unused candidate that `matches` the true box `truth`, the one whose centre is
    nearest the true box's centre among several; None when none matches. `key` gives a candidate's box."""
    tcx, tcy = truth[0] + truth[2] / 2, truth[1] + truth[3] / 2
    best, best_d = None, float("inf")
    for i, c in enumerate(candidates):
        if i in used:
            continue
        b = key(c)
        if not matches(b, truth):
            continue
        d = (b[0] + b[2] / 2 - tcx) ** 2 + (b[1] + b[3] / 2 - tcy) ** 2
        if d < best_d:
            best, best_d = i, d
    return best


def score_page(truth: dict[str, Any], cut: PageCut) -> Counter[str]:
    c: Counter[str] = Counter()
    tfields = truth["fields"]
    c["fields"] += len(tfields)
    c["found_fields"] += len(cut.fields)
    owner: dict[int, int] = {}
    for fi, f in enumerate(cut.fields):
        hits = [ti for ti, t in enumerate(tfields) if centre_in(t["bbox"], list(f.bbox))]
        inside = [ti for ti, t in enumerate(tfields) if centre_in(f.bbox, t["bbox"])]
        if len(hits) >= 2:
            c["merged_fields"] += 1
        if inside:
            owner.setdefault(inside[0], fi)
        elif not hits:
            c["extra_fields"] += 1
    for ti, t in enumerate(tfields):
        kind = t["kind"]
        digits = sorted(t["digits"], key=lambda d: d["position"])
        c["positions"] += len(digits)
        c[f"positions_{kind}"] += len(digits)
        blanks = [d for d in digits if d["label"] is None]
        c["blanks"] += len(blanks)
        if ti not in owner:
            c["missed_fields"] += 1
            continue
        c["matched_fields"] += 1
        slots = cut.fields[owner[ti]].slots
        matched: list[int | None] = []
        used: set[int] = set()
        for d in digits:
            m = [si for si, s in enumerate(slots) if centre_in(s.bbox, d["bbox"])]
            matched.append(m[0] if len(m) == 1 else None)
            used.update(m)
            if len(m) == 1:
                s = slots[m[0]]
                if d["label"] is None:
                    c["blank_called_blank"] += int(s.blank)
                elif s.blank:
                    c["digit_called_blank"] += 1
        best = -1
        for mi in matched:
            if mi is None:
                continue
            c["found"] += 1
            c[f"found_{kind}"] += 1
            if mi > best:
                c["in_order"] += 1
                c[f"in_order_{kind}"] += 1
                best = mi
        c["extra_digits"] += sum(1 for si, s in enumerate(slots) if si not in used and not s.blank)
    return c


def summary(c: Counter[str]) -> dict[str, float]:
    def pct(a: str, b: str) -> float:
        return round(100.0 * c[a] / c[b], 3) if c[b] else 100.0

    return {
        "fields_found_pct": pct("matched_fields", "fields"),
        "merged_fields": c["merged_fields"],
        "extra_fields": c["extra_fields"],
        "positions": c["positions"],
        "positions_found_pct": pct("found", "positions"),
        "positions_in_order_pct": pct("in_order", "positions"),
        "boxes_in_order_pct": pct("in_order_boxes", "positions_boxes"),
        "string_in_order_pct": pct("in_order_string", "positions_string"),
        "blanks": c["blanks"],
        "blanks_called_blank_pct": pct("blank_called_blank", "blanks"),
        "digits_called_blank": c["digit_called_blank"],
        "extra_digits": c["extra_digits"],
    }
