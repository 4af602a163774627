"""Every digit the embedded pipeline gets wrong on generated pages, listed and drawn; two lists compared.

    .venv/bin/python benchmarks/bench_errors.py list SCANS -o errors.jsonl --montage errors.png
    .venv/bin/python benchmarks/bench_errors.py compare before.jsonl after.jsonl

`list` runs `process_batch` on the pages in SCANS (files with their `NAME.truth.json`, as
`digitreader synth` or `bench_e2e.py` write them) into a fresh SQLite database and matches the
stored fields and digits to the truth by the same rule as `bench_e2e.py`. It writes one JSON line
per true digit not read right (`"digit"`: document, field kind, true and read value of the field,
position, true and read label, confidence, flag, the true digit's and field's boxes) and one per
field whose value is wrong (`"field"`). With `--montage`, each wrong digit's field is drawn from
the page with the digit framed in red and its number in the list, in one PNG: what to look at
first when choosing what to mend (a digit ambiguous as written, or cut wrongly).

`compare` prints what a change fixed and what it broke between two such lists (of the same pages):
the way each segmentation change in docs/benchmarks.md was checked on the validation pages.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import match_page, run_batch  # noqa: E402

MONTAGE_HEIGHT = 150  # pixels per field strip in the montage
MONTAGE_WIDTH = 1400


def errors(export: dict[str, Any], scans: Path) -> list[dict[str, Any]]:
    """The wrong digits and fields of an export (JSON shape) against the truth files in `scans`."""
    out: list[dict[str, Any]] = []
    for doc in export["documents"]:
        name = Path(doc["path"]).name
        truth = json.loads((scans / (name.rsplit(".", 1)[0] + ".truth.json")).read_text())
        pages = {p["number"]: p for p in doc["pages"]}
        for tp in truth["pages"]:
            matches, _ = match_page(tp, pages.get(tp["number"], {"fields": []})["fields"])
            for tf, f, pairs in matches:
                where = {"doc": name, "page": tp["number"], "field_bbox": tf["bbox"]}
                value = f["value"] if f else None
                if value != tf["value"]:
                    out.append({"kind": "field", **where, "truth_value": tf["value"], "value": value})
                for td, d in pairs:
                    if td["label"] is None or (d is not None and d["label"] == td["label"]):
                        continue
                    out.append({
                        "kind": "digit", **where, "field_kind": tf["kind"], "truth_value": tf["value"],
                        "value": value, "position": td["position"], "truth": td["label"],
                        "label": d["label"] if d else None, "confidence": d["confidence"] if d else None,
                        "needs_review": d["needs_review"] if d else None, "bbox": td["bbox"],
                    })  # fmt: skip
    return out


def run(scans: Path) -> dict[str, Any]:
    """`process_batch` on `scans` into a fresh SQLite database (`bench_e2e.run_batch`); the export."""
    return run_batch(scans).export


def montage(rows: list[dict[str, Any]], scans: Path, out: Path, margin: int = 20) -> int:
    """Draw each wrong digit's field (the page around it, the digit framed in red, its list number
    and "truth -> read" in the corner), packed in rows; returns how many were drawn."""
    tiles = []
    for n, e in enumerate(rows):
        if e["kind"] != "digit":
            continue
        page = cv2.imread(str(scans / e["doc"]), cv2.IMREAD_GRAYSCALE)
        if page is None:  # a TIFF or PDF page: not drawn
            continue
        x, y, w, h = e["field_bbox"]
        x0, y0 = max(0, x - margin), max(0, y - margin)
        tile = cv2.cvtColor(page[y0 : y + h + margin, x0 : x + w + margin], cv2.COLOR_GRAY2BGR)
        dx, dy, dw, dh = e["bbox"]
        cv2.rectangle(tile, (dx - x0, dy - y0), (dx - x0 + dw, dy - y0 + dh), (0, 0, 255), 2)
        scale = MONTAGE_HEIGHT / tile.shape[0]
        tile = cv2.resize(tile, (max(1, int(tile.shape[1] * scale)), MONTAGE_HEIGHT), interpolation=cv2.INTER_AREA)
        tile = tile[:, :MONTAGE_WIDTH]
        cv2.putText(tile, f"#{n} {e['truth']}->{e['label']}", (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (200, 0, 0), 1)
        tiles.append(tile)
    if not tiles:
        return 0
    cv2.imwrite(str(out), pack_tiles(tiles, MONTAGE_WIDTH))
    return len(tiles)


def pack_tiles(tiles: list[np.ndarray], width: int) -> np.ndarray:
    """Colour tiles of one height laid left to right in rows `width` pixels wide (a tile wider than
    that is cut), on white."""
    h = tiles[0].shape[0]
    lines: list[list[np.ndarray]] = [[]]
    for t in tiles:
        if lines[-1] and sum(x.shape[1] for x in lines[-1]) + t.shape[1] > width:
            lines.append([])
        lines[-1].append(t[:, :width])
    canvas = np.full((h * len(lines), width, 3), 255, np.uint8)
    for r, line in enumerate(lines):
        x = 0
        for t in line:
            canvas[r * h : (r + 1) * h, x : x + t.shape[1]] = t
            x += t.shape[1]
    return canvas


def _key(e: dict[str, Any]) -> tuple[Any, ...]:
    return (e["kind"], e["doc"], e["page"], tuple(e["field_bbox"]), e.get("position"), e["value"], e.get("label"))


def compare(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    """What `after` fixed and broke against `before` (an error whose field now reads otherwise
    counts as fixed once and, if still wrong, broken once: both are shown)."""
    a, b = {_key(e): e for e in before}, {_key(e): e for e in after}

    def count(rows: list[dict[str, Any]], kind: str) -> int:
        return sum(e["kind"] == kind for e in rows)

    return {
        "digits_wrong": [count(before, "digit"), count(after, "digit")],
        "fields_wrong": [count(before, "field"), count(after, "field")],
        "fixed": [a[k] for k in a if k not in b],
        "broken": [b[k] for k in b if k not in a],
    }


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    li = sub.add_parser("list", help="run the pipeline on SCANS and list the wrong digits and fields")
    li.add_argument("scans", type=Path)
    li.add_argument("-o", "--out", type=Path, help="JSON lines file (default: stdout)")
    li.add_argument("--montage", type=Path, help="also draw the wrong digits' fields into this PNG")
    co = sub.add_parser("compare", help="what changed between two lists of the same pages")
    co.add_argument("before", type=Path)
    co.add_argument("after", type=Path)
    args = ap.parse_args()

    if args.command == "list":
        rows = errors(run(args.scans), args.scans)
        text = "".join(json.dumps(e) + "\n" for e in rows)
        if args.out:
            args.out.write_text(text)
        else:
            sys.stdout.write(text)
        n_digits = sum(e["kind"] == "digit" for e in rows)
        print(f"{n_digits} digits and {len(rows) - n_digits} fields wrong", file=sys.stderr)
        if args.montage:
            drawn = montage(rows, args.scans, args.montage)
            print(f"montage: {args.montage} ({drawn} digits)", file=sys.stderr)
        return 0
    result = compare(_read(args.before), _read(args.after))
    print(json.dumps({k: result[k] for k in ("digits_wrong", "fields_wrong")}))
    for what in ("fixed", "broken"):
        for e in result[what]:
            print(what, json.dumps(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
