"""Generated pages changed the way a clerk's scanner or copier changes them, each kind read and scored.

    .venv/bin/python benchmarks/bench_scanner.py --pages 20 --seed 31          # every kind
    .venv/bin/python benchmarks/bench_scanner.py --pages 20 --kinds faint crease_down --json out.json

`--pages` pages are made with `digitreader.synth` (300 dpi PNG, with their truth; cached under
--cache, never in the repo), then each kind of change is applied to every page and the changed pages
are read by the embedded pipeline into a fresh SQLite database and scored by `bench_errors.py`'s rule
(digits and fields wrong against the truth; the truth's boxes move with the page where it grows):

- clean: the pages as made;
- margin_black, margin_grey: the sheet on a scanner bed 6 % wider on each side (lid open: black;
  a grey bed: 90);
- faint: 35 % of the contrast (a light scan, a pale copy);
- streak: a 3-pixel dark line down the whole page (dust on the glass);
- crease_down, crease_across: a fold's soft shadow through the middle field, 40 % darker at its
  middle, 15 px wide;
- uneven_light: darkened gradually to 55 % at the right edge;
- fax_normal: as a fax in normal mode (G3 TIFF, 204 x 98 dpi: pixels twice as tall as wide), scored
  by the field values found (the truth's boxes are in the page's 300-dpi pixels);
- bleed_15, bleed_25, bleed_40: the back of the sheet showing through (the next page, mirrored and
  softened), darkening the front by 15, 25 or 40 % of its darkness;
- form_red, form_blue: the form printed in a light colour (salmon red, light blue), the digits written
  in blue-black ink (an RGB page: the form's colour outside the truth's digit boxes);
- bilevel_dither, bilevel_160: 1-bit PNGs, as a scanner's black-and-white mode writes them
  (Floyd-Steinberg dithered; thresholded at 160);
- turned_20: the sheet fed turned 20 degrees, beyond the skew search (scored by the values found);
- two_cheques: two cheques laid on the glass of an A4 flatbed, each turned its own way (2-7 degrees,
  opposite ways), one above the other (cheques of their own, generated beside the pages: as many
  pages as `--pages` / 2, scored by the values found).

Session 27's and 28's numbers are in docs/benchmarks.md ("Scans as they come from clerks' scanners").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_errors import errors, run  # noqa: E402


def _shifted(truth: dict[str, Any], dx: int, dy: int) -> dict[str, Any]:
    out = json.loads(json.dumps(truth))
    for page in out["pages"]:
        for f in page["fields"]:
            f["bbox"][0] += dx
            f["bbox"][1] += dy
            for d in f["digits"]:
                d["bbox"][0] += dx
                d["bbox"][1] += dy
    return out


def _margin(fill: int) -> Callable[[np.ndarray, dict[str, Any]], tuple[np.ndarray, dict[str, Any]]]:
    def change(g: np.ndarray, truth: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        b = int(0.06 * g.shape[1])
        return cv2.copyMakeBorder(g, b // 2, b, b, b, cv2.BORDER_CONSTANT, value=fill), _shifted(truth, b, b // 2)

    return change


def _crease(across: bool) -> Callable[[np.ndarray, dict[str, Any]], tuple[np.ndarray, dict[str, Any]]]:
    def change(g: np.ndarray, truth: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        fields = truth["pages"][0]["fields"]
        x, y, w, h = fields[len(fields) // 2]["bbox"]
        if across:
            d = np.arange(g.shape[0], dtype=np.float32)[:, None] - (y + h / 2)
        else:
            d = np.arange(g.shape[1], dtype=np.float32)[None, :] - (x + w / 2)
        shade = 1 - 0.4 * np.exp(-(d**2) / (2 * (15 / 2.355) ** 2))
        return np.clip(g * shade, 0, 255).astype(np.uint8), truth

    return change


def _faint(g: np.ndarray, truth: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    return np.clip(255 - (255 - g.astype(np.float32)) * 0.35, 0, 255).astype(np.uint8), truth


def _streak(g: np.ndarray, truth: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    out = g.copy()
    x = int(0.55 * g.shape[1])
    out[:, x : x + 3] = 20
    return out, truth


def _uneven(g: np.ndarray, truth: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    ramp = np.linspace(1.0, 0.55, g.shape[1], dtype=np.float32)[None, :]
    return (g * ramp).astype(np.uint8), truth


def _bleed(share: float) -> Callable[[np.ndarray, dict[str, Any], np.ndarray], tuple[np.ndarray, dict[str, Any]]]:
    """The back of the sheet showing through: `back` (another page) mirrored, softened by the paper
    (a blur of 0.2 mm), darkening the front by `share` of its own darkness."""

    def change(g: np.ndarray, truth: dict[str, Any], back: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        b = cv2.resize(back, (g.shape[1], g.shape[0]), interpolation=cv2.INTER_AREA)[:, ::-1]
        b = cv2.GaussianBlur(b, (0, 0), 2.5).astype(np.float32) / 255.0
        return np.clip(g * (1.0 - share * (1.0 - b)), 0, 255).astype(np.uint8), truth

    return change


def _colour_form(
    rgb: tuple[int, int, int],
) -> Callable[[np.ndarray, dict[str, Any]], tuple[np.ndarray, dict[str, Any]]]:
    """The form printed in a light colour `rgb`, the digits written in blue-black ink: a pixel's
    darkness is the form's colour outside the truth's digit boxes, the ink's inside them (an RGB page)."""
    ink = np.array([25, 30, 90], np.float32)

    def change(g: np.ndarray, truth: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        paper = float(np.percentile(g[::8, ::8], 90))
        t = np.clip(1.0 - g.astype(np.float32) / paper, 0.0, 1.0)[..., None]
        writing = np.zeros(g.shape, bool)
        for f in truth["pages"][0]["fields"]:
            for d in f["digits"]:
                x, y, w, h = d["bbox"]
                writing[max(0, y - 1) : y + h + 1, max(0, x - 1) : x + w + 1] = True
        colour = np.where((writing[..., None]) & (t > 0.2), ink, np.array(rgb, np.float32))
        out = paper * (1.0 - t) + np.minimum(colour, paper) * t
        return np.clip(out, 0, 255).astype(np.uint8), truth

    return change


def _turned(degrees: float) -> Callable[[np.ndarray, dict[str, Any]], tuple[np.ndarray, dict[str, Any]]]:
    """The sheet fed turned by `degrees` (counter-clockwise), on a canvas that keeps its corners; scored
    by the field values found (`BY_VALUE`)."""

    def change(g: np.ndarray, truth: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        h, w = g.shape
        m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
        a = np.radians(abs(degrees))
        nw, nh = int(w * np.cos(a) + h * np.sin(a)) + 1, int(h * np.cos(a) + w * np.sin(a)) + 1
        m[0, 2] += (nw - w) / 2
        m[1, 2] += (nh - h) / 2
        return cv2.warpAffine(g, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=255), truth

    return change


def _two_cheques(cheques: list[Path], out: Path, seed: int) -> None:
    """Pairs of cheque scans laid on an A4 flatbed (300 dpi, the lid white), each turned its own way:
    one 2-7 degrees counter-clockwise, the other 2-7 clockwise, the first above the second, each
    moved sideways at random; the page's truth is both cheques' fields (scored by value)."""
    rng = np.random.default_rng(seed)
    W, H = 2480, 3508
    for k in range(len(cheques) // 2):
        bed = np.full((H, W), 252, np.uint8)
        fields: list[Any] = []
        sign = 1 if rng.random() < 0.5 else -1
        top = int(rng.integers(150, 400))
        for j, src in enumerate(cheques[2 * k : 2 * k + 2]):
            g = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
            assert g is not None, src
            degrees = sign * (1 if j == 0 else -1) * float(rng.uniform(2.0, 7.0))
            turned, _ = _turned(degrees)(g, {})
            mask, _ = _turned(degrees)(np.zeros_like(g), {})
            h, w = turned.shape
            x = int(rng.integers(40, max(41, W - w - 40)))
            y = top if j == 0 else max(top + h + 60, H - h - int(rng.integers(150, 600)))
            region = bed[y : y + h, x : x + w]
            region[mask == 0] = turned[mask == 0]
            truth = json.loads(src.with_suffix(".truth.json").read_text())
            fields += [f for p in truth["pages"] for f in p["fields"]]
        name = f"two-cheques-{k + 1:03d}"
        Image.fromarray(bed).save(out / f"{name}.png", dpi=(300, 300))
        (out / f"{name}.truth.json").write_text(json.dumps({"pages": [{"fields": fields}]}))


#: Kinds whose truth boxes are not the page's pixels: scored by the field values found, as multisets.
BY_VALUE = {"fax_normal", "turned_20", "two_cheques"}

KINDS: dict[str, Callable[..., tuple[np.ndarray, dict[str, Any]]] | None] = {
    "clean": lambda g, t: (g, t),
    "margin_black": _margin(0),
    "margin_grey": _margin(90),
    "faint": _faint,
    "streak": _streak,
    "crease_down": _crease(False),
    "crease_across": _crease(True),
    "uneven_light": _uneven,
    "fax_normal": None,  # a TIFF of its own: `_fax`
    "bleed_15": _bleed(0.15),  # with the next page as its back: `make`
    "bleed_25": _bleed(0.25),
    "bleed_40": _bleed(0.40),
    "form_red": _colour_form((240, 130, 120)),
    "form_blue": _colour_form((150, 190, 240)),
    "bilevel_dither": None,  # 1-bit PNGs of their own: `_bilevel`
    "bilevel_160": None,
    "turned_20": _turned(20.0),
    "two_cheques": None,  # pages of their own, from cheques made for them: `_two_cheques`
}


def _fax(src: Path, out: Path) -> None:
    im = Image.open(src).convert("L")
    dpi = float(im.info.get("dpi", (300, 300))[0])
    fax = im.resize((round(im.width * 204 / dpi), round(im.height * 98 / dpi)), Image.Resampling.LANCZOS)
    fax.point(lambda v: 255 if v > 200 else 0).convert("1").save(
        out / (src.stem + ".tif"), compression="group3", dpi=(204, 98)
    )
    (out / (src.stem + ".truth.json")).write_text((src.with_suffix("").with_suffix(".truth.json")).read_text())


def _bilevel(src: Path, out: Path, dither: bool) -> None:
    im = Image.open(src).convert("L")
    one = im.convert("1") if dither else im.point(lambda v: 255 if v > 160 else 0).convert("1")
    one.save(out / src.name, dpi=(300, 300))
    (out / (src.stem + ".truth.json")).write_text((src.with_suffix("").with_suffix(".truth.json")).read_text())


def make(kind: str, pages: Path, out: Path, cheques: Path | None = None) -> None:
    """The pages in `pages` changed by `kind`, with their truth, into `out` (two_cheques: pairs of
    the cheques in `cheques`)."""
    out.mkdir(parents=True, exist_ok=True)
    if kind == "two_cheques":
        assert cheques is not None
        _two_cheques(sorted(cheques.glob("*.png")), out, seed=len(out.name))
        return
    srcs = sorted(pages.glob("*.png"))
    for i, src in enumerate(srcs):
        if kind == "fax_normal":
            _fax(src, out)
            continue
        if kind.startswith("bilevel"):
            _bilevel(src, out, dither=kind == "bilevel_dither")
            continue
        change = KINDS[kind]
        assert change is not None
        truth = json.loads(src.with_suffix(".truth.json").read_text())
        g = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
        assert g is not None, src
        if kind.startswith("bleed"):
            back = cv2.imread(str(srcs[(i + 1) % len(srcs)]), cv2.IMREAD_GRAYSCALE)
            img, t = change(g, truth, back)
        else:
            img, t = change(g, truth)
        Image.fromarray(img).save(out / src.name, dpi=(300, 300))
        (out / (src.stem + ".truth.json")).write_text(json.dumps(t))


def score(kind: str, scans: Path) -> dict[str, Any]:
    export = run(scans)
    truth_fields = 0
    truth_digits = 0
    for t in scans.glob("*.truth.json"):
        for page in json.loads(t.read_text())["pages"]:
            truth_fields += len(page["fields"])
            truth_digits += sum(d["label"] is not None for f in page["fields"] for d in f["digits"])
    if kind in BY_VALUE:  # boxes in other pixels: the field values found, as multisets
        right = 0
        for doc in export["documents"]:
            truth = json.loads((scans / (Path(doc["path"]).stem + ".truth.json")).read_text())
            want = [f["value"] for p in truth["pages"] for f in p["fields"]]
            for f in (f for p in doc["pages"] for f in p["fields"]):
                if f["value"] in want:
                    want.remove(f["value"])
                    right += 1
        return {"kind": kind, "fields": truth_fields, "fields_right": right}
    rows = errors(export, scans)
    return {
        "kind": kind,
        "digits": truth_digits,
        "digits_wrong": sum(r["kind"] == "digit" for r in rows),
        "fields": truth_fields,
        "fields_wrong": sum(r["kind"] == "field" for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--seed", type=int, default=31)
    ap.add_argument("--kinds", nargs="+", choices=sorted(KINDS), default=list(KINDS))
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "digitreader-bench")
    ap.add_argument("--data-dir", default=os.environ.get("DIGITREADER_DATA_DIR"))
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    from digitreader.synth import generate

    pages = args.cache / f"scanner-src-{args.pages}-seed{args.seed}"
    if not (pages / ".complete").exists():
        generate(pages, pages=args.pages, seed=args.seed, fmt="png", kind="mixed", dpi=300, data_dir=args.data_dir)
        (pages / ".complete").write_text("ok")
    cheques = args.cache / f"scanner-cheques-{args.pages}-seed{args.seed}"
    if "two_cheques" in args.kinds and not (cheques / ".complete").exists():
        generate(
            cheques, pages=args.pages, seed=args.seed + 1, fmt="png", kind="cheque", dpi=300, data_dir=args.data_dir
        )
        (cheques / ".complete").write_text("ok")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            scans = Path(tmp) / kind
            make(kind, pages, scans, cheques)
            r = score(kind, scans)
            results.append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
