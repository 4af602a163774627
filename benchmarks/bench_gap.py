"""Each digit the pipeline reads wrong, set beside its MNIST original: the reader or the page?

    .venv/bin/python benchmarks/bench_gap.py --seeds 777 778 779 --montage gap.png --json gap.json

For each seed, 150 pages of MNIST *validation* digits are made again (the same pages as
`bench_candidates.py --e2e-seed SEED` writes, into a temporary folder) with a digit source that
records which MNIST image each digit drew. The embedded pipeline reads them (`bench_errors.run`),
and every true digit is classed by how the shipped reader reads its MNIST original (the 28x28 image
itself) against how the pipeline read it on the page:

- wrong on both: the digit is ambiguous as written, whatever segmentation does;
- right as MNIST, wrong on the page: what the page's rendering, the cut or the crop did to it (the
  gap a better segmentation or crop could close; a better MNIST classifier cannot).

Printed as JSON (the counts, and per seed); `--montage` draws each gap digit as its MNIST original
beside the digit on the page, with "truth: read as MNIST / read on the page". The validation sets
draw from the same 5,000 images, so one hard image comes back on several sets: `distinct_images`
says how many different images the gap digits are.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import generate_validation_pages  # noqa: E402
from bench_errors import errors, pack_tiles, run  # noqa: E402

TILE = 84  # pixels: the height of each half of a montage tile


def classify(
    seed: int, pages: int, images: np.ndarray, labels: np.ndarray, val_idx: np.ndarray
) -> tuple[list[dict[str, Any]], int]:
    """Every true digit of one validation set with its MNIST image index (into `images`, the MNIST
    training split) and how the pipeline read it; also how many pages could not be paired with their
    draws."""
    from training.pagecrops import MnistTrainDigits

    source = MnistTrainDigits(images, labels, val_idx)
    marks: list[int] = []
    rows: list[dict[str, Any]] = []
    unpaired = 0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate_validation_pages(out, pages, seed, source, on_page=lambda n: marks.append(len(source.drawn)))
        wrong = {
            (e["doc"], tuple(e["field_bbox"]), e["position"]): e for e in errors(run(out), out) if e["kind"] == "digit"
        }
        start = 0
        for n, end in enumerate(marks, start=1):
            name = f"scan-{seed:04d}-{n:05d}"
            drawn, start = source.drawn[start:end], end
            truth = json.loads((out / f"{name}.truth.json").read_text())
            digits = [(f, d) for f in truth["pages"][0]["fields"] for d in f["digits"] if d["label"] is not None]
            if [int(labels[i]) for i in drawn] != [d["label"] for _, d in digits]:
                unpaired += 1  # a page drew images that are not its true digits, in order: not classed
                continue
            for i, (f, d) in zip(drawn, digits, strict=True):
                e = wrong.get((f"{name}.png", tuple(f["bbox"]), d["position"]))
                rows.append({
                    "seed": seed, "doc": f"{name}.png", "field_bbox": f["bbox"], "bbox": d["bbox"],
                    "truth": d["label"], "image": int(i), "page_label": e["label"] if e else d["label"],
                })  # fmt: skip
        if rows:
            _page_tiles(rows, out)
    return rows, unpaired


def _page_tiles(rows: list[dict[str, Any]], scans: Path) -> None:
    """Cut each wrongly read digit's box from its page now (the pages are temporary)."""
    pages: dict[str, np.ndarray | None] = {}
    for r in rows:
        if r["page_label"] == r["truth"]:
            continue
        if r["doc"] not in pages:
            pages[r["doc"]] = cv2.imread(str(scans / r["doc"]), cv2.IMREAD_GRAYSCALE)
        page = pages[r["doc"]]
        if page is not None:
            x, y, w, h = r["bbox"]
            r["tile"] = 255 - page[max(0, y) : y + h, max(0, x) : x + w]


def montage(gap: list[dict[str, Any]], images: np.ndarray, mnist_read: dict[int, int], out: Path) -> None:
    """Each gap digit: its MNIST original, then the digit as on the page (ink light)."""
    tiles = []
    for r in gap:
        orig = cv2.resize(images[r["image"]], (TILE, TILE), interpolation=cv2.INTER_NEAREST)
        page = r.get("tile")
        if page is None or page.size == 0:
            page = np.zeros((TILE, TILE), np.uint8)
        page = cv2.resize(page, (max(1, int(page.shape[1] * TILE / page.shape[0])), TILE), interpolation=cv2.INTER_AREA)
        t = cv2.cvtColor(np.hstack([orig, np.full((TILE, 3), 128, np.uint8), page]), cv2.COLOR_GRAY2BGR)
        text = f"{r['truth']}: {mnist_read[r['image']]} / {r['page_label']}"
        cv2.putText(t, text, (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 255), 1)
        tiles.append(cv2.copyMakeBorder(t, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=(0, 160, 0)))
    if tiles:
        cv2.imwrite(str(out), pack_tiles(tiles, 1400))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[777, 778, 779])
    ap.add_argument("--pages", type=int, default=150)
    ap.add_argument(
        "--data-dir", default=os.environ.get("DIGITREADER_DATA_DIR", str(ROOT.parent / "shared" / "datasets"))
    )
    ap.add_argument("--json", type=Path, help="also write the classed digits here")
    ap.add_argument("--montage", type=Path, help="draw the gap digits (right as MNIST, wrong on the page) here")
    args = ap.parse_args(argv)

    from digitreader.pipeline.recognize import Predictor
    from training.data import load_mnist, train_val_split
    from training.run import SPLIT_SEED, VAL_SIZE

    full = load_mnist("train", args.data_dir)
    assert full.labels is not None
    images = full.images
    _, val_idx = train_val_split(len(full), VAL_SIZE, SPLIT_SEED)
    rows: list[dict[str, Any]] = []
    unpaired = 0
    for seed in args.seeds:
        r, u = classify(seed, args.pages, images, full.labels, val_idx)
        rows += r
        unpaired += u
        print(f"seed {seed}: {len(r)} digits classed", file=sys.stderr)
    used = sorted({r["image"] for r in rows})
    probs = Predictor.load().predict(images[used]).probs if used else np.zeros((0, 10))
    # The best digit, as the pipeline stores a crop whose first choice is "not a digit".
    mnist_read = dict(zip(used, np.asarray(probs)[:, :10].argmax(axis=1).tolist(), strict=True))

    def table(sel: list[dict[str, Any]]) -> dict[str, int]:
        c = Counter((mnist_read[r["image"]] == r["truth"], r["page_label"] == r["truth"]) for r in sel)
        return {
            "digits": len(sel),
            "wrong_as_mnist_wrong_on_page": c[(False, False)],
            "wrong_as_mnist_right_on_page": c[(False, True)],
            "right_as_mnist_wrong_on_page": c[(True, False)],
            "right_on_both": c[(True, True)],
        }

    gap = [r for r in rows if mnist_read[r["image"]] == r["truth"] and r["page_label"] != r["truth"]]
    result = {
        **table(rows),
        "distinct_images_in_gap": len({r["image"] for r in gap}),
        "pages_not_paired": unpaired,
        "per_seed": {s: table([r for r in rows if r["seed"] == s]) for s in args.seeds},
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "tile"} for r in rows]))
    if args.montage:
        montage(gap, images, mnist_read, args.montage)
        print(f"montage: {args.montage} ({len(gap)} digits)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
